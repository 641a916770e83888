// Fused attention benchmark (kernels/attention.h).
//
// FLOPs as FlashAttention counts them: forward 4·B·H·T²·D (two T×T×D
// matmuls), halved when causal; backward 2.5× the forward (five matmuls,
// although ours does seven: see attention_backward.cu), so TFLOP/s figures
// compare directly with FlashAttention's and PyTorch's SDPA published numbers.
// GPU shapes: B·T = 16k tokens and H·D = 2048 at every T (so the buffers are
// allocated once), T from 512 to 16k, D = 64 and 128, causal and not, bf16.
// PyTorch's SDPA (flash and cuDNN backends) on the same shapes and names:
// bench/torch_bench.py (or bench/torch_attention.py).
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/attention.h"
#include "kernels/fill.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

double attention_forward_flops(int B, int T, int H, int D, bool causal) {
  const double f = 4.0 * B * H * static_cast<double>(T) * T * D;
  return causal ? f / 2 : f;
}

// Forward reads q, k, v once and writes out and lse; backward reads q, k, v,
// out, dout, lse (and writes then reads delta) and writes dq, dk, dv.
double attention_forward_bytes(int B, int T, int H, int D, size_t elem) {
  const double n = static_cast<double>(B) * T * H * D;
  return 4 * n * elem + static_cast<double>(B) * H * T * 4;
}
double attention_backward_bytes(int B, int T, int H, int D, size_t elem) {
  const double n = static_cast<double>(B) * T * H * D;
  return 8 * n * elem + static_cast<double>(B) * H * T * 4 * 3;
}

/// "B8 T2048 H16 D128 causal bf16": the key torch_bench.py matches on.
std::string attention_shape(int B, int T, int H, int D, bool causal, const char* dtype) {
  std::ostringstream os;
  os << "B" << B << " T" << T << " H" << H << " D" << D << (causal ? " causal " : " full ") << dtype;
  return os.str();
}

// Attention is compute bound: rates are measured against the GEMM peak of
// the backend (cuBLASLt bf16 on the GPU, OpenBLAS sgemm on the CPU).
Result result(const char* name, const char* backend, const std::string& shape, double ms, double bytes,
              double flops) {
  Result r;
  r.peak = std::string(backend) == "cuda" ? "gemm_bf16" : "cpu_sgemm";
  r.name = name;
  r.backend = backend;
  r.shape = shape;
  r.ms = ms;
  r.bytes = bytes;
  r.flops = flops;
  return r;
}

void bench_cpu(Context& ctx) {
  const int B = 1, H = 4, D = 64, T = ctx.quick() ? 128 : 256;
  const int64_t n = static_cast<int64_t>(B) * T * H * D;
  std::vector<float> q(n), k(n), v(n), dout(n), out(n), dq(n), dk(n), dv(n), lse(static_cast<size_t>(B) * H * T);
  fill_normal_cpu(q.data(), n, 1, 0, 0.0f, 1.0f);
  fill_normal_cpu(k.data(), n, 2, 0, 0.0f, 1.0f);
  fill_normal_cpu(v.data(), n, 3, 0, 0.0f, 1.0f);
  fill_normal_cpu(dout.data(), n, 4, 0, 0.0f, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (bool causal : {false, true}) {
    const std::string shape = attention_shape(B, T, H, D, causal, "f32");
    const double flops = attention_forward_flops(B, T, H, D, causal);
    const double fwd = ctx.time_cpu([&] {
      attention_forward_cpu<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, D, H * D, scale,
                                   AttentionMask{causal, nullptr});
    });
    ctx.report(result("attention_forward", "cpu", shape, fwd, attention_forward_bytes(B, T, H, D, 4), flops));
    const double bwd = ctx.time_cpu([&] {
      attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                    out.data(), lse.data(), B, T, H, D, H * D, scale, AttentionMask{causal, nullptr});
    });
    ctx.report(
        result("attention_backward", "cpu", shape, bwd, attention_backward_bytes(B, T, H, D, 4), 2.5 * flops));
  }
}

#if KILN_WITH_CUDA
template <typename T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) { KILN_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T))); }
  ~DevBuf() { KILN_CUDA_WARN(cudaFree(p_)); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

void bench_cuda(Context& ctx) {
  constexpr int kTokens = 16384;  // B·T
  constexpr int kWidth = 2048;    // H·D
  const size_t n = static_cast<size_t>(kTokens) * kWidth;
  const size_t rows = static_cast<size_t>(kTokens) * (kWidth / 32);  // largest B·H·T (D = 32)
  DevBuf<bf16> q(n), k(n), v(n), dout(n), out(n), dq(n), dk(n), dv(n);
  DevBuf<float> lse(rows), ws(rows);
  // Normal(0, 1) like torch.randn in the PyTorch side; never zeros.
  fill_normal(q.get(), static_cast<int64_t>(n), 11, 0, 0.0f, 1.0f, nullptr);
  fill_normal(k.get(), static_cast<int64_t>(n), 12, 0, 0.0f, 1.0f, nullptr);
  fill_normal(v.get(), static_cast<int64_t>(n), 13, 0, 0.0f, 1.0f, nullptr);
  fill_normal(dout.get(), static_cast<int64_t>(n), 14, 0, 0.0f, 1.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());

  const std::vector<int> Ts = ctx.quick() ? std::vector<int>{1024, 4096}
                                          : std::vector<int>{512, 1024, 2048, 4096, 8192, 16384};
  for (int D : {64, 128}) {
    for (bool causal : {false, true}) {
      for (int T : Ts) {
        const int B = kTokens / T, H = kWidth / D;
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        const std::string shape = attention_shape(B, T, H, D, causal, "bf16");
        const double flops = attention_forward_flops(B, T, H, D, causal);
        auto forward = [&](cudaStream_t s) {
          attention_forward(out.get(), lse.get(), q.get(), k.get(), v.get(), B, T, H, D, H * D, scale, AttentionMask{causal, nullptr}, s);
        };
        const double fwd = ctx.time_cuda(forward);
        ctx.report(
            result("attention_forward", "cuda", shape, fwd, attention_forward_bytes(B, T, H, D, 2), flops));
        // Backward consumes this shape's out and lse (the last timed forward wrote them).
        const double bwd = ctx.time_cuda([&](cudaStream_t s) {
          attention_backward(dq.get(), dk.get(), dv.get(), ws.get(), dout.get(), q.get(), k.get(), v.get(),
                             out.get(), lse.get(), B, T, H, D, H * D, scale, AttentionMask{causal, nullptr}, s);
        });
        ctx.report(result("attention_backward", "cuda", shape, bwd, attention_backward_bytes(B, T, H, D, 2),
                          2.5 * flops));
      }
    }
  }
}
#endif

}  // namespace

KILN_BENCH(attention, 40) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
