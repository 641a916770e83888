// ViT token-side kernels: patch extraction (kernels/patch.h), token assembly
// (class token + position embedding, kernels/cls_token.h) and token pooling
// (kernels/token_pool.h), forward and backward, at the Fashion-MNIST recipe's
// shape (B 256, 28x28x1 images, p 4 → N 49 patches, dim 64) and ViT-B/16's
// (B 64, 224x224x3, p 16 → N 196, dim 768) on the GPU.
//
// Bytes counted, s = sizeof(activation), P = 1 class token, T = N + 1:
//   patch            forward and backward  2·B·H·W·C·s (a permutation)
//   cls_token_fwd    x B·N·C·s + cls C·s + pos T·C·s + out B·T·C·s
//   cls_token_bwd    dout B·T·C·s + dx B·N·C·s + dcls/dpos read and written 8·(T + 1)·C
//                    (the second read of dout for the batch sums is overhead)
//   token_pool       mean: read B·N·C·s, write B·C·s; backward read B·C·s, write B·T·C·s
//                    cls:  read B·C·s (forward); backward as mean
// PyTorch's figures for the same names and shapes: bench/torch_bench.py.
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/kernels/bench_util.h"
#include "kernels/cls_token.h"
#include "kernels/fill.h"
#include "kernels/patch.h"
#include "kernels/token_pool.h"

namespace kiln::bench {
namespace {

using util::make_result;

struct VitShape {
  int64_t B, H, W, C, p, dim;
  int64_t N() const { return (H / p) * (W / p); }
  /// "256x28x28x1 p4" (+ " d64" for token-space ops) and the dtype.
  std::string image(const char* dtype) const {
    return std::to_string(B) + "x" + std::to_string(H) + "x" + std::to_string(W) + "x" + std::to_string(C) + " p" +
           std::to_string(p) + " " + dtype;
  }
  std::string tokens(const char* dtype) const {
    return std::to_string(B) + "x" + std::to_string(N()) + "x" + std::to_string(dim) + " " + dtype;
  }
};

const VitShape kFashion{256, 28, 28, 1, 4, 64};
const VitShape kVitB16{64, 224, 224, 3, 16, 768};

double patch_bytes(const VitShape& v, double s) { return 2.0 * v.B * v.H * v.W * v.C * s; }
double cls_fwd_bytes(const VitShape& v, double s) {
  const double N = v.N(), T = N + 1;
  return (v.B * N * v.dim + v.dim + T * v.dim + v.B * T * v.dim) * s;
}
double cls_bwd_bytes(const VitShape& v, double s) {
  const double N = v.N(), T = N + 1;
  return (v.B * T * v.dim + v.B * N * v.dim) * s + 8.0 * (T + 1) * v.dim;
}
double pool_fwd_bytes(const VitShape& v, double s, bool mean) {
  return (mean ? v.B * v.N() * v.dim + v.B * v.dim : 2.0 * v.B * v.dim) * s;
}
double pool_bwd_bytes(const VitShape& v, double s) { return (v.B * v.dim + v.B * (v.N() + 1.0) * v.dim) * s; }

void bench_cpu(Context& ctx) {
  const VitShape v = kFashion;
  const int64_t img = v.B * v.H * v.W * v.C, N = v.N(), T = N + 1, D = v.dim;
  std::vector<float> x(img), patches(img), dx(img), tok_in(v.B * N * D), cls(D), pos(T * D), tok(v.B * T * D),
      dtok_in(v.B * N * D), dcls(D, 0.0f), dpos(T * D, 0.0f), pooled(v.B * D), dtok(v.B * T * D);
  fill_uniform_cpu(x.data(), img, 1, 0, 0.0f, 1.0f);
  fill_uniform_cpu(tok_in.data(), v.B * N * D, 2, 0, -1.0f, 1.0f);
  fill_uniform_cpu(cls.data(), D, 3, 0, -1.0f, 1.0f);
  fill_uniform_cpu(pos.data(), T * D, 4, 0, -1.0f, 1.0f);
  fill_uniform_cpu(tok.data(), v.B * T * D, 5, 0, -1.0f, 1.0f);
  fill_uniform_cpu(pooled.data(), v.B * D, 6, 0, -1.0f, 1.0f);
  const std::string is = v.image("f32"), ts = v.tokens("f32");
  double ms = ctx.time_cpu([&] { patch_forward_cpu(patches.data(), x.data(), v.B, v.H, v.W, v.C, v.p); });
  ctx.report(make_result("patch_forward", "cpu", is, ms, patch_bytes(v, 4)));
  ms = ctx.time_cpu([&] { patch_backward_cpu(dx.data(), patches.data(), v.B, v.H, v.W, v.C, v.p); });
  ctx.report(make_result("patch_backward", "cpu", is, ms, patch_bytes(v, 4)));
  // The forward writes `tok`, which then serves as dout.
  ms = ctx.time_cpu([&] { cls_token_forward_cpu(tok.data(), tok_in.data(), cls.data(), pos.data(), v.B, N, D); });
  ctx.report(make_result("cls_token_forward", "cpu", ts, ms, cls_fwd_bytes(v, 4)));
  ms = ctx.time_cpu(
      [&] { cls_token_backward_cpu(dtok_in.data(), dcls.data(), dpos.data(), tok.data(), v.B, N, D, true); });
  ctx.report(make_result("cls_token_backward", "cpu", ts, ms, cls_bwd_bytes(v, 4)));
  ms = ctx.time_cpu([&] { token_pool_forward_cpu(pooled.data(), tok.data(), v.B, T, D, 1, N); });
  ctx.report(make_result("token_pool_mean_forward", "cpu", ts, ms, pool_fwd_bytes(v, 4, true)));
  ms = ctx.time_cpu([&] { token_pool_forward_cpu(pooled.data(), tok.data(), v.B, T, D, 0, 1); });
  ctx.report(make_result("token_pool_cls_forward", "cpu", ts, ms, pool_fwd_bytes(v, 4, false)));
  ms = ctx.time_cpu([&] { token_pool_backward_cpu(dtok.data(), pooled.data(), v.B, T, D, 1, N); });
  ctx.report(make_result("token_pool_backward", "cpu", ts, ms, pool_bwd_bytes(v, 4)));
}

#if KILN_WITH_CUDA
template <typename Act>
void bench_cuda_shape(Context& ctx, const VitShape& v, const char* dtype) {
  const int64_t img = v.B * v.H * v.W * v.C, N = v.N(), T = N + 1, D = v.dim;
  const double s = sizeof(Act);
  util::DeviceArray<Act> x(img), patches(img), dx(img), tok_in(v.B * N * D), cls(D), pos(T * D), tok(v.B * T * D),
      dtok_in(v.B * N * D), pooled(v.B * D), dtok(v.B * T * D);
  util::DeviceArray<float> dcls(D), dpos(T * D);
  fill_uniform(x.get(), img, 11, 0, 0.0f, 1.0f, nullptr);
  fill_uniform(tok_in.get(), v.B * N * D, 12, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(cls.get(), D, 13, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(pos.get(), T * D, 14, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(tok.get(), v.B * T * D, 15, 0, -1.0f, 1.0f, nullptr);
  fill_uniform(pooled.get(), v.B * D, 16, 0, -1.0f, 1.0f, nullptr);
  fill_constant(dcls.get(), 0.0f, D, nullptr);
  fill_constant(dpos.get(), 0.0f, T * D, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string is = v.image(dtype), ts = v.tokens(dtype);
  double ms = ctx.time_cuda(
      [&](cudaStream_t st) { patch_forward(patches.get(), x.get(), v.B, v.H, v.W, v.C, v.p, st); });
  ctx.report(make_result("patch_forward", "cuda", is, ms, patch_bytes(v, s)));
  ms = ctx.time_cuda([&](cudaStream_t st) { patch_backward(dx.get(), patches.get(), v.B, v.H, v.W, v.C, v.p, st); });
  ctx.report(make_result("patch_backward", "cuda", is, ms, patch_bytes(v, s)));
  ms = ctx.time_cuda(
      [&](cudaStream_t st) { cls_token_forward(tok.get(), tok_in.get(), cls.get(), pos.get(), v.B, N, D, st); });
  ctx.report(make_result("cls_token_forward", "cuda", ts, ms, cls_fwd_bytes(v, s)));
  ms = ctx.time_cuda([&](cudaStream_t st) {
    cls_token_backward(dtok_in.get(), dcls.get(), dpos.get(), tok.get(), v.B, N, D, true, st);
  });
  ctx.report(make_result("cls_token_backward", "cuda", ts, ms, cls_bwd_bytes(v, s)));
  ms = ctx.time_cuda([&](cudaStream_t st) { token_pool_forward(pooled.get(), tok.get(), v.B, T, D, 1, N, st); });
  ctx.report(make_result("token_pool_mean_forward", "cuda", ts, ms, pool_fwd_bytes(v, s, true)));
  ms = ctx.time_cuda([&](cudaStream_t st) { token_pool_forward(pooled.get(), tok.get(), v.B, T, D, 0, 1, st); });
  ctx.report(make_result("token_pool_cls_forward", "cuda", ts, ms, pool_fwd_bytes(v, s, false)));
  ms = ctx.time_cuda([&](cudaStream_t st) { token_pool_backward(dtok.get(), pooled.get(), v.B, T, D, 1, N, st); });
  ctx.report(make_result("token_pool_backward", "cuda", ts, ms, pool_bwd_bytes(v, s)));
}

void bench_cuda(Context& ctx) {
  bench_cuda_shape<float>(ctx, kFashion, "f32");
  bench_cuda_shape<bf16>(ctx, kFashion, "bf16");
  if (ctx.quick()) return;
  bench_cuda_shape<float>(ctx, kVitB16, "f32");
  bench_cuda_shape<bf16>(ctx, kVitB16, "bf16");
}
#endif

}  // namespace

KILN_BENCH(vit_tokens, 34) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
