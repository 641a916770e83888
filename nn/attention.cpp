#include "nn/attention.h"

#include <cmath>
#include <sstream>

#include "kernels/attention.h"
#include "kernels/softmax.h"
#include "runtime/blas.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

CausalSelfAttention::CausalSelfAttention(int64_t C, int64_t n_head, bool bias, float dropout,
                                         std::shared_ptr<RngStream> rng, uint64_t seed, bool causal)
    : C_(C),
      H_(n_head),
      D_(n_head > 0 ? C / n_head : 0),
      causal_(causal),
      c_attn_(C, 3 * C, bias, seed, 0),
      c_proj_(C, C, bias, seed, static_cast<uint64_t>(3 * C * C + 3 * C)),
      drop_(dropout, std::move(rng)) {
  KILN_CHECK(n_head > 0 && C % n_head == 0, "CausalSelfAttention: " << n_head << " heads do not divide width " << C);
  register_module("c_attn", &c_attn_);
  register_module("c_proj", &c_proj_);
  register_module("resid_dropout", &drop_);
}

std::string CausalSelfAttention::describe() const {
  std::ostringstream os;
  os << "CausalSelfAttention(width " << C_ << ", " << H_ << " heads of " << D_ << (causal_ ? "" : ", bidirectional")
     << ")";
  return os.str();
}

void CausalSelfAttention::set_segment_ids(const Tensor& segment_ids) {
  KILN_CHECK(!segment_ids.defined() || (segment_ids.dtype() == DType::i32 && segment_ids.ndim() == 2),
             describe() << ": segment ids '" << segment_ids.name() << "' must be int32 (B, T), got "
                        << dtype_name(segment_ids.dtype()) << " " << segment_ids.shape().str());
  segments_ = segment_ids;
}

AttentionMask CausalSelfAttention::mask_for(const Tensor& segments, int64_t B, int64_t T) const {
  if (!segments.defined()) return AttentionMask{causal_, nullptr};
  KILN_CHECK(segments.size(0) == B && segments.size(1) == T,
             describe() << ": segment ids '" << segments.name() << "' have shape " << segments.shape().str()
                        << " but the input is (" << B << ", " << T << ", " << C_ << ")");
  KILN_CHECK(segments.device() == device(), describe() << ": segment ids '" << segments.name() << "' are on "
                                                       << segments.device().str() << ", the module on "
                                                       << device().str());
  return AttentionMask{causal_, segments.data<int32_t>()};
}

Tensor CausalSelfAttention::attend(const Tensor& qkv, int64_t B, int64_t T) {
  seg_saved_ = segments_;
  const AttentionMask mask = mask_for(seg_saved_, B, T);
  const DType stat = qkv.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor out = Tensor::empty({B, T, C_}, qkv.dtype(), qkv.device(), "attn.out");  // (B, T, C)
  lse_ = Tensor::empty({B, H_, T}, stat, qkv.device(), "attn.lse");                // (B, H, T)
  const float scale = 1.0f / std::sqrt(static_cast<float>(D_));
  const int b = static_cast<int>(B), t = static_cast<int>(T), h = static_cast<int>(H_), d = static_cast<int>(D_);
  const int64_t stride = 3 * C_;
  const int64_t C = C_;
  dispatch(
      qkv,
      [&](auto tag) {
        using F = decltype(tag);
        const F* q = qkv.data<F>();
        attention_forward_cpu<F>(out.data<F>(), lse_.data<F>(), q, q + C, q + 2 * C, b, t, h, d, stride, scale,
                                 mask);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        const F* q = qkv.data<F>();
        attention_forward(out.data<F>(), lse_.data<float>(), q, q + C, q + 2 * C, b, t, h, d, stride, scale, mask,
                          s);
      });
  return out;
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 3 && x.size(2) == C_,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (B, T, " << C_
                        << ")");
  const int64_t B = x.size(0), T = x.size(1);
  qkv_ = c_attn_.forward(x);  // (B, T, 3C)
  out_ = attend(qkv_, B, T);  // (B, T, C)
  return drop_.forward(c_proj_.forward(out_));
}

Tensor CausalSelfAttention::backward(const Tensor& dy) {
  KILN_CHECK(qkv_.defined(), describe() << ": backward before forward");
  const int64_t B = qkv_.size(0), T = qkv_.size(1);
  const AttentionMask mask = mask_for(seg_saved_, B, T);
  Tensor dout = c_proj_.backward(drop_.backward(dy));  // (B, T, C)
  Tensor dqkv = Tensor::empty(qkv_.shape(), qkv_.dtype(), qkv_.device(), "attn.dqkv");  // (B, T, 3C)
  const float scale = 1.0f / std::sqrt(static_cast<float>(D_));
  const int b = static_cast<int>(B), t = static_cast<int>(T), h = static_cast<int>(H_), d = static_cast<int>(D_);
  const int64_t stride = 3 * C_;
  const int64_t C = C_;
  dispatch(
      dout,
      [&](auto tag) {
        using F = decltype(tag);
        const F* q = qkv_.data<F>();
        F* dq = dqkv.data<F>();
        attention_backward_cpu<F>(dq, dq + C, dq + 2 * C, dout.data<F>(), q, q + C, q + 2 * C, out_.data<F>(),
                                  lse_.data<F>(), b, t, h, d, stride, scale, mask);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        const F* q = qkv_.data<F>();
        F* dq = dqkv.data<F>();
        Tensor ws = Tensor::empty({static_cast<int64_t>(attention_backward_workspace_floats(b, t, h))}, DType::f32,
                                  dout.device(), "attn.workspace");
        attention_backward(dq, dq + C, dq + 2 * C, ws.data<float>(), dout.data<F>(), q, q + C, q + 2 * C,
                           out_.data<F>(), lse_.data<float>(), b, t, h, d, stride, scale, mask, s);
      });
  return c_attn_.backward(dqkv);
}

// --- KV cache ------------------------------------------------------------------

void CausalSelfAttention::begin_cache(int64_t max_len) {
  KILN_CHECK(max_len > 0, describe() << ": cache of " << max_len << " positions");
  KILN_CHECK(causal_, describe() << ": a KV cache needs causal attention");
  const DType dt = compute_dtype();  // the activations' dtype (f32, bf16; f64 in the CPU checks)
  cache_ = Tensor::empty({max_len, 3 * C_}, dt, device(), "attn.kv_cache");  // (T_max, 3C)
}

void CausalSelfAttention::end_cache() { cache_ = Tensor(); }

Tensor CausalSelfAttention::forward_cached(const Tensor& x, int64_t pos0) {
  KILN_CHECK(cache_.defined(), describe() << ": forward_cached without begin_cache");
  KILN_CHECK(!segments_.defined(), describe() << ": forward_cached decodes one sequence; clear the segment ids first");
  KILN_CHECK(x.ndim() == 3 && x.size(0) == 1 && x.size(2) == C_,
             describe() << ": cached input must be (1, T, " << C_ << "), got " << x.shape().str());
  const int64_t T = x.size(1);
  KILN_CHECK(pos0 + T <= cache_.size(0), describe() << ": positions up to " << pos0 + T << " exceed the cache of "
                                                    << cache_.size(0));
  KILN_CHECK(pos0 == 0 || T == 1, describe() << ": decoding takes one token at a time (got " << T << " at " << pos0 << ")");
  Tensor qkv = c_attn_.forward(x);  // (1, T, 3C)
  cache_.view(pos0 * 3 * C_, {T * 3 * C_}).copy_from(qkv.reshape({T * 3 * C_}));
  Tensor out = pos0 == 0 ? attend(qkv, 1, T) : decode_step(pos0);  // (1, T, C)
  return drop_.forward(c_proj_.forward(out));
}

Tensor CausalSelfAttention::decode_step(int64_t pos) {
  // The new query (row pos) against keys and values 0..pos, per head h:
  //   s_h (1, n) = scale · q_h (1, D) · K_hᵀ (D, n),   K_h rows at stride 3C
  //   p_h = softmax(s_h);   o_h (1, D) = p_h (1, n) · V_h (n, D)
  // as two GEMMs batched over heads (head h starts D elements after h-1).
  const int64_t n = pos + 1, C = C_;
  const DType dt = cache_.dtype();
  const Device dev = cache_.device();
  cudaStream_t stream = compute_stream(dev);
  const size_t esize = dtype_size(dt);
  const char* row = static_cast<const char*>(cache_.raw());
  const void* q = row + static_cast<size_t>(pos * 3 * C) * esize;
  const void* k = row + static_cast<size_t>(C) * esize;
  const void* v = row + static_cast<size_t>(2 * C) * esize;
  Tensor scores = Tensor::empty({H_, n}, dt, dev, "attn.decode_scores");  // (H, n)
  GemmArgs s;
  s.trans_b = true;
  s.m = 1; s.n = n; s.k = D_;
  s.alpha = 1.0f / std::sqrt(static_cast<float>(D_));
  s.a = q; s.lda = D_; s.stride_a = D_;
  s.b = k; s.ldb = 3 * C; s.stride_b = D_;
  s.c = scores.raw(); s.ldc = n; s.stride_c = n;
  s.batch = H_;
  s.in_dtype = dt; s.out_dtype = dt;
  gemm(s, dev, stream);
  const int64_t H = H_;
  dispatch(
      scores, [&](auto tag) { using F = decltype(tag); softmax_forward_cpu<F>(scores.data<F>(), scores.data<F>(), H, n); },
      [&](auto tag, cudaStream_t st) { using F = decltype(tag); softmax_forward(scores.data<F>(), scores.data<F>(), H, n, st); });
  Tensor out = Tensor::empty({1, 1, C_}, dt, dev, "attn.out");  // (1, 1, H·D)
  GemmArgs o;
  o.m = 1; o.n = D_; o.k = n;
  o.a = scores.raw(); o.lda = n; o.stride_a = n;
  o.b = v; o.ldb = 3 * C; o.stride_b = D_;
  o.c = out.raw(); o.ldc = D_; o.stride_c = D_;
  o.batch = H_;
  o.in_dtype = dt; o.out_dtype = dt;
  gemm(o, dev, stream);
  return out;
}

}  // namespace kiln::nn
