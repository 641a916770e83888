// conv2d benchmark (runtime/conv.h): forward, backward data and backward
// filter at ResNet shapes on 28x28 inputs (stem, a stage's 3x3, the stride-2
// 3x3 and 1x1 projection that open a stage, the deeper stages) and at the CNN
// recipe's two convolutions. GPU: batch 256, ResNet-18 widths (64-512),
// fp32 and bf16 through cuDNN; CPU: batch 32 at the recipes' widths, fp32
// through im2col + OpenBLAS.
//
// FLOPs counted: 2·N·P·Q·K·R·S·C/G per pass (the same for each of the three),
// reported as TFLOP/s and as a fraction of the GEMM peak measured in the same
// run (cuBLASLt bf16 on the GPU, OpenBLAS sgemm on the CPU). PyTorch's
// figures for the same names and shapes: bench/torch_bench.py (conv2d entry,
// channels_last, same dtype).
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/fill.h"
#include "runtime/conv.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

Conv2dGeometry geom(int64_t n, int64_t hw, int64_t c, int64_t k, int64_t r, int64_t stride) {
  Conv2dGeometry g;
  g.n = n; g.h = g.w = hw; g.c = c; g.k = k; g.r = g.s = r;
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = r / 2;
  return g;
}

/// "n32 28x28x32->64 k3 s1 f32": the key bench/torch_bench.py matches on.
std::string shape_str(const Conv2dGeometry& g, const char* dtype) {
  return "n" + std::to_string(g.n) + " " + std::to_string(g.h) + "x" + std::to_string(g.w) + "x" +
         std::to_string(g.c) + "->" + std::to_string(g.k) + " k" + std::to_string(g.r) + " s" +
         std::to_string(g.stride_h) + " " + dtype;
}

Result result(const char* name, const char* backend, const std::string& shape, double ms, double flops) {
  Result r;
  r.name = name;
  r.backend = backend;
  r.shape = shape;
  r.ms = ms;
  r.flops = flops;
  return r;
}

void bench_cpu(Context& ctx) {
  const int64_t n = ctx.quick() ? 8 : 32;
  const std::vector<Conv2dGeometry> shapes = {
      geom(n, 28, 1, 32, 3, 1),   // stem / CNN conv1
      geom(n, 28, 32, 32, 3, 1),  // ResNet stage 1
      geom(n, 14, 32, 64, 3, 1),  // CNN conv2
      geom(n, 28, 32, 64, 3, 2),  // stage 2 opening 3x3, stride 2
      geom(n, 28, 32, 64, 1, 2),  // its 1x1 projection
      geom(n, 14, 64, 64, 3, 1),  // stage 2
      geom(n, 7, 128, 128, 3, 1), // stage 3
  };
  for (const Conv2dGeometry& g : shapes) {
    std::vector<float> x(g.x_numel()), w(g.w_numel()), y(g.y_numel()), dx(g.x_numel()), dw(g.w_numel());
    fill_uniform_cpu(x.data(), g.x_numel(), 1, 0, -1.0f, 1.0f);
    fill_uniform_cpu(w.data(), g.w_numel(), 2, 0, -0.1f, 0.1f);
    fill_uniform_cpu(y.data(), g.y_numel(), 3, 0, -1.0f, 1.0f);  // doubles as dy
    const std::string shape = shape_str(g, "f32");
    const Device cpu = Device::cpu();
    std::vector<float> out(g.y_numel());
    ctx.report(result("conv2d_forward", "cpu", shape,
                      ctx.time_cpu([&] { conv2d_forward(g, DType::f32, x.data(), w.data(), nullptr, out.data(), cpu); }),
                      g.flops()));
    ctx.report(result("conv2d_backward_data", "cpu", shape,
                      ctx.time_cpu([&] { conv2d_backward_data(g, DType::f32, y.data(), w.data(), dx.data(), cpu); }),
                      g.flops()));
    ctx.report(result("conv2d_backward_filter", "cpu", shape, ctx.time_cpu([&] {
                        conv2d_backward_filter(g, DType::f32, x.data(), y.data(), dw.data(), DType::f32, false, nullptr,
                                               cpu);
                      }),
                      g.flops()));
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
void bench_cuda_shape(Context& ctx, const Conv2dGeometry& g, DType t, const char* dtype) {
  DevBuf<T> x(g.x_numel()), w(g.w_numel()), y(g.y_numel()), dy(g.y_numel()), dx(g.x_numel());
  DevBuf<float> dw(g.w_numel());
  fill_uniform(x.get(), g.x_numel(), 11, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(w.get(), g.w_numel(), 12, 0, -0.1f, 0.1f, nullptr);
  fill_uniform(dy.get(), g.y_numel(), 13, 0, -1.0f, 1.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const Device gpu = Device::cuda(0);
  const std::string shape = shape_str(g, dtype);
  // The first call of each builds and caches its cuDNN plan: warm-up covers it.
  ctx.report(result("conv2d_forward", "cuda", shape, ctx.time_cuda([&](cudaStream_t s) {
                      conv2d_forward(g, t, x.get(), w.get(), nullptr, y.get(), gpu, s);
                    }),
                    g.flops()));
  ctx.report(result("conv2d_backward_data", "cuda", shape, ctx.time_cuda([&](cudaStream_t s) {
                      conv2d_backward_data(g, t, dy.get(), w.get(), dx.get(), gpu, s);
                    }),
                    g.flops()));
  ctx.report(result("conv2d_backward_filter", "cuda", shape, ctx.time_cuda([&](cudaStream_t s) {
                      conv2d_backward_filter(g, t, x.get(), dy.get(), dw.get(), DType::f32, false, nullptr, gpu, s);
                    }),
                    g.flops()));
}

void bench_cuda(Context& ctx) {
  const int64_t n = 256;
  std::vector<Conv2dGeometry> shapes = {
      geom(n, 28, 1, 64, 3, 1),    geom(n, 28, 64, 64, 3, 1),  geom(n, 28, 64, 128, 3, 2),
      geom(n, 28, 64, 128, 1, 2),  geom(n, 14, 128, 128, 3, 1), geom(n, 7, 256, 256, 3, 1),
      geom(n, 4, 512, 512, 3, 1),
  };
  if (ctx.quick()) shapes = {geom(n, 28, 64, 64, 3, 1), geom(n, 14, 128, 128, 3, 1)};
  for (const Conv2dGeometry& g : shapes) {
    bench_cuda_shape<bf16>(ctx, g, DType::bf16, "bf16");
    bench_cuda_shape<float>(ctx, g, DType::f32, "f32");
  }
}
#endif

}  // namespace

KILN_BENCH(conv2d, 35) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
