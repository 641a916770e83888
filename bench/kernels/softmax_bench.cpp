// Softmax benchmark (kernels/softmax.h): forward and backward, fp32 and
// bf16, at GPT-2 124M's shapes (8192 rows × 768, and × 50304 for a softmax
// over the padded vocabulary) and at large shapes (16384 × 4096, 16384 × 16384).
//
// Bytes counted: forward reads x and writes y, 2·n·s; backward reads dy and
// y and writes dx, 3·n·s (n = rows·C, s = sizeof(element)). PyTorch's
// figures for the same names and shapes: bench/torch_bench.py.
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.h"
#include "kernels/fill.h"
#include "kernels/softmax.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

/// "8192x50304 bf16": the key bench/torch_bench.py matches on.
std::string shape_str(int64_t rows, int64_t C, const char* dtype) {
  return std::to_string(rows) + "x" + std::to_string(C) + " " + dtype;
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

void bench_cpu(Context& ctx) {
  std::vector<std::pair<int64_t, int64_t>> shapes = {{1024, 768}, {64, 50304}};
  if (ctx.quick()) shapes = {{256, 768}};
  for (auto [rows, C] : shapes) {
    const int64_t n = rows * C;
    std::vector<float> x(n), dy(n), y(n), dx(n);
    fill_uniform_cpu(x.data(), n, 1, 0, -8.0f, 8.0f);
    fill_uniform_cpu(dy.data(), n, 2, 0, -1.0f, 1.0f);
    const std::string shape = shape_str(rows, C, "f32");
    double ms = ctx.time_cpu([&] { softmax_forward_cpu(y.data(), x.data(), rows, C); });
    ctx.report(result("softmax_forward", "cpu", shape, ms, 2.0 * n * 4));
    ms = ctx.time_cpu([&] { softmax_backward_cpu(dx.data(), dy.data(), y.data(), rows, C); });
    ctx.report(result("softmax_backward", "cpu", shape, ms, 3.0 * n * 4));
  }
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
void bench_cuda_shape(Context& ctx, int64_t rows, int64_t C, const char* dtype) {
  const int64_t n = rows * C;
  const double s = sizeof(T);
  DevBuf<T> x(n), dy(n), y(n), dx(n);
  fill_uniform(x.get(), n, 21, 0, -8.0f, 8.0f, nullptr);
  fill_uniform(dy.get(), n, 22, 0, -1.0f, 1.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = shape_str(rows, C, dtype);
  double ms = ctx.time_cuda([&](cudaStream_t st) { softmax_forward(y.get(), x.get(), rows, C, st); });
  ctx.report(result("softmax_forward", "cuda", shape, ms, 2 * n * s));
  ms = ctx.time_cuda([&](cudaStream_t st) { softmax_backward(dx.get(), dy.get(), y.get(), rows, C, st); });
  ctx.report(result("softmax_backward", "cuda", shape, ms, 3 * n * s));
}

void bench_cuda(Context& ctx) {
  std::vector<std::pair<int64_t, int64_t>> shapes = {{8192, 768}, {8192, 50304}, {16384, 4096}, {16384, 16384}};
  if (ctx.quick()) shapes = {{8192, 768}, {8192, 50304}};
  for (auto [rows, C] : shapes) {
    bench_cuda_shape<float>(ctx, rows, C, "f32");
    bench_cuda_shape<bf16>(ctx, rows, C, "bf16");
  }
}
#endif

}  // namespace

KILN_BENCH(softmax, 21) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
