// Elementwise benchmark (kernels/activation.h, kernels/dropout.h): GELU and
// ReLU forward/backward, bias add and bias backward, residual add, dropout
// forward/backward, fp32 and bf16, at GPT-2 124M's shapes (B·T = 8192 rows ×
// 768 and × 3072, the MLP's hidden width) and at large shapes (16384 × 4096,
// 16384 × 16384).
//
// Bytes counted (each input read once, each output written once), with
// n = rows·cols and s = sizeof(activation):
//   gelu/relu forward, dropout forward/backward   2·n·s
//   gelu/relu backward, residual add               3·n·s
//   bias add                                       2·n·s + cols·sizeof(bias)
//   bias backward                                  n·s + 8·cols (dbias read + written)
// PyTorch's figures for the same names and shapes: bench/torch_bench.py.
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.h"
#include "bench/kernels/bench_util.h"
#include "kernels/activation.h"
#include "kernels/dropout.h"
#include "kernels/fill.h"

namespace kiln::bench {
namespace {

using util::make_result;
using util::matrix_shape;

constexpr float kDropP = 0.1f;

void bench_cpu(Context& ctx) {
  const int64_t rows = ctx.quick() ? 128 : 1024, cols = 768, n = rows * cols;
  std::vector<float> x(n), dy(n), y(n), dx(n), bias(cols), dbias(cols, 0.0f);
  fill_uniform_cpu(x.data(), n, 1, 0, -3.0f, 3.0f);
  fill_uniform_cpu(dy.data(), n, 2, 0, -1.0f, 1.0f);
  fill_uniform_cpu(bias.data(), cols, 3, 0, -0.5f, 0.5f);
  const std::string shape = matrix_shape(rows, cols, "f32");
  const double s = 4;
  auto rep = [&](const char* name, double ms, double bytes) { ctx.report(make_result(name, "cpu", shape, ms, bytes)); };
  rep("gelu_forward", ctx.time_cpu([&] { gelu_forward_cpu(y.data(), x.data(), n); }), 2 * n * s);
  rep("gelu_backward", ctx.time_cpu([&] { gelu_backward_cpu(dx.data(), x.data(), dy.data(), n); }), 3 * n * s);
  rep("relu_forward", ctx.time_cpu([&] { relu_forward_cpu(y.data(), x.data(), n); }), 2 * n * s);
  rep("relu_backward", ctx.time_cpu([&] { relu_backward_cpu(dx.data(), x.data(), dy.data(), n); }), 3 * n * s);
  rep("bias_add_forward", ctx.time_cpu([&] { bias_add_forward_cpu(y.data(), x.data(), bias.data(), rows, cols); }),
      2 * n * s + cols * s);
  rep("bias_backward", ctx.time_cpu([&] { bias_backward_cpu(dbias.data(), dy.data(), rows, cols); }),
      n * s + 8.0 * cols);
  rep("residual_add", ctx.time_cpu([&] { residual_add_cpu(y.data(), x.data(), dy.data(), n); }), 3 * n * s);
  rep("dropout_forward", ctx.time_cpu([&] { dropout_forward_cpu(y.data(), x.data(), n, kDropP, 7, 0); }), 2 * n * s);
  rep("dropout_backward", ctx.time_cpu([&] { dropout_backward_cpu(dx.data(), dy.data(), n, kDropP, 7, 0); }),
      2 * n * s);
}

#if KILN_WITH_CUDA
template <typename T>
void bench_cuda_shape(Context& ctx, int64_t rows, int64_t cols, const char* dtype) {
  const int64_t n = rows * cols;
  const double s = sizeof(T);
  util::DeviceArray<T> x(n), dy(n), y(n), bias(cols);
  util::DeviceArray<float> dbias(cols);
  // Random data, never zeros (ReLU and dropout would take shortcuts on zeros).
  fill_uniform(x.get(), n, 11, 0, -3.0f, 3.0f, nullptr);
  fill_uniform(dy.get(), n, 12, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(bias.get(), cols, 13, 0, -0.5f, 0.5f, nullptr);
  fill_constant(dbias.get(), 0.0f, cols, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = matrix_shape(rows, cols, dtype);
  auto rep = [&](const char* name, double ms, double bytes) { ctx.report(make_result(name, "cuda", shape, ms, bytes)); };

  rep("gelu_forward", ctx.time_cuda([&](cudaStream_t st) { gelu_forward(y.get(), x.get(), n, st); }), 2 * n * s);
  rep("gelu_backward", ctx.time_cuda([&](cudaStream_t st) { gelu_backward(y.get(), x.get(), dy.get(), n, st); }),
      3 * n * s);
  rep("relu_forward", ctx.time_cuda([&](cudaStream_t st) { relu_forward(y.get(), x.get(), n, st); }), 2 * n * s);
  rep("relu_backward", ctx.time_cuda([&](cudaStream_t st) { relu_backward(y.get(), x.get(), dy.get(), n, st); }),
      3 * n * s);
  rep("bias_add_forward",
      ctx.time_cuda([&](cudaStream_t st) { bias_add_forward(y.get(), x.get(), bias.get(), rows, cols, st); }),
      2 * n * s + cols * s);
  rep("bias_backward", ctx.time_cuda([&](cudaStream_t st) { bias_backward(dbias.get(), dy.get(), rows, cols, st); }),
      n * s + 8.0 * cols);
  rep("residual_add", ctx.time_cuda([&](cudaStream_t st) { residual_add(y.get(), x.get(), dy.get(), n, st); }),
      3 * n * s);
  rep("dropout_forward",
      ctx.time_cuda([&](cudaStream_t st) { dropout_forward(y.get(), x.get(), n, kDropP, 7, 0, st); }), 2 * n * s);
  rep("dropout_backward",
      ctx.time_cuda([&](cudaStream_t st) { dropout_backward(y.get(), dy.get(), n, kDropP, 7, 0, st); }), 2 * n * s);
}

void bench_cuda(Context& ctx) {
  std::vector<std::pair<int64_t, int64_t>> shapes = {{8192, 768}, {8192, 3072}, {16384, 4096}, {16384, 16384}};
  if (ctx.quick()) shapes = {{8192, 768}, {8192, 3072}};
  for (auto [rows, cols] : shapes) {
    bench_cuda_shape<float>(ctx, rows, cols, "f32");
    bench_cuda_shape<bf16>(ctx, rows, cols, "bf16");
  }
}
#endif

}  // namespace

KILN_BENCH(activation, 30) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
