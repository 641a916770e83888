// GPT-2 (Radford et al. 2019), as in Hugging Face's GPT2LMHeadModel and
// llm.c's train_gpt2:
//
//   r = dropout(wte[tokens] + wpe[positions])              (B, T, C)
//   for each block:  r = r + attn(ln_1(r));  r = r + mlp(ln_2(r))
//   logits = ln_f(r) · wteᵀ                                 (B, T, Vp), tied head
//
// pre-LayerNorm blocks (nn/transformer.h, shared with the ViT), causal
// self-attention on the fused kernel, a 4× GELU (tanh) MLP, a final LayerNorm
// and an LM head that shares the token table.
//
// Layout choices:
//  - The vocabulary V is padded to Vp, a multiple of 128 (50257 -> 50304), so
//    the LM head GEMM has tensor-core friendly sizes. Logits have Vp columns;
//    the padded ones are garbage-free (their wte rows start at zero) and the
//    cross-entropy ignores them (its V vs Vp), so they get zero gradient.
//  - Between blocks the residual add and the next LayerNorm run as one fused
//    kernel (LayerNorm::forward_residual): r_next = r + m and
//    y = ln(r_next) in one pass over the activations; the backward folds the
//    residual gradient into the LayerNorm backward, so the adds cost nothing.
//  - Parameter names are Hugging Face GPT-2's (wte.weight, wpe.weight,
//    h.0.ln_1.weight, h.0.attn.c_attn.weight, h.0.mlp.c_fc.bias, ...,
//    ln_f.weight); weights keep PyTorch nn.Linear's (out, in) layout here and
//    gpt_io.h transposes to and from HF's Conv1D (in, out).
//
// Initialization (GPT-2 / nanoGPT / llm.c): every Linear weight and both
// embeddings ~ N(0, 0.02²), the two residual projections (attn.c_proj,
// mlp.c_proj) ~ N(0, (0.02/√(2·n_layer))²), biases 0, LayerNorm weight 1 and
// bias 0; drawn with Philox from (seed, running counter offset), so CPU and
// GPU models start identical.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "nn/activation.h"
#include "nn/embedding.h"
#include "nn/layernorm.h"
#include "nn/module.h"
#include "nn/rng.h"
#include "nn/transformer.h"

namespace kiln::nn {

struct GptOptions {
  int64_t vocab_size = 50257;
  int64_t block_size = 1024;  ///< context length (positions in wpe)
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  float dropout = 0.0f;  ///< after the embedding, attn.c_proj and mlp.c_proj
  bool bias = true;      ///< biases in every Linear and LayerNorm
  uint64_t seed = 0;     ///< initialization stream
};

/// V rounded up to a multiple of `multiple` (GPT-2: 50257 -> 50304).
inline int64_t padded_vocab_size(int64_t V, int64_t multiple = 128) { return (V + multiple - 1) / multiple * multiple; }

/// GPT-2's MLP: the shared transformer MLP with hidden width 4C.
using GptMlp = TransformerMlp;

/// One GPT-2 block: the shared pre-LN TransformerBlock, causal, with an MLP of
/// 4·n_embd and GPT-2's options (children ln_1, attn, ln_2, mlp).
class GptBlock : public TransformerBlock {
 public:
  GptBlock(const GptOptions& o, std::shared_ptr<RngStream> rng);
  std::string describe() const override { return "GptBlock"; }
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  float temperature = 1.0f;  ///< 0 = greedy (argmax)
  int64_t top_k = 0;         ///< sample among the k most likely tokens (0 = all)
  uint64_t seed = 0;         ///< Philox seed of the draws
  int32_t stop_token = -1;   ///< stop after producing this id (e.g. <|endoftext|>); -1 = never
  int64_t min_new_tokens = 0;  ///< the stop token cannot be drawn before this many tokens
  bool use_cache = true;     ///< KV cache (O(T) per token) or full recompute (O(T²), for tests)
};

class Gpt : public Module {
 public:
  Gpt(const GptOptions& o, std::shared_ptr<RngStream> rng);

  /// tokens (B, T) int32 on the model's device, T <= block_size ->
  /// logits (B, T, Vp) in the compute dtype.
  Tensor forward(const Tensor& tokens) override;
  /// dlogits (B, T, Vp) -> undefined (tokens have no gradient).
  Tensor backward(const Tensor& dlogits) override;
  std::string describe() const override;

  /// Packed sequences (SFT): per-token segment ids and positions, int32
  /// (B, T) on the model's device, for the following forward passes and
  /// their backward. A token attends only to earlier tokens of its own
  /// segment (ids non-decreasing along a row, see kernels/attention_mask.h)
  /// and takes its position embedding from `positions` (restarting at 0 in
  /// each example). Undefined tensors clear them: one sequence per row,
  /// positions 0..T-1. generate() and next_token_logits() clear them.
  void set_packing(const Tensor& segments, const Tensor& positions);

  /// Continues `prompt` (ids in [0, V)) by up to max_new_tokens tokens and
  /// returns only the new ones. Runs in eval mode (dropout off) and restores
  /// the previous mode. With the cache, once the context fills block_size the
  /// cache restarts from the newest block_size/2 tokens (amortized O(T) per
  /// token); without it each step recomputes the newest block_size tokens, so
  /// the two agree while prompt + output fit in block_size.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const GenerateOptions& o);
  /// Logits (V values, host) of the token after `context` (the newest
  /// block_size tokens of it), by a full forward.
  std::vector<float> next_token_logits(const std::vector<int32_t>& context);

  const GptOptions& options() const { return o_; }
  int64_t vocab_size() const { return o_.vocab_size; }
  int64_t padded_vocab() const { return Vp_; }
  /// Parameters that multiply activations: all but wpe, wte counted at its
  /// V real rows (the LM head's matmul) — PaLM's N.
  int64_t flops_parameters();
  /// Training FLOPs per token, forward + backward, at context length T
  /// (PaLM, Chowdhery et al. 2022, appendix B):
  ///   6·N + 12·L·H·Q·T
  /// 6·N: every parameter does a multiply-add (2 FLOPs) per token forward and
  /// two backward (input and weight gradients); 12·L·H·Q·T: per layer the
  /// attention scores QKᵀ and the weighted values PV, 2·2·H·Q·T forward and
  /// twice that backward (counted without the causal mask's halving).
  double train_flops_per_token(int64_t T);

  Embedding& embedding() { return embed_; }
  GptBlock& block(int64_t i) { return *blocks_[static_cast<size_t>(i)]; }
  LayerNorm& ln_f() { return ln_f_; }

 private:
  // The forward through the final LayerNorm and the head. `cached`: attention
  // through the KV caches at positions pos0..; `last_only`: logits of the
  // last position only (batch 1), (1, 1, Vp).
  Tensor run(const Tensor& tokens, int64_t pos0, bool cached, bool last_only);
  Tensor lm_head_forward(const Tensor& y);  // (rows, C) -> (rows, Vp)
  std::vector<float> last_logits(const Tensor& logits);  // the last row's V values on the host
  void init_weights();

  GptOptions o_;
  int64_t Vp_;
  std::shared_ptr<RngStream> rng_;
  Embedding embed_;
  Dropout drop_;
  std::vector<std::unique_ptr<GptBlock>> blocks_;
  LayerNorm ln_f_;
  Tensor y_;  // (rows, C) input of the LM head, saved for backward
  Shape logits_shape_;
};

}  // namespace kiln::nn
