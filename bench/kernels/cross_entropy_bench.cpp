// Fused softmax cross-entropy benchmark (kernels/cross_entropy.h): the fused
// forward + backward (dlogits in place) and the forward alone, fp32 and bf16,
// at GPT-2 124M's shape (8192 rows, vocabulary 50257 padded to 50304, and
// unpadded 50257) and at large shapes (16384 rows × 4096 and × 16384 classes).
//
// Bytes counted: the fused kernel reads the V real logits of each row and
// writes all Vp dlogits, rows·(V + Vp)·s, plus targets and losses 8·rows; the
// forward reads rows·V·s + 8·rows. PyTorch's figures for the same names and
// shapes (F.cross_entropy forward + backward): bench/torch_bench.py.
#include <string>
#include <tuple>
#include <vector>

#include "bench/harness.h"
#include "kernels/cross_entropy.h"
#include "kernels/fill.h"
#include "runtime/error.h"
#include "runtime/philox.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

double fused_bytes(double rows, double V, double Vp, double s) { return rows * (V + Vp) * s + 8 * rows; }
double forward_bytes(double rows, double V, double s) { return rows * V * s + 8 * rows; }

/// "8192x50304 V50257 bf16": the key bench/torch_bench.py matches on.
std::string shape_str(int64_t rows, int64_t V, int64_t Vp, const char* dtype) {
  return std::to_string(rows) + "x" + std::to_string(Vp) + " V" + std::to_string(V) + " " + dtype;
}

Result result(const char* name, const char* backend, const std::string& shape, double ms, double bytes) {
  Result r;
  r.name = name;
  r.backend = backend;
  r.shape = shape;
  r.ms = ms;
  r.bytes = bytes;
  return r;
}

/// Uniform targets in [0, V), none ignored (the common pre-training case).
std::vector<int32_t> make_targets(int64_t rows, int64_t V, uint64_t seed) {
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t v = static_cast<int64_t>(philox_uniform(seed, 0, static_cast<uint64_t>(r)) * static_cast<float>(V));
    t[r] = static_cast<int32_t>(v < V ? v : V - 1);
  }
  return t;
}

void bench_cpu(Context& ctx) {
  const int64_t rows = ctx.quick() ? 16 : 64, V = 50257, Vp = 50304;
  std::vector<float> logits(rows * Vp), work(rows * Vp), losses(rows);
  fill_uniform_cpu(logits.data(), rows * Vp, 1, 0, -8.0f, 8.0f);
  const std::vector<int32_t> targets = make_targets(rows, V, 2);
  const float scale = cross_entropy_mean_scale(rows);
  const std::string shape = shape_str(rows, V, Vp, "f32");
  // The fused kernel overwrites its input; every repeat starts from fresh
  // logits (the copy is timed too, and is small next to the exps).
  double ms = ctx.time_cpu([&] {
    work = logits;
    cross_entropy_forward_backward_cpu(work.data(), losses.data(), targets.data(), rows, V, Vp, scale);
  });
  ctx.report(result("cross_entropy_forward_backward", "cpu", shape, ms, fused_bytes(rows, V, Vp, 4)));
  ms = ctx.time_cpu(
      [&] { cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), rows, V, Vp); });
  ctx.report(result("cross_entropy_forward", "cpu", shape, ms, forward_bytes(rows, V, 4)));
}

#if KILN_WITH_CUDA
template <typename T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) { KILN_CUDA_CHECK(cudaMalloc(&p_, (n ? n : 1) * sizeof(T))); }
  ~DevBuf() { KILN_CUDA_WARN(cudaFree(p_)); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

template <typename T>
void bench_cuda_shape(Context& ctx, int64_t rows, int64_t V, int64_t Vp, const char* dtype) {
  const double s = sizeof(T);
  DevBuf<T> logits(rows * Vp);
  DevBuf<float> losses(rows);
  DevBuf<int32_t> targets(rows);
  const std::vector<int32_t> host_targets = make_targets(rows, V, 31);
  KILN_CUDA_CHECK(cudaMemcpy(targets.get(), host_targets.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
  fill_uniform(logits.get(), rows * Vp, 32, 0, -8.0f, 8.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const float scale = cross_entropy_mean_scale(rows);
  const std::string shape = shape_str(rows, V, Vp, dtype);
  // Forward first, on the random logits; the fused runs then overwrite them
  // with gradients (finite values: the timing does not depend on them).
  double ms = ctx.time_cuda([&](cudaStream_t st) {
    cross_entropy_forward(losses.get(), logits.get(), targets.get(), rows, V, Vp, st);
  });
  ctx.report(result("cross_entropy_forward", "cuda", shape, ms, forward_bytes(rows, V, s)));
  ms = ctx.time_cuda([&](cudaStream_t st) {
    cross_entropy_forward_backward(logits.get(), losses.get(), targets.get(), rows, V, Vp, scale, st);
  });
  ctx.report(result("cross_entropy_forward_backward", "cuda", shape, ms, fused_bytes(rows, V, Vp, s)));
}

void bench_cuda(Context& ctx) {
  std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {8192, 50257, 50304}, {8192, 50257, 50257}, {16384, 4096, 4096}, {16384, 16384, 16384}};
  if (ctx.quick()) shapes = {{8192, 50257, 50304}};
  for (auto [rows, V, Vp] : shapes) {
    bench_cuda_shape<float>(ctx, rows, V, Vp, "f32");
    bench_cuda_shape<bf16>(ctx, rows, V, Vp, "bf16");
  }
}
#endif

}  // namespace

KILN_BENCH(cross_entropy, 22) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
