// The pre-LayerNorm transformer block shared by the GPT (causal) and the ViT
// (bidirectional):
//
//   r_mid = r_in + attn(ln_1(r_in))                       (B, T, C)
//   r_out = r_mid + mlp(ln_2(r_mid))                      (B, T, C)
//   mlp(y) = dropout(c_proj(GELU_tanh(c_fc(y))))          C -> hidden -> C
//
// Children and parameter names are Hugging Face GPT-2's: ln_1, attn.c_attn,
// attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (so "h.N." + these are the GPT's
// names, and a ViT's "blocks.N." + these map onto timm's norm1 / attn.qkv /
// attn.proj / norm2 / mlp.fc1 / mlp.fc2 one to one).
//
// Linear weights start at Linear's default (PyTorch's U(±1/√in)) from the
// Philox stream (seed, offsets 0.. per Linear); models overwrite them with
// their own init (GPT-2's N(0, 0.02²), the ViT's truncated normal).
//
// The fused form: between blocks the residual add and the next LayerNorm run
// as one kernel (LayerNorm::forward_residual), so a model runs
// forward_branches() and adds the MLP branch into the next block's ln_1 (or
// the final LayerNorm); backward() is the backward of both forms.
#pragma once

#include <memory>
#include <utility>

#include "nn/activation.h"
#include "nn/attention.h"
#include "nn/layernorm.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/rng.h"

namespace kiln::nn {

/// a + b (same shape, dtype, device): the residual add where it cannot be
/// fused into the next LayerNorm.
Tensor residual_sum(const Tensor& a, const Tensor& b);

/// The MLP of a block: c_fc (C -> hidden), GELU (tanh), c_proj (hidden -> C), dropout.
class TransformerMlp : public Module {
 public:
  TransformerMlp(int64_t C, int64_t hidden, bool bias, float dropout, std::shared_ptr<RngStream> rng, uint64_t seed);
  Tensor forward(const Tensor& x) override;  // (B, T, C) -> (B, T, C)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;
  Linear& c_fc() { return c_fc_; }
  Linear& c_proj() { return c_proj_; }

 private:
  Linear c_fc_;
  GELU act_;
  Linear c_proj_;
  Dropout drop_;
};

/// One pre-LN transformer block: children ln_1, attn, ln_2, mlp.
class TransformerBlock : public Module {
 public:
  /// width C = heads · head_dim; mlp_hidden the MLP's inner width (GPT: 4C);
  /// causal false for bidirectional attention; dropout after attn.c_proj and
  /// mlp.c_proj; bias in every Linear and LayerNorm.
  TransformerBlock(int64_t width, int64_t heads, int64_t mlp_hidden, bool causal, float dropout, bool bias,
                   std::shared_ptr<RngStream> rng, uint64_t seed);

  /// r_in (B, T, C) -> r_out = r_mid + mlp(ln_2(r_mid)), r_mid = r_in + attn(ln_1(r_in)).
  Tensor forward(const Tensor& r_in) override;
  /// dL/dr_out -> dL/dr_in. Also the backward of the fused form below.
  Tensor backward(const Tensor& dr_out) override;
  std::string describe() const override;

  /// The fused form: y1 = ln_1(r_in) was computed by the caller (fused with
  /// the previous residual add). Returns (r_mid, m): the residual after
  /// attention and the MLP branch's output, whose sum the caller fuses into
  /// the next LayerNorm. With `cached`, attention runs forward_cached at
  /// position pos0 (decoding; causal blocks only).
  std::pair<Tensor, Tensor> forward_branches(const Tensor& r_in, const Tensor& y1, bool cached = false,
                                             int64_t pos0 = 0);

  LayerNorm& ln_1() { return ln_1_; }
  LayerNorm& ln_2() { return ln_2_; }
  CausalSelfAttention& attn() { return attn_; }
  TransformerMlp& mlp() { return mlp_; }
  int64_t width() const { return width_; }
  int64_t mlp_hidden() const { return mlp_hidden_; }

 private:
  int64_t width_, mlp_hidden_;
  LayerNorm ln_1_;
  CausalSelfAttention attn_;
  LayerNorm ln_2_;
  TransformerMlp mlp_;
};

}  // namespace kiln::nn
