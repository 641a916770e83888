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
//
// Packed documents (SFT-style): one fixed set of documents, lengths from a
// 64-bit LCG (bench/torch_bench.py draws the same), run three ways:
//   packed  first-fit into rows of T tokens, with segment ids: the document
//           mask, fully masked tiles skipped;
//   nomask  the same rows without ids: what a kernel without document masks
//           pays (dense causal/bidirectional over each row; it also computes
//           the wrong thing, documents seeing each other);
//   padded  one document per row, padded to the longest, no ids: the
//           unpacked alternative (bidirectional rows then also see padding).
// All three rows count the same useful FLOPs, Σ_docs 4·H·D·L² (halved when
// causal), so their TFLOP/s compare throughput directly (∝ tokens/s).
#include <algorithm>
#include <cmath>
#include <cstdint>
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

// --- packed documents ------------------------------------------------------------

struct Docs {
  std::vector<int> lengths;            // in drawing order
  std::vector<std::vector<int>> rows;  // first-fit packing into rows of T
  int T = 0;                           // packed row length
  int max_len = 0;                     // padded row length
  int64_t tokens = 0;
};

/// Documents with lengths in [lo, hi) until they hold `tokens` tokens, packed
/// first-fit (in order) into rows of T. Same LCG and packing as torch_bench.py.
Docs make_docs(int64_t tokens, int lo, int hi, int T) {
  Docs d;
  d.T = T;
  uint64_t x = 0x5EED;
  while (d.tokens < tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const int len = lo + static_cast<int>((x >> 33) % static_cast<uint64_t>(hi - lo));
    d.lengths.push_back(len);
    d.tokens += len;
    d.max_len = std::max(d.max_len, len);
  }
  std::vector<int> room;
  for (int len : d.lengths) {
    size_t r = 0;
    while (r < room.size() && room[r] < len) ++r;
    if (r == room.size()) {
      room.push_back(T);
      d.rows.emplace_back();
    }
    room[r] -= len;
    d.rows[r].push_back(len);
  }
  return d;
}

/// Segment ids (B, T) of the packed rows; a row's padded tail is one more segment.
std::vector<int32_t> doc_segment_ids(const Docs& d) {
  std::vector<int32_t> seg;
  for (const std::vector<int>& row : d.rows) {
    const size_t start = seg.size();
    int32_t id = 0;
    for (int len : row) seg.insert(seg.end(), static_cast<size_t>(len), id++);
    seg.resize(start + static_cast<size_t>(d.T), id);  // the padded tail: an id of its own
  }
  return seg;
}

/// Useful forward FLOPs of the documents: Σ 4·H·D·L², halved when causal.
double docs_forward_flops(const Docs& d, int H, int D, bool causal) {
  double f = 0;
  for (int len : d.lengths) f += 4.0 * H * D * static_cast<double>(len) * len;
  return causal ? f / 2 : f;
}

/// "docs25 tokens16384 B5 T4096 H16 D128 causal bf16 packed": the key torch_bench.py matches on.
std::string docs_shape(const Docs& d, int B, int T, int H, int D, bool causal, const char* dtype, const char* mode) {
  std::ostringstream os;
  os << "docs" << d.lengths.size() << " tokens" << d.tokens << " B" << B << " T" << T << " H" << H << " D" << D
     << (causal ? " causal " : " full ") << dtype << " " << mode;
  return os.str();
}

/// The three ways (see the file comment): rows of T tokens, B of them, and
/// segment ids or none.
struct DocLayout {
  const char* mode;
  int B, T;
  std::vector<int32_t> seg;
};

std::vector<DocLayout> doc_layouts(const Docs& d) {
  const int P = static_cast<int>(d.rows.size());
  return {{"packed", P, d.T, doc_segment_ids(d)},
          {"nomask", P, d.T, {}},
          {"padded", static_cast<int>(d.lengths.size()), d.max_len, {}}};
}

void bench_cpu_docs(Context& ctx) {
  const int H = 4, D = 64;
  const Docs docs = make_docs(ctx.quick() ? 512 : 1024, 16, 256, 512);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (bool causal : {true, false}) {
    const double flops = docs_forward_flops(docs, H, D, causal);
    for (const DocLayout& l : doc_layouts(docs)) {
      const int64_t n = static_cast<int64_t>(l.B) * l.T * H * D;
      std::vector<float> q(n), k(n), v(n), dout(n), out(n), dq(n), dk(n), dv(n);
      std::vector<float> lse(static_cast<size_t>(l.B) * H * l.T);
      fill_normal_cpu(q.data(), n, 1, 0, 0.0f, 1.0f);
      fill_normal_cpu(k.data(), n, 2, 0, 0.0f, 1.0f);
      fill_normal_cpu(v.data(), n, 3, 0, 0.0f, 1.0f);
      fill_normal_cpu(dout.data(), n, 4, 0, 0.0f, 1.0f);
      const AttentionMask mask{causal, l.seg.empty() ? nullptr : l.seg.data()};
      const std::string shape = docs_shape(docs, l.B, l.T, H, D, causal, "f32", l.mode);
      const double fwd = ctx.time_cpu([&] {
        attention_forward_cpu<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), l.B, l.T, H, D, H * D,
                                     scale, mask);
      });
      ctx.report(result("attention_forward", "cpu", shape, fwd, attention_forward_bytes(l.B, l.T, H, D, 4), flops));
      const double bwd = ctx.time_cpu([&] {
        attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                      out.data(), lse.data(), l.B, l.T, H, D, H * D, scale, mask);
      });
      ctx.report(result("attention_backward", "cpu", shape, bwd, attention_backward_bytes(l.B, l.T, H, D, 4),
                        2.5 * flops));
    }
  }
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
          attention_forward(out.get(), lse.get(), q.get(), k.get(), v.get(), B, T, H, D, H * D, scale,
                            AttentionMask{causal, nullptr}, s);
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

// Forward and backward of one (B, T, H, D) bf16 problem with its own
// buffers; `seg` (host, (B, T)) is uploaded when not empty.
void time_cuda_case(Context& ctx, const std::string& shape, int B, int T, int H, int D, bool causal,
                    const std::vector<int32_t>& seg, double flops) {
  const size_t n = static_cast<size_t>(B) * T * H * D, rows = static_cast<size_t>(B) * H * T;
  DevBuf<bf16> q(n), k(n), v(n), dout(n), out(n), dq(n), dk(n), dv(n);
  DevBuf<float> lse(rows), ws(rows);
  DevBuf<int32_t> seg_d(std::max<size_t>(seg.size(), 1));
  fill_normal(q.get(), static_cast<int64_t>(n), 21, 0, 0.0f, 1.0f, nullptr);
  fill_normal(k.get(), static_cast<int64_t>(n), 22, 0, 0.0f, 1.0f, nullptr);
  fill_normal(v.get(), static_cast<int64_t>(n), 23, 0, 0.0f, 1.0f, nullptr);
  fill_normal(dout.get(), static_cast<int64_t>(n), 24, 0, 0.0f, 1.0f, nullptr);
  if (!seg.empty())
    KILN_CUDA_CHECK(cudaMemcpy(seg_d.get(), seg.data(), seg.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const AttentionMask mask{causal, seg.empty() ? nullptr : seg_d.get()};
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const double fwd = ctx.time_cuda([&](cudaStream_t s) {
    attention_forward(out.get(), lse.get(), q.get(), k.get(), v.get(), B, T, H, D, H * D, scale, mask, s);
  });
  ctx.report(result("attention_forward", "cuda", shape, fwd, attention_forward_bytes(B, T, H, D, 2), flops));
  const double bwd = ctx.time_cuda([&](cudaStream_t s) {
    attention_backward(dq.get(), dk.get(), dv.get(), ws.get(), dout.get(), q.get(), k.get(), v.get(), out.get(),
                       lse.get(), B, T, H, D, H * D, scale, mask, s);
  });
  ctx.report(result("attention_backward", "cuda", shape, bwd, attention_backward_bytes(B, T, H, D, 2), 2.5 * flops));
}

// Packed documents (16k tokens, lengths 32..2047, rows of 4096) at H·D = 2048,
// and a small ViT's attention (D = 16: 49 patches + class token, 4 heads).
void bench_cuda_docs(Context& ctx) {
  const Docs docs = make_docs(16384, 32, 2048, 4096);
  for (int D : {64, 128}) {
    const int H = 2048 / D;
    for (bool causal : {true, false}) {
      const double flops = docs_forward_flops(docs, H, D, causal);
      for (const DocLayout& l : doc_layouts(docs))
        time_cuda_case(ctx, docs_shape(docs, l.B, l.T, H, D, causal, "bf16", l.mode), l.B, l.T, H, D, causal, l.seg,
                       flops);
    }
  }
  const int B = ctx.quick() ? 256 : 1024, T = 50, H = 4, D = 16;
  time_cuda_case(ctx, attention_shape(B, T, H, D, false, "bf16"), B, T, H, D, false, {},
                 attention_forward_flops(B, T, H, D, false));
}
#endif

}  // namespace

KILN_BENCH(attention, 40) {
  bench_cpu(ctx);
  bench_cpu_docs(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) {
    bench_cuda(ctx);
    bench_cuda_docs(ctx);
  }
#endif
}

}  // namespace kiln::bench
