// BatchNorm benchmark (kernels/batchnorm.h) over NHWC activations viewed as
// (rows = N·H·W, C): training forward, backward, eval forward. GPU: batch
// 256 at ResNet-18 widths on 28x28 inputs (28x28x64, 14x14x128, 7x7x256),
// fp32 and bf16; CPU: the CNN recipe's first BatchNorm (batch 128, 28x28x32).
//
// Bytes counted (n = rows·C, s = sizeof(activation)): training forward reads
// x twice (statistics, normalize) and writes y: 3·n·s; backward reads dy and
// x twice and writes dx: 5·n·s; eval reads x and writes y: 2·n·s. The per-
// channel vectors are noise. PyTorch's figures for the same names and shapes:
// bench/torch_bench.py (batchnorm entry, channels_last).
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.h"
#include "kernels/batchnorm.h"
#include "kernels/fill.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

constexpr float kEps = 1e-5f;

/// "256x28x28x64 bf16": the key bench/torch_bench.py matches on.
std::string shape_str(int64_t n, int64_t hw, int64_t C, const char* dtype) {
  return std::to_string(n) + "x" + std::to_string(hw) + "x" + std::to_string(hw) + "x" + std::to_string(C) + " " +
         dtype;
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
  const int64_t n = ctx.quick() ? 16 : 128, hw = 28, C = 32, rows = n * hw * hw, e = rows * C;
  std::vector<float> x(e), y(e), dy(e), dx(e), w(C), b(C), m(C), r(C), v(C), dw(C, 0.0f), db(C, 0.0f);
  fill_uniform_cpu(x.data(), e, 1, 0, -2.0f, 3.0f);
  fill_uniform_cpu(dy.data(), e, 2, 0, -1.0f, 1.0f);
  fill_uniform_cpu(w.data(), C, 3, 0, 0.5f, 1.5f);
  fill_uniform_cpu(b.data(), C, 4, 0, -0.5f, 0.5f);
  const std::string shape = shape_str(n, hw, C, "f32");
  ctx.report(result("batchnorm_forward_train", "cpu", shape, ctx.time_cpu([&] {
                      batchnorm_forward_train_cpu(y.data(), m.data(), r.data(), v.data(), x.data(), w.data(), b.data(),
                                                  rows, C, kEps);
                    }),
                    3.0 * e * 4));
  ctx.report(result("batchnorm_backward", "cpu", shape, ctx.time_cpu([&] {
                      batchnorm_backward_cpu(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), m.data(),
                                             r.data(), rows, C);
                    }),
                    5.0 * e * 4));
  ctx.report(result("batchnorm_forward_eval", "cpu", shape, ctx.time_cpu([&] {
                      batchnorm_forward_eval_cpu(y.data(), x.data(), m.data(), v.data(), w.data(), b.data(), rows, C,
                                                 kEps);
                    }),
                    2.0 * e * 4));
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
void bench_cuda_shape(Context& ctx, int64_t n, int64_t hw, int64_t C, const char* dtype) {
  const int64_t rows = n * hw * hw, e = rows * C;
  const double s = sizeof(T);
  DevBuf<T> x(e), y(e), dy(e), dx(e);
  DevBuf<float> w(C), b(C), m(C), r(C), v(C), dw(C), db(C), scratch(batchnorm_scratch_floats(rows, C));
  fill_uniform(x.get(), e, 11, 0, -2.0f, 3.0f, nullptr);
  fill_uniform(dy.get(), e, 12, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(w.get(), C, 13, 0, 0.5f, 1.5f, nullptr);
  fill_uniform(b.get(), C, 14, 0, -0.5f, 0.5f, nullptr);
  fill_constant(dw.get(), 0.0f, C, nullptr);
  fill_constant(db.get(), 0.0f, C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = shape_str(n, hw, C, dtype);
  ctx.report(result("batchnorm_forward_train", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      batchnorm_forward_train(y.get(), m.get(), r.get(), v.get(), scratch.get(), x.get(), w.get(),
                                              b.get(), rows, C, kEps, st);
                    }),
                    3.0 * e * s));
  ctx.report(result("batchnorm_backward", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      batchnorm_backward(dx.get(), dw.get(), db.get(), scratch.get(), dy.get(), x.get(), w.get(),
                                         m.get(), r.get(), rows, C, st);
                    }),
                    5.0 * e * s));
  ctx.report(result("batchnorm_forward_eval", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      batchnorm_forward_eval(y.get(), x.get(), m.get(), v.get(), w.get(), b.get(), rows, C, kEps, st);
                    }),
                    2.0 * e * s));
}

void bench_cuda(Context& ctx) {
  std::vector<std::pair<int64_t, int64_t>> shapes = {{28, 64}, {14, 128}, {7, 256}};
  if (ctx.quick()) shapes = {{28, 64}};
  for (auto [hw, C] : shapes) {
    bench_cuda_shape<bf16>(ctx, 256, hw, C, "bf16");
    bench_cuda_shape<float>(ctx, 256, hw, C, "f32");
  }
}
#endif

}  // namespace

KILN_BENCH(batchnorm, 36) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
