#include "nn/layernorm.h"

#include <sstream>

#include "kernels/layernorm.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

LayerNorm::LayerNorm(int64_t C, bool bias, float eps) : C_(C), eps_(eps) {
  KILN_CHECK(C > 0, "LayerNorm(" << C << "): width must be positive");
  weight_ = &register_parameter("weight", Tensor::full({C}, 1.0, DType::f32, Device::cpu()), /*decay=*/false);
  if (bias) bias_ = &register_parameter("bias", Tensor::zeros({C}, DType::f32, Device::cpu()), /*decay=*/false);
}

std::string LayerNorm::describe() const {
  std::ostringstream os;
  os << "LayerNorm(" << C_ << (bias_ ? "" : ", no bias") << ")";
  return os.str();
}

const Tensor& LayerNorm::bias_value() {
  if (bias_) return bias_->value;
  const Tensor& w = weight_->value;
  if (!zero_bias_.defined() || zero_bias_.device() != w.device() || zero_bias_.dtype() != w.dtype()) {
    zero_bias_ = Tensor::zeros({C_}, w.dtype(), w.device(), "layernorm.zero_bias");
    scratch_dbias_ = Tensor::zeros({C_}, w.dtype(), w.device(), "layernorm.unused_dbias");
  }
  return zero_bias_;
}

Tensor& LayerNorm::bias_grad() {
  if (bias_ && bias_->trainable) return bias_->grad;
  bias_value();
  if (!scratch_dbias_.defined() || scratch_dbias_.device() != weight_->value.device() ||
      scratch_dbias_.dtype() != weight_->value.dtype())
    scratch_dbias_ = Tensor::zeros({C_}, weight_->value.dtype(), weight_->value.device(), "layernorm.unused_dbias");
  return scratch_dbias_;
}

Tensor& LayerNorm::weight_grad() {
  if (weight_->trainable) return weight_->grad;
  const Tensor& w = weight_->value;
  // A frozen weight's gradient is computed (the kernel's reduction produces
  // it beside dx) and discarded: C floats, not worth a second kernel variant.
  if (!scratch_dweight_.defined() || scratch_dweight_.device() != w.device() || scratch_dweight_.dtype() != w.dtype())
    scratch_dweight_ = Tensor::zeros({C_}, w.dtype(), w.device(), "layernorm.unused_dweight");
  return scratch_dweight_;
}

Tensor LayerNorm::normalize(const Tensor& x, const Tensor* residual, Tensor* sum_out) {
  KILN_CHECK(x.ndim() >= 1 && x.size(-1) == C_,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (..., " << C_
                        << ")");
  if (residual) check_same(x, *residual, "LayerNorm.forward_residual");
  const int64_t rows = x.numel() / C_;
  // Statistics are f64 only in the f64 CPU checks; fp32 everywhere else.
  const DType stat = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  mean_ = Tensor::empty({rows}, stat, x.device(), "layernorm.mean");
  rstd_ = Tensor::empty({rows}, stat, x.device(), "layernorm.rstd");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "layernorm.out");
  Tensor sum = residual ? Tensor::empty(x.shape(), x.dtype(), x.device(), "residual") : Tensor();
  const Tensor& w = weight_->value;
  const Tensor& b = bias_value();
  const float eps = eps_;
  dispatch(
      x,
      [&](auto tag) {
        using T = decltype(tag);
        if (residual)
          residual_layernorm_forward_cpu<T>(sum.data<T>(), y.data<T>(), mean_.data<T>(), rstd_.data<T>(), x.data<T>(),
                                            residual->data<T>(), w.data<T>(), b.data<T>(), rows, C_, eps);
        else
          layernorm_forward_cpu<T>(y.data<T>(), mean_.data<T>(), rstd_.data<T>(), x.data<T>(), w.data<T>(),
                                   b.data<T>(), rows, C_, eps);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        if (residual)
          residual_layernorm_forward(sum.data<T>(), y.data<T>(), mean_.data<float>(), rstd_.data<float>(),
                                     x.data<T>(), residual->data<T>(), w.data<float>(), b.data<float>(), rows, C_,
                                     eps, s);
        else
          layernorm_forward(y.data<T>(), mean_.data<float>(), rstd_.data<float>(), x.data<T>(), w.data<float>(),
                            b.data<float>(), rows, C_, eps, s);
      });
  x_ = (residual ? sum : x).reshape({rows, C_});
  if (sum_out) *sum_out = sum;
  return y;
}

Tensor LayerNorm::forward(const Tensor& x) { return normalize(x, nullptr, nullptr); }

std::pair<Tensor, Tensor> LayerNorm::forward_residual(const Tensor& x, const Tensor& residual) {
  Tensor sum;
  Tensor y = normalize(x, &residual, &sum);
  return {sum, y};
}

Tensor LayerNorm::backward(const Tensor& dy, const Tensor& dresidual) {
  KILN_CHECK(x_.defined(), describe() << ": backward before forward");
  check_same(dy, x_, "LayerNorm.backward");
  if (dresidual.defined()) check_same(dresidual, x_, "LayerNorm.backward (residual gradient)");
  const int64_t rows = x_.size(0);
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "layernorm.dx");
  Tensor& dw = weight_grad();
  Tensor& db = bias_grad();
  const Tensor& w = weight_->value;
  dispatch(
      dy,
      [&](auto tag) {
        using T = decltype(tag);
        layernorm_backward_cpu<T>(dx.data<T>(), dw.data<T>(), db.data<T>(), dy.data<T>(), x_.data<T>(), w.data<T>(),
                                  mean_.data<T>(), rstd_.data<T>(),
                                  dresidual.defined() ? dresidual.data<T>() : nullptr, rows, C_);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        Tensor scratch = Tensor::empty({layernorm_backward_scratch_floats(rows, C_)}, DType::f32, dy.device(),
                                       "layernorm.scratch");
        layernorm_backward(dx.data<T>(), dw.data<float>(), db.data<float>(), scratch.data<float>(), dy.data<T>(),
                           x_.data<T>(), w.data<float>(), mean_.data<float>(), rstd_.data<float>(),
                           dresidual.defined() ? dresidual.data<T>() : nullptr, rows, C_, s);
      });
  grads_ready();  // dweight and dbias are final for this backward
  return dx;
}

}  // namespace kiln::nn
