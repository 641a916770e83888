#include "nn/transformer.h"

#include <sstream>

#include "kernels/activation.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

Tensor residual_sum(const Tensor& a, const Tensor& b) {
  check_same(a, b, "residual add");
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device(), "residual");
  const int64_t n = a.numel();
  dispatch(
      a, [&](auto tag) { using F = decltype(tag); residual_add_cpu<F>(out.data<F>(), a.data<F>(), b.data<F>(), n); },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        residual_add(out.data<F>(), a.data<F>(), b.data<F>(), n, s);
      });
  return out;
}

// --- TransformerMlp ------------------------------------------------------------------

TransformerMlp::TransformerMlp(int64_t C, int64_t hidden, bool bias, float dropout, std::shared_ptr<RngStream> rng,
                               uint64_t seed)
    : c_fc_(C, hidden, bias, seed, 0),
      // c_proj's default init starts where c_fc's draws end (hidden·C weights + hidden biases).
      c_proj_(hidden, C, bias, seed, static_cast<uint64_t>(hidden * C + hidden)),
      drop_(dropout, std::move(rng)) {
  register_module("c_fc", &c_fc_);
  register_module("act", &act_);
  register_module("c_proj", &c_proj_);
  register_module("dropout", &drop_);
}

std::string TransformerMlp::describe() const {
  std::ostringstream os;
  os << "Mlp(" << c_fc_.in_features() << " -> " << c_fc_.out_features() << " -> " << c_proj_.out_features() << ")";
  return os.str();
}

// (B, T, C) -> (B, T, hidden) -> GELU -> (B, T, C)
Tensor TransformerMlp::forward(const Tensor& x) {
  return drop_.forward(c_proj_.forward(act_.forward(c_fc_.forward(x))));
}

Tensor TransformerMlp::backward(const Tensor& dy) {
  return c_fc_.backward(act_.backward(c_proj_.backward(drop_.backward(dy))));
}

// --- TransformerBlock ----------------------------------------------------------------

TransformerBlock::TransformerBlock(int64_t width, int64_t heads, int64_t mlp_hidden, bool causal, float dropout,
                                   bool bias, std::shared_ptr<RngStream> rng, uint64_t seed)
    : width_(width),
      mlp_hidden_(mlp_hidden),
      ln_1_(width, bias),
      attn_(width, heads, bias, dropout, rng, seed, causal),
      ln_2_(width, bias),
      mlp_(width, mlp_hidden, bias, dropout, rng, seed) {
  register_module("ln_1", &ln_1_);
  register_module("attn", &attn_);
  register_module("ln_2", &ln_2_);
  register_module("mlp", &mlp_);
}

std::string TransformerBlock::describe() const {
  std::ostringstream os;
  os << "TransformerBlock(width " << width_ << ", " << attn_.n_head() << " heads, mlp " << mlp_hidden_
     << (attn_.causal() ? ", causal" : ", bidirectional") << ")";
  return os.str();
}

std::pair<Tensor, Tensor> TransformerBlock::forward_branches(const Tensor& r_in, const Tensor& y1, bool cached,
                                                             int64_t pos0) {
  Tensor a = cached ? attn_.forward_cached(y1, pos0) : attn_.forward(y1);  // (B, T, C)
  auto [r_mid, y2] = ln_2_.forward_residual(r_in, a);                     // r_mid = r_in + a, y2 = ln_2(r_mid)
  Tensor m = mlp_.forward(y2);                                            // (B, T, C)
  return {r_mid, m};
}

Tensor TransformerBlock::forward(const Tensor& r_in) {
  Tensor y1 = ln_1_.forward(r_in);
  auto [r_mid, m] = forward_branches(r_in, y1);
  return residual_sum(r_mid, m);
}

Tensor TransformerBlock::backward(const Tensor& dr_out) {
  // r_out = r_mid + m: both get dr_out. r_mid = r_in + a: both get dr_mid.
  Tensor dy2 = mlp_.backward(dr_out);
  Tensor dr_mid = ln_2_.backward(dy2, dr_out);  // through ln_2, plus the residual path
  Tensor dy1 = attn_.backward(dr_mid);
  return ln_1_.backward(dy1, dr_mid);
}

}  // namespace kiln::nn
