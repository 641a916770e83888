#include "nn/vit.h"

#include <cmath>
#include <sstream>
#include <tuple>

#include "kernels/cls_token.h"
#include "kernels/patch.h"
#include "kernels/token_pool.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

// Where the ViT's own init draws start in its Philox stream: past the patch
// projection's default-init draws (which start at 0 and use one counter per
// four values: < 2^32 counters for any projection below 2^34 weights).
constexpr uint64_t kInitOffset = uint64_t{1} << 32;

// p ~ N(0, std²) truncated at ±2σ, by rejection: standard normals are drawn
// for every value still open, values with |z| > 2 are drawn again from the
// next counters (4.6% per round, so a handful of rounds). Host-side and
// sequential, hence the same numbers whatever device the model later moves
// to. Returns the next free counter offset.
uint64_t trunc_normal(Parameter& p, uint64_t seed, uint64_t offset, float std) {
  const int64_t n = p.value.numel();
  std::vector<float> out(static_cast<size_t>(n));
  std::vector<int64_t> open(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) open[static_cast<size_t>(i)] = i;
  while (!open.empty()) {
    const int64_t m = static_cast<int64_t>(open.size());
    Tensor z = Tensor::empty({m}, DType::f32, Device::cpu());
    offset = z.normal_(seed, offset, 0.0f, 1.0f);
    const float* zv = z.data<float>();
    std::vector<int64_t> again;
    for (int64_t k = 0; k < m; ++k) {
      if (std::fabs(zv[k]) <= 2.0f)
        out[static_cast<size_t>(open[static_cast<size_t>(k)])] = std * zv[k];
      else
        again.push_back(open[static_cast<size_t>(k)]);
    }
    open.swap(again);
  }
  p.value.copy_from(Tensor::from_vector(out, p.value.shape(), p.value.dtype(), p.value.device()));
  return offset;
}

void zero(Parameter* p) {
  if (p) p->value.zero_();
}

}  // namespace

// --- PatchEmbedding ------------------------------------------------------------------

PatchEmbedding::PatchEmbedding(int64_t H, int64_t W, int64_t C, int64_t p, int64_t dim, bool bias, uint64_t seed,
                               uint64_t offset)
    : H_(H), W_(W), C_(C), p_(p), dim_(dim), proj_(p * p * C, dim, bias, seed, offset) {
  check_patch_shape(1, H, W, C, p, "PatchEmbedding");
  KILN_CHECK(H > 0 && W > 0 && C > 0, "PatchEmbedding: empty images " << H << "x" << W << "x" << C);
  register_module("proj", &proj_);
}

std::string PatchEmbedding::describe() const {
  std::ostringstream os;
  os << "PatchEmbedding(" << H_ << "x" << W_ << "x" << C_ << " in " << p_ << "x" << p_ << " patches: "
     << num_patches() << " x " << p_ * p_ * C_ << " -> " << dim_ << ")";
  return os.str();
}

void PatchEmbedding::set_needs_input_grad(bool v) {
  needs_input_grad_ = v;
  proj_.set_needs_input_grad(v);
}

Tensor PatchEmbedding::forward(const Tensor& x) {
  const int64_t per_image = H_ * W_ * C_;
  KILN_CHECK((x.ndim() == 2 && x.size(1) == per_image) ||
                 (x.ndim() == 4 && x.size(1) == H_ && x.size(2) == W_ && x.size(3) == C_),
             describe() << ": images '" << x.name() << "' have shape " << x.shape().str() << ", expected (B, " << H_
                        << ", " << W_ << ", " << C_ << ") or (B, " << per_image << ")");
  const int64_t B = x.size(0), N = num_patches(), K = p_ * p_ * C_;
  Tensor patches = Tensor::empty({B, N, K}, x.dtype(), x.device(), "patches");  // (B, N, p·p·C)
  dispatch(
      x,
      [&](auto tag) {
        using F = decltype(tag);
        patch_forward_cpu<F>(patches.data<F>(), x.data<F>(), B, H_, W_, C_, p_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        patch_forward(patches.data<F>(), x.data<F>(), B, H_, W_, C_, p_, s);
      });
  B_ = B;
  return proj_.forward(patches);  // (B, N, dim)
}

Tensor PatchEmbedding::backward(const Tensor& dy) {
  KILN_CHECK(B_ >= 0, describe() << ": backward before forward");
  Tensor dpatches = proj_.backward(dy);  // (B, N, p·p·C), or undefined
  if (!needs_input_grad_) return Tensor();
  Tensor dx = Tensor::empty({B_, H_, W_, C_}, dpatches.dtype(), dpatches.device(), "patch_embed.dx");
  dispatch(
      dpatches,
      [&](auto tag) {
        using F = decltype(tag);
        patch_backward_cpu<F>(dx.data<F>(), dpatches.data<F>(), B_, H_, W_, C_, p_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        patch_backward(dx.data<F>(), dpatches.data<F>(), B_, H_, W_, C_, p_, s);
      });
  return dx;
}

// --- ClassTokenEmbedding ---------------------------------------------------------------

ClassTokenEmbedding::ClassTokenEmbedding(int64_t N, int64_t C, bool class_token) : N_(N), C_(C) {
  KILN_CHECK(N >= 1 && C >= 1, "ClassTokenEmbedding: " << N << " tokens of width " << C);
  if (class_token)
    cls_ = &register_parameter("cls_token", Tensor::zeros({1, 1, C}, DType::f32, Device::cpu()), /*decay=*/false);
  pos_ = &register_parameter("pos_embed", Tensor::zeros({1, prefix() + N, C}, DType::f32, Device::cpu()),
                             /*decay=*/false);
}

std::string ClassTokenEmbedding::describe() const {
  std::ostringstream os;
  os << "ClassTokenEmbedding(" << (cls_ ? "class token + " : "") << N_ << " tokens of " << C_ << ", learned positions)";
  return os.str();
}

Tensor ClassTokenEmbedding::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 3 && x.size(1) == N_ && x.size(2) == C_,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (B, " << N_
                        << ", " << C_ << ")");
  const int64_t B = x.size(0);
  const Tensor* cls = cls_ ? &cls_->in(x.dtype()) : nullptr;
  const Tensor& pos = pos_->in(x.dtype());
  Tensor out = Tensor::empty({B, prefix() + N_, C_}, x.dtype(), x.device(), "tokens");  // (B, P + N, C)
  dispatch(
      x,
      [&](auto tag) {
        using F = decltype(tag);
        cls_token_forward_cpu<F>(out.data<F>(), x.data<F>(), cls ? cls->data<F>() : nullptr, pos.data<F>(), B, N_, C_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        cls_token_forward(out.data<F>(), x.data<F>(), cls ? cls->data<F>() : nullptr, pos.data<F>(), B, N_, C_, s);
      });
  B_ = B;
  return out;
}

Tensor ClassTokenEmbedding::backward(const Tensor& dy) {
  KILN_CHECK(B_ >= 0, describe() << ": backward before forward");
  KILN_CHECK(dy.numel() == B_ * (prefix() + N_) * C_, describe() << ": gradient '" << dy.name() << "' has shape "
                                                                 << dy.shape().str() << ", expected (" << B_ << ", "
                                                                 << prefix() + N_ << ", " << C_ << ")");
  Tensor dx = Tensor::empty({B_, N_, C_}, dy.dtype(), dy.device(), "tokens.dx");  // (B, N, C)
  Parameter* dcls = cls_ && cls_->trainable ? cls_ : nullptr;
  Parameter* dpos = pos_->trainable ? pos_ : nullptr;
  dispatch(
      dy,
      [&](auto tag) {
        using F = decltype(tag);
        cls_token_backward_cpu<F>(dx.data<F>(), dcls ? dcls->grad.data<F>() : nullptr,
                                  dpos ? dpos->grad.data<F>() : nullptr, dy.data<F>(), B_, N_, C_, cls_ != nullptr);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        cls_token_backward(dx.data<F>(), dcls ? dcls->grad.data<float>() : nullptr,
                           dpos ? dpos->grad.data<float>() : nullptr, dy.data<F>(), B_, N_, C_, cls_ != nullptr, s);
      });
  grads_ready();
  return dx;
}

// --- TokenPool -------------------------------------------------------------------------

TokenPool::TokenPool(int64_t first, int64_t count) : first_(first), count_(count) {
  KILN_CHECK(first >= 0 && count >= 1, "TokenPool: window of " << count << " tokens at " << first);
}

std::string TokenPool::describe() const {
  std::ostringstream os;
  if (count_ == 1)
    os << "TokenPool(token " << first_ << ")";
  else
    os << "TokenPool(mean of tokens " << first_ << ".." << first_ + count_ - 1 << ")";
  return os.str();
}

Tensor TokenPool::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 3 && first_ + count_ <= x.size(1),
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (B, >= "
                        << first_ + count_ << ", C)");
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  Tensor out = Tensor::empty({B, C}, x.dtype(), x.device(), "pooled");  // (B, C)
  dispatch(
      x,
      [&](auto tag) {
        using F = decltype(tag);
        token_pool_forward_cpu<F>(out.data<F>(), x.data<F>(), B, T, C, first_, count_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        token_pool_forward(out.data<F>(), x.data<F>(), B, T, C, first_, count_, s);
      });
  x_shape_ = x.shape();
  have_shape_ = true;
  return out;
}

Tensor TokenPool::backward(const Tensor& dy) {
  KILN_CHECK(have_shape_, describe() << ": backward before forward");
  const int64_t B = x_shape_[0], T = x_shape_[1], C = x_shape_[2];
  KILN_CHECK(dy.numel() == B * C, describe() << ": gradient '" << dy.name() << "' has shape " << dy.shape().str()
                                             << ", expected (" << B << ", " << C << ")");
  Tensor dx = Tensor::empty(x_shape_, dy.dtype(), dy.device(), "pool.dx");  // (B, T, C)
  dispatch(
      dy,
      [&](auto tag) {
        using F = decltype(tag);
        token_pool_backward_cpu<F>(dx.data<F>(), dy.data<F>(), B, T, C, first_, count_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        token_pool_backward(dx.data<F>(), dy.data<F>(), B, T, C, first_, count_, s);
      });
  return dx;
}

// --- Vit -------------------------------------------------------------------------------

// The head dimensions kernels/attention.h's CUDA kernels are instantiated for.
bool vit_cuda_head_dim_ok(int64_t D) { return D == 16 || D == 32 || D == 64 || D == 128; }

void check_vit_options(const VitOptions& o, bool cuda, const std::string& prefix) {
  auto key = [&](const char* k) { return prefix + k; };
  KILN_INPUT_CHECK(o.image_h >= 1 && o.image_w >= 1 && o.channels >= 1,
                   "ViT: images of " << o.image_h << "x" << o.image_w << "x" << o.channels);
  KILN_INPUT_CHECK(o.patch >= 1 && o.image_h % o.patch == 0 && o.image_w % o.patch == 0,
                   key("patch") << ": " << o.patch << " does not divide the " << o.image_h << "x" << o.image_w
                                << " images");
  KILN_INPUT_CHECK(o.dim >= 1, key("dim") << ": " << o.dim << " must be positive");
  KILN_INPUT_CHECK(o.depth >= 1, key("depth") << ": " << o.depth << " must be positive");
  KILN_INPUT_CHECK(o.heads >= 1 && o.dim % o.heads == 0,
                   key("heads") << ": " << o.heads << " heads do not divide " << key("dim") << " " << o.dim);
  KILN_INPUT_CHECK(o.mlp_hidden >= 1, "ViT: MLP hidden width " << o.mlp_hidden << " (" << key("mlp_ratio") << " · "
                                                               << key("dim") << ") must be positive");
  KILN_INPUT_CHECK(o.classes >= 1, "ViT: " << o.classes << " classes");
  const int64_t D = o.dim / o.heads;
  KILN_INPUT_CHECK(!cuda || vit_cuda_head_dim_ok(D),
                   key("dim") << " " << o.dim << " / " << key("heads") << " " << o.heads << " gives head dimension "
                              << D << "; the CUDA attention kernel takes 16, 32, 64 or 128 (choose heads so that "
                                 "dim / heads is one of them, or train on the CPU)");
}

Vit::Vit(const VitOptions& o, std::shared_ptr<RngStream> rng)
    : o_((check_vit_options(o, false), o)),
      patch_embed_(o.image_h, o.image_w, o.channels, o.patch, o.dim, /*bias=*/true, o.seed, 0),
      tokens_(patch_embed_.num_patches(), o.dim, o.pool == VitPool::cls),
      pos_drop_(o.dropout, rng),
      norm_(o.dim, o.bias),
      pool_(0, o.pool == VitPool::cls ? 1 : patch_embed_.num_patches()),  // mean: no class token, all N
      head_(o.dim, o.classes, /*bias=*/true, o.seed, 0) {
  patch_embed_.set_needs_input_grad(false);  // images need no gradient
  register_module("patch_embed", &patch_embed_);
  register_module("", &tokens_);  // cls_token, pos_embed at the top level (timm's names)
  register_module("pos_drop", &pos_drop_);
  for (int64_t l = 0; l < o.depth; ++l) {
    blocks_.push_back(std::make_unique<TransformerBlock>(o.dim, o.heads, o.mlp_hidden, /*causal=*/false, o.dropout,
                                                         o.bias, rng, o.seed));
    register_module("blocks." + std::to_string(l), blocks_.back().get());
  }
  register_module("norm", &norm_);
  register_module("pool", &pool_);
  register_module("head", &head_);
  init_weights();
}

std::string Vit::describe() const {
  std::ostringstream os;
  os << "ViT(" << o_.image_h << "x" << o_.image_w << "x" << o_.channels << ", patch " << o_.patch << " -> "
     << num_patches() << " tokens" << (o_.pool == VitPool::cls ? " + class token" : "") << ", " << o_.depth
     << " blocks, width " << o_.dim << ", " << o_.heads << " heads, mlp " << o_.mlp_hidden << ", "
     << (o_.pool == VitPool::cls ? "cls" : "mean") << " pooling, " << o_.classes << " classes)";
  return os.str();
}

void Vit::on_device_change() {
  // For callers that build a Vit themselves (the trainer checks this from the
  // config before building anything).
  if (device().is_cuda()) check_vit_options(o_, /*cuda=*/true);
}

void Vit::init_weights() {
  const float std = 0.02f;
  uint64_t off = kInitOffset;
  off = trunc_normal(tokens_.pos_embed(), o_.seed, off, std);
  if (Parameter* c = tokens_.cls_token()) off = c->value.normal_(o_.seed, off, 0.0f, 1e-6f);
  for (auto& b : blocks_) {
    for (Linear* l : {&b->attn().c_attn(), &b->attn().c_proj(), &b->mlp().c_fc(), &b->mlp().c_proj()}) {
      off = trunc_normal(l->weight(), o_.seed, off, std);
      zero(l->bias());
    }
  }
  off = trunc_normal(head_.weight(), o_.seed, off, std);
  zero(head_.bias());
}

double Vit::train_flops_per_example() const {
  const double T = static_cast<double>(num_tokens()), N = static_cast<double>(num_patches());
  const double C = static_cast<double>(o_.dim), L = static_cast<double>(o_.depth);
  const double hidden = static_cast<double>(o_.mlp_hidden);
  const double K = static_cast<double>(o_.patch * o_.patch * o_.channels);
  const double block_weights = 4.0 * C * C + 2.0 * C * hidden;  // c_attn 3C², c_proj C², c_fc and c_proj C·hidden
  return 6.0 * T * L * block_weights + 12.0 * L * T * T * C  // blocks and attention
         + 4.0 * N * K * C                                   // patch projection: no input gradient
         + 6.0 * C * static_cast<double>(o_.classes);        // head, one row per image
}

Tensor Vit::forward(const Tensor& images) {
  Tensor e = patch_embed_.forward(images);          // (B, N, dim)
  Tensor r = pos_drop_.forward(tokens_.forward(e));  // (B, P + N, dim)
  // Pre-LN blocks with each residual add fused into the next block's ln_1.
  Tensor y = blocks_[0]->ln_1().forward(r);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    auto [r_mid, m] = blocks_[l]->forward_branches(r, y);
    if (l + 1 < blocks_.size())
      std::tie(r, y) = blocks_[l + 1]->ln_1().forward_residual(r_mid, m);  // r = r_mid + m, y = ln_1(r)
    else
      r = residual_sum(r_mid, m);
  }
  Tensor z = norm_.forward(pool_.forward(r));  // (B, dim)
  return head_.forward(z);                     // (B, classes)
}

Tensor Vit::backward(const Tensor& dlogits) {
  Tensor dr = pool_.backward(norm_.backward(head_.backward(dlogits)));  // (B, P + N, dim)
  for (size_t l = blocks_.size(); l-- > 0;) dr = blocks_[l]->backward(dr);
  patch_embed_.backward(tokens_.backward(pos_drop_.backward(dr)));
  return Tensor();
}

}  // namespace kiln::nn
