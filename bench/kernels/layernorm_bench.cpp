// LayerNorm benchmark (kernels/layernorm.h): forward, fused residual-add
// forward and backward, fp32 and bf16, at GPT-2 124M's shape (B·T = 8192
// rows × C = 768) and at large shapes (16384 × 4096, 16384 × 16384).
//
// Bytes counted (each input read once, each output written once; the
// backward's partial-sum scratch is overhead and not counted, so it shows up
// as lower GB/s):
//   forward   x, y: 2·n·s, + mean/rstd 8·rows, + weight/bias 8·C
//   residual  x, residual, sum, y: 4·n·s, + 8·rows + 8·C
//   backward  dy, x, dx: 3·n·s, + mean/rstd 8·rows, + weight 4·C, + dweight/dbias read and written 16·C
// with n = rows·C and s = sizeof(activation). PyTorch's figures for the same
// names and shapes: bench/torch_bench.py.
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/fill.h"
#include "kernels/layernorm.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

constexpr float kEps = 1e-5f;

double forward_bytes(double rows, double C, double s) { return 2 * rows * C * s + 8 * rows + 8 * C; }
double residual_bytes(double rows, double C, double s) { return 4 * rows * C * s + 8 * rows + 8 * C; }
double backward_bytes(double rows, double C, double s) { return 3 * rows * C * s + 8 * rows + 20 * C; }

/// "8192x768 bf16": the key bench/torch_bench.py matches on.
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
  const int64_t rows = ctx.quick() ? 256 : 1024, C = 768, n = rows * C;
  std::vector<float> x(n), res(n), dy(n), y(n), sum(n), dx(n), w(C), b(C), dw(C, 0.0f), db(C, 0.0f), mean(rows),
      rstd(rows);
  fill_uniform_cpu(x.data(), n, 1, 0, -2.0f, 2.0f);
  fill_uniform_cpu(res.data(), n, 2, 0, -1.0f, 1.0f);
  fill_uniform_cpu(dy.data(), n, 3, 0, -1.0f, 1.0f);
  fill_uniform_cpu(w.data(), C, 4, 0, 0.5f, 1.5f);
  fill_uniform_cpu(b.data(), C, 5, 0, -0.5f, 0.5f);
  const std::string shape = shape_str(rows, C, "f32");
  double ms = ctx.time_cpu([&] {
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, kEps);
  });
  ctx.report(result("layernorm_forward", "cpu", shape, ms, forward_bytes(rows, C, 4)));
  ms = ctx.time_cpu([&] {
    residual_layernorm_forward_cpu(sum.data(), y.data(), mean.data(), rstd.data(), x.data(), res.data(), w.data(),
                                   b.data(), rows, C, kEps);
  });
  ctx.report(result("layernorm_residual_forward", "cpu", shape, ms, residual_bytes(rows, C, 4)));
  ms = ctx.time_cpu([&] {
    layernorm_backward_cpu<float>(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                                  rstd.data(), nullptr, rows, C);
  });
  ctx.report(result("layernorm_backward", "cpu", shape, ms, backward_bytes(rows, C, 4)));
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
  DevBuf<T> x(n), res(n), dy(n), y(n), sum(n), dx(n);
  DevBuf<float> w(C), b(C), dw(C), db(C), mean(rows), rstd(rows);
  DevBuf<float> scratch(static_cast<size_t>(layernorm_backward_scratch_floats(rows, C)));
  // Random data, never zeros (a zero row would make the statistics trivial).
  fill_uniform(x.get(), n, 11, 0, -2.0f, 2.0f, nullptr);
  fill_uniform(res.get(), n, 12, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(dy.get(), n, 13, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(w.get(), C, 14, 0, 0.5f, 1.5f, nullptr);
  fill_uniform(b.get(), C, 15, 0, -0.5f, 0.5f, nullptr);
  fill_constant(dw.get(), 0.0f, C, nullptr);
  fill_constant(db.get(), 0.0f, C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = shape_str(rows, C, dtype);

  double ms = ctx.time_cuda([&](cudaStream_t st) {
    layernorm_forward(y.get(), mean.get(), rstd.get(), x.get(), w.get(), b.get(), rows, C, kEps, st);
  });
  ctx.report(result("layernorm_forward", "cuda", shape, ms, forward_bytes(rows, C, s)));
  ms = ctx.time_cuda([&](cudaStream_t st) {
    residual_layernorm_forward(sum.get(), y.get(), mean.get(), rstd.get(), x.get(), res.get(), w.get(), b.get(), rows,
                               C, kEps, st);
  });
  ctx.report(result("layernorm_residual_forward", "cuda", shape, ms, residual_bytes(rows, C, s)));
  // mean/rstd now hold the statistics of `sum`; the backward's inputs are consistent with them.
  ms = ctx.time_cuda([&](cudaStream_t st) {
    layernorm_backward(dx.get(), dw.get(), db.get(), scratch.get(), dy.get(), sum.get(), w.get(), mean.get(),
                       rstd.get(), nullptr, rows, C, st);
  });
  ctx.report(result("layernorm_backward", "cuda", shape, ms, backward_bytes(rows, C, s)));
}

void bench_cuda(Context& ctx) {
  std::vector<std::pair<int64_t, int64_t>> shapes = {{8192, 768}, {16384, 4096}, {16384, 16384}};
  if (ctx.quick()) shapes = {{8192, 768}, {16384, 4096}};
  for (auto [rows, C] : shapes) {
    bench_cuda_shape<float>(ctx, rows, C, "f32");
    bench_cuda_shape<bf16>(ctx, rows, C, "bf16");
  }
}
#endif

}  // namespace

KILN_BENCH(layernorm, 20) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
