// Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16
// Words"), as timm's VisionTransformer with pre-LN blocks:
//
//   patches (B, N, p·p·C) = patch(images (B, H, W, C))        kernels/patch.h
//   e (B, N, dim)         = patch_embed.proj(patches)          Linear = conv p×p, stride p
//   r (B, P + N, dim)     = dropout([cls_token; e] + pos_embed)   kernels/cls_token.h
//   for each block:  r = r + attn(ln_1(r));  r = r + mlp(ln_2(r))   bidirectional
//   z (B, dim)            = norm(pool(r))                      cls: token 0; mean: patch tokens
//   logits (B, classes)   = head(z)
//
// P = 1 with `cls` pooling (a learned class token is prepended and read out)
// and 0 with `mean` pooling (no class token; the patch tokens are averaged,
// as timm's class_token=False, global_pool='avg').
//
// The final LayerNorm runs after pooling: LayerNorm is per token, so for cls
// pooling norm(pool(r)) = pool(norm(r)) (timm's `norm`, on one row per image
// instead of P + N), and for mean pooling it is timm's `fc_norm`.
//
// Patch embedding = the patch kernel + a Linear rather than a strided
// convolution through runtime/conv.h: with stride = kernel the convolution
// *is* this GEMM, the permutation is exact and cheap, the Linear already has
// the fused bias epilogue and the bf16 path, and nothing depends on cuDNN
// engine choice for a shape it handles as a generic conv. Its weight is
// (dim, p·p·C) in KRSC order: PyTorch's Conv2d weight (dim, C, p, p) permuted
// by (0, 2, 3, 1) and flattened.
//
// Parameter names are timm's where timm has the parameter (patch_embed.proj,
// cls_token, pos_embed, norm, head) and the shared block's (blocks.N.ln_1,
// blocks.N.attn.c_attn, ...; see nn/transformer.h for the timm mapping).
//
// Initialization (timm's init_weights_vit_timm): every Linear weight in the
// blocks and the head ~ N(0, 0.02²) truncated at ±2σ, biases 0; pos_embed the
// same truncated normal; cls_token ~ N(0, (1e-6)²); the patch projection
// keeps PyTorch's Conv2d default U(±1/√(p·p·C)) (timm leaves it too);
// LayerNorms 1 and 0. Drawn with Philox from (seed, running offset), on the
// host, so CPU and GPU models start identical.
#pragma once

#include <memory>
#include <vector>

#include "nn/activation.h"
#include "nn/layernorm.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/rng.h"
#include "nn/transformer.h"

namespace kiln::nn {

/// x (B, H, W, C) images (or (B, H·W·C)) -> (B, N, dim): patch kernel + Linear "proj".
class PatchEmbedding : public Module {
 public:
  /// p must divide H and W (InputError otherwise). proj: Linear(p·p·C -> dim)
  /// at Linear's default init from (seed, offset).
  PatchEmbedding(int64_t H, int64_t W, int64_t C, int64_t p, int64_t dim, bool bias, uint64_t seed, uint64_t offset);
  Tensor forward(const Tensor& x) override;
  /// dy (B, N, dim) -> dx (B, H, W, C), or undefined after set_needs_input_grad(false).
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;
  /// Images need no gradient: skipping it saves the proj's dx GEMM and the permutation.
  void set_needs_input_grad(bool v);
  Linear& proj() { return proj_; }
  int64_t num_patches() const { return (H_ / p_) * (W_ / p_); }

 private:
  int64_t H_, W_, C_, p_, dim_;
  bool needs_input_grad_ = true;
  Linear proj_;
  int64_t B_ = -1;  // batch of the last forward
};

/// (B, N, C) -> (B, P + N, C): the learned class token prepended (P = 1, when
/// `class_token`) and the learned position embedding added, in one kernel.
/// Parameters "cls_token" (1, 1, C) and "pos_embed" (1, P + N, C), timm's
/// shapes; neither is weight-decayed. Both start at zero here (the ViT draws
/// its own init).
class ClassTokenEmbedding : public Module {
 public:
  ClassTokenEmbedding(int64_t N, int64_t C, bool class_token);
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;
  Parameter* cls_token() { return cls_; }
  Parameter& pos_embed() { return *pos_; }
  int64_t prefix() const { return cls_ ? 1 : 0; }

 private:
  int64_t N_, C_;
  Parameter* cls_ = nullptr;
  Parameter* pos_ = nullptr;
  int64_t B_ = -1;
};

enum class VitPool { cls, mean };

/// (B, T, C) -> (B, C): the mean of tokens [first, first + count); cls
/// pooling is (0, 1).
class TokenPool : public Module {
 public:
  TokenPool(int64_t first, int64_t count);
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;

 private:
  int64_t first_, count_;
  Shape x_shape_;
  bool have_shape_ = false;
};

struct VitOptions {
  int64_t image_h = 28, image_w = 28, channels = 1;
  int64_t patch = 4;
  int64_t dim = 64;
  int64_t depth = 6;
  int64_t heads = 4;
  int64_t mlp_hidden = 256;  ///< MLP inner width (mlp_ratio · dim)
  int64_t classes = 10;
  VitPool pool = VitPool::cls;
  float dropout = 0.0f;  ///< after the token embedding, attn.c_proj and mlp.c_proj
  bool bias = true;      ///< biases in every block Linear and LayerNorm (the head and patch proj always have one)
  uint64_t seed = 0;
};

/// Throws InputError (naming the option as `prefix` + name, e.g.
/// "model.vit.heads") when the options cannot make a ViT: patch not dividing
/// the image, heads not dividing dim, non-positive sizes, and with `cuda` a
/// head dimension dim / heads the CUDA attention kernel does not take (see
/// vit_cuda_head_dim_ok). Cheap; call it before allocating anything.
void check_vit_options(const VitOptions& o, bool cuda, const std::string& prefix = "");

/// Whether the fused CUDA attention (kernels/attention.h) takes head dimension D.
bool vit_cuda_head_dim_ok(int64_t D);

class Vit : public Module {
 public:
  Vit(const VitOptions& o, std::shared_ptr<RngStream> rng);

  /// images (B, H, W, C) or (B, H·W·C) in the compute dtype -> logits (B, classes).
  Tensor forward(const Tensor& images) override;
  /// dlogits (B, classes) -> undefined (images get no gradient).
  Tensor backward(const Tensor& dlogits) override;
  std::string describe() const override;

  const VitOptions& options() const { return o_; }
  int64_t num_patches() const { return patch_embed_.num_patches(); }
  int64_t num_tokens() const { return patch_embed_.num_patches() + tokens_.prefix(); }
  /// Training FLOPs per image, forward + backward: 6 per multiply-add-able
  /// weight use (2 forward, 4 backward) over the tokens that use it, plus
  /// attention's 12·L·T²·dim (QKᵀ and PV, 4·T²·dim forward per layer, twice
  /// that backward), minus the patch projection's input gradient (not
  /// computed).
  double train_flops_per_example() const;

  PatchEmbedding& patch_embed() { return patch_embed_; }
  ClassTokenEmbedding& tokens() { return tokens_; }
  TransformerBlock& block(int64_t i) { return *blocks_[static_cast<size_t>(i)]; }
  LayerNorm& norm() { return norm_; }
  Linear& head() { return head_; }

 protected:
  /// Moving to a GPU checks the head dimension (check_vit_options with cuda).
  void on_device_change() override;

 private:
  void init_weights();

  VitOptions o_;
  PatchEmbedding patch_embed_;
  ClassTokenEmbedding tokens_;
  Dropout pos_drop_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;
  LayerNorm norm_;
  TokenPool pool_;
  Linear head_;
};

}  // namespace kiln::nn
