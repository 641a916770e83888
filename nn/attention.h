// Multi-head self-attention, GPT-2 style (causal by default; bidirectional
// for encoders such as the ViT), optionally restricted to segments of packed
// sequences:
//
//   qkv (B, T, 3C) = c_attn(x)                     one fused projection
//   out (B, T, C)  = attention(q, k, v, mask)      kernels/attention.h reads q,
//                                                  k, v straight out of qkv
//                                                  (row stride 3C): no split,
//                                                  no permute
//   y (B, T, C)    = dropout(c_proj(out))
//
// Children "c_attn" and "c_proj" (Linear, weights (out, in) as in PyTorch's
// nn.Linear; Hugging Face's Conv1D stores them transposed, see gpt_io.h).
// Dropout is on the output projection only (GPT-2's resid_dropout): the
// fused kernel never materializes the probabilities it would drop.
//
// The mask (kernels/attention_mask.h): `causal` is fixed at construction;
// segment ids (packed examples: a token attends only to tokens of its own
// example) are set per batch with set_segment_ids() and stay in force until
// replaced or cleared.
//
// Decoding with a KV cache: begin_cache(T_max) keeps the qkv rows of every
// position seen so far; forward_cached(x, pos0) with pos0 = 0 runs the prompt
// (prefill, the fused kernel) and stores its rows, and with pos0 > 0 takes one
// new token, stores its row and attends over the pos0 + 1 cached keys with
// two small GEMMs and a softmax: O(T) work per token instead of O(T²).
// Batch 1 only (sampling).
#pragma once

#include <memory>

#include "kernels/attention_mask.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/rng.h"

namespace kiln::nn {

class CausalSelfAttention : public Module {
 public:
  /// C = n_head · head_dim. Linear weights as Linear's default init (the GPT
  /// overwrites them with its own). `causal` false gives bidirectional
  /// attention (every token sees every token of its row, or of its segment).
  CausalSelfAttention(int64_t C, int64_t n_head, bool bias, float dropout, std::shared_ptr<RngStream> rng,
                      uint64_t seed, bool causal = true);

  /// x (B, T, C) -> (B, T, C)
  Tensor forward(const Tensor& x) override;
  /// dy (B, T, C) -> dx (B, T, C)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;

  /// Segment ids for the following forward passes (and their backward):
  /// int32 (B, T) on this module's device, matching the input's B and T,
  /// non-decreasing along each row (one contiguous run per packed example;
  /// see kernels/attention_mask.h). The tensor is shared, not copied. An
  /// undefined tensor clears them (one sequence per row). On the CPU the ids
  /// are checked on every call; on the GPU the caller checks them on the host
  /// (check_attention_segments) before uploading.
  void set_segment_ids(const Tensor& segment_ids);
  const Tensor& segment_ids() const { return segments_; }
  bool causal() const { return causal_; }

  /// Starts a KV cache of up to `max_len` positions (batch 1).
  void begin_cache(int64_t max_len);
  /// Drops the cache.
  void end_cache();
  /// x (1, T, C) at positions pos0.. -> (1, T, C); pos0 = 0 prefills (any T),
  /// pos0 > 0 decodes one token (T = 1) against the cached positions.
  Tensor forward_cached(const Tensor& x, int64_t pos0);

  Linear& c_attn() { return c_attn_; }
  Linear& c_proj() { return c_proj_; }
  int64_t n_head() const { return H_; }

 private:
  Tensor attend(const Tensor& qkv, int64_t B, int64_t T);  // (B, T, 3C) -> (B, T, C), saves lse
  Tensor decode_step(int64_t pos);                          // attends row `pos` of the cache

  AttentionMask mask_for(const Tensor& segments, int64_t B, int64_t T) const;

  int64_t C_, H_, D_;
  bool causal_;
  Linear c_attn_, c_proj_;
  Dropout drop_;
  Tensor segments_;         // (B, T) int32 or undefined
  Tensor qkv_, out_, lse_;  // saved for backward: (B, T, 3C), (B, T, C), (B, H, T)
  Tensor seg_saved_;        // the segment ids forward used, for backward
  Tensor cache_;            // (T_max, 3C) qkv rows of the positions decoded so far
};

}  // namespace kiln::nn
