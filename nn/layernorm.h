// LayerNorm over the last dimension (kernels/layernorm.h), with the fused
// residual-add form a pre-LN transformer uses between blocks.
//
//   y = (x - mean) · rstd · weight + bias,  statistics in fp32 (double on the
//   CPU references) whatever the activation dtype; weight and bias stay fp32
//   master values even with bf16 activations (they are tiny).
//
// forward_residual(x, r) computes sum = x + r (the next residual stream) and
// y = LayerNorm(sum) in one pass. Its backward takes, besides dy, the
// gradient that reaches `sum` along the residual stream from above, and
// returns the full dL/dsum (= dL/dx = dL/dr), so the add costs no kernel in
// either direction.
#pragma once

#include <utility>

#include "nn/module.h"

namespace kiln::nn {

class LayerNorm : public Module {
 public:
  /// weight = 1, bias = 0 (bias only when `bias`). Parameter names "weight",
  /// "bias"; neither is weight-decayed.
  explicit LayerNorm(int64_t C, bool bias = true, float eps = 1e-5f);

  /// x (..., C) -> y (..., C)
  Tensor forward(const Tensor& x) override;
  /// (x, residual) (..., C) -> (sum = x + residual, y = LayerNorm(sum)).
  std::pair<Tensor, Tensor> forward_residual(const Tensor& x, const Tensor& residual);
  /// dy (..., C) -> dL/dinput; see the two-argument form.
  Tensor backward(const Tensor& dy) override { return backward(dy, Tensor()); }
  /// dL/d(input) = LayerNorm'(dy) + dresidual, where input is x for forward
  /// and sum for forward_residual; dresidual (..., C) may be undefined.
  /// Accumulates dweight, dbias.
  Tensor backward(const Tensor& dy, const Tensor& dresidual);
  std::string describe() const override;

  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  int64_t channels() const { return C_; }

 private:
  // The bias pointer the kernels read (a zero buffer when there is no bias
  // parameter) and where its gradient goes.
  const Tensor& bias_value();
  Tensor& bias_grad();
  Tensor& weight_grad();  // the weight's gradient, or scratch when it is frozen
  Tensor normalize(const Tensor& x, const Tensor* residual, Tensor* sum_out);

  int64_t C_;
  float eps_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Tensor zero_bias_, scratch_dbias_;  // bias-less or frozen: stand-ins on the parameters' device and dtype
  Tensor scratch_dweight_;            // frozen weight: its gradient goes here
  Tensor x_;                          // saved input (rows, C): x, or the residual sum
  Tensor mean_, rstd_;                // saved statistics (rows)
};

}  // namespace kiln::nn
