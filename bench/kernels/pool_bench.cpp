// Pooling benchmark (kernels/pool.h) on NHWC images: 2x2/2 max-pool (the
// CNN's) forward and backward, 3x3/2 pad-1 average pool, global average pool
// (ResNet's head) forward and backward. GPU: batch 256, 28x28x64 and
// 14x14x128 (global pool: 7x7x256), fp32 and bf16; CPU: the CNN recipe's
// first pooling (batch 128, 28x28x32).
//
// Bytes counted (x = input elements, y = output elements, s = sizeof(T)):
//   maxpool forward   x·s read + y·s written + 4·y argmax written
//   maxpool backward  y·s + 4·y read (dy, argmax) + x·s written
//   avgpool forward   x·s + y·s;  backward y·s + x·s
//   global forward    x·s + y·s;  backward y·s + x·s
// PyTorch's figures for the same names and shapes: bench/torch_bench.py
// (pool entry, channels_last).
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/fill.h"
#include "kernels/pool.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

PoolShape pool_shape(int64_t n, int64_t hw, int64_t c, int64_t k, int64_t s, int64_t p) {
  PoolShape ps;
  ps.n = n; ps.h = ps.w = hw; ps.c = c;
  ps.kh = ps.kw = k;
  ps.sh = ps.sw = s;
  ps.ph = ps.pw = p;
  return ps;
}

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
  const int64_t n = ctx.quick() ? 16 : 128, hw = 28, C = 32;
  const PoolShape mp = pool_shape(n, hw, C, 2, 2, 0), ap = pool_shape(n, hw, C, 3, 2, 1);
  const int64_t xe = mp.x_numel(), ye = mp.y_numel(), ae = ap.y_numel();
  std::vector<float> x(xe), y(ye), dy(ye), dx(xe), ya(ae), dya(ae), g(n * C), dg(n * C);
  std::vector<int32_t> arg(ye);
  fill_uniform_cpu(x.data(), xe, 1, 0, -2.0f, 2.0f);
  fill_uniform_cpu(dy.data(), ye, 2, 0, -1.0f, 1.0f);
  fill_uniform_cpu(dya.data(), ae, 3, 0, -1.0f, 1.0f);
  fill_uniform_cpu(dg.data(), n * C, 4, 0, -1.0f, 1.0f);
  const std::string shape = shape_str(n, hw, C, "f32");
  const double s = 4;
  ctx.report(result("maxpool2x2_forward", "cpu", shape,
                    ctx.time_cpu([&] { maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), mp); }),
                    xe * s + ye * s + 4.0 * ye));
  ctx.report(result("maxpool2x2_backward", "cpu", shape,
                    ctx.time_cpu([&] { maxpool2d_backward_cpu(dx.data(), dy.data(), arg.data(), mp); }),
                    ye * s + 4.0 * ye + xe * s));
  ctx.report(result("avgpool3x3s2_forward", "cpu", shape,
                    ctx.time_cpu([&] { avgpool2d_forward_cpu(ya.data(), x.data(), ap, true); }), xe * s + ae * s));
  ctx.report(result("avgpool3x3s2_backward", "cpu", shape,
                    ctx.time_cpu([&] { avgpool2d_backward_cpu(dx.data(), dya.data(), ap, true); }), ae * s + xe * s));
  ctx.report(result("global_avgpool_forward", "cpu", shape,
                    ctx.time_cpu([&] { global_avgpool_forward_cpu(g.data(), x.data(), n, hw * hw, C); }),
                    xe * s + n * C * s));
  ctx.report(result("global_avgpool_backward", "cpu", shape,
                    ctx.time_cpu([&] { global_avgpool_backward_cpu(dx.data(), dg.data(), n, hw * hw, C); }),
                    xe * s + n * C * s));
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
  const PoolShape mp = pool_shape(n, hw, C, 2, 2, 0), ap = pool_shape(n, hw, C, 3, 2, 1);
  const int64_t xe = mp.x_numel(), ye = mp.y_numel(), ae = ap.y_numel();
  const double s = sizeof(T);
  DevBuf<T> x(xe), y(ye), dy(ye), dx(xe), ya(ae), dya(ae), g(n * C), dg(n * C);
  DevBuf<int32_t> arg(ye);
  fill_uniform(x.get(), xe, 11, 0, -2.0f, 2.0f, nullptr);
  fill_uniform(dy.get(), ye, 12, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(dya.get(), ae, 13, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(dg.get(), n * C, 14, 0, -1.0f, 1.0f, nullptr);
  maxpool2d_forward(y.get(), arg.get(), x.get(), mp, nullptr);  // a real argmax for the backward
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = shape_str(n, hw, C, dtype);
  ctx.report(result("maxpool2x2_forward", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      maxpool2d_forward(y.get(), arg.get(), x.get(), mp, st);
                    }),
                    xe * s + ye * s + 4.0 * ye));
  ctx.report(result("maxpool2x2_backward", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      maxpool2d_backward(dx.get(), dy.get(), arg.get(), mp, st);
                    }),
                    ye * s + 4.0 * ye + xe * s));
  ctx.report(result("avgpool3x3s2_forward", "cuda", shape,
                    ctx.time_cuda([&](cudaStream_t st) { avgpool2d_forward(ya.get(), x.get(), ap, true, st); }),
                    xe * s + ae * s));
  ctx.report(result("avgpool3x3s2_backward", "cuda", shape,
                    ctx.time_cuda([&](cudaStream_t st) { avgpool2d_backward(dx.get(), dya.get(), ap, true, st); }),
                    ae * s + xe * s));
  ctx.report(result("global_avgpool_forward", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      global_avgpool_forward(g.get(), x.get(), n, hw * hw, C, st);
                    }),
                    xe * s + n * C * s));
  ctx.report(result("global_avgpool_backward", "cuda", shape, ctx.time_cuda([&](cudaStream_t st) {
                      global_avgpool_backward(dx.get(), dg.get(), n, hw * hw, C, st);
                    }),
                    xe * s + n * C * s));
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

KILN_BENCH(pool, 37) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
