#include "nn/activation.h"

#include <sstream>

#include "kernels/activation.h"
#include "kernels/dropout.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

Tensor ReLU::forward(const Tensor& x) {
  x_ = x;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "relu.out");
  const int64_t n = x.numel();
  dispatch(
      x, [&](auto tag) { using T = decltype(tag); relu_forward_cpu<T>(y.data<T>(), x.data<T>(), n); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag); relu_forward(y.data<T>(), x.data<T>(), n, s); });
  return y;
}

Tensor ReLU::backward(const Tensor& dy) {
  check_same(dy, x_, "ReLU.backward");
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "relu.dx");
  const int64_t n = dy.numel();
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag);
        relu_backward_cpu<T>(dx.data<T>(), x_.data<T>(), dy.data<T>(), n); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        relu_backward(dx.data<T>(), x_.data<T>(), dy.data<T>(), n, s); });
  return dx;
}

Tensor GELU::forward(const Tensor& x) {
  x_ = x;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "gelu.out");
  const int64_t n = x.numel();
  dispatch(
      x, [&](auto tag) { using T = decltype(tag); gelu_forward_cpu<T>(y.data<T>(), x.data<T>(), n); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag); gelu_forward(y.data<T>(), x.data<T>(), n, s); });
  return y;
}

Tensor GELU::backward(const Tensor& dy) {
  check_same(dy, x_, "GELU.backward");
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "gelu.dx");
  const int64_t n = dy.numel();
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag);
        gelu_backward_cpu<T>(dx.data<T>(), x_.data<T>(), dy.data<T>(), n); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        gelu_backward(dx.data<T>(), x_.data<T>(), dy.data<T>(), n, s); });
  return dx;
}

Dropout::Dropout(float p, std::shared_ptr<RngStream> rng) : p_(p), rng_(std::move(rng)) {
  KILN_CHECK(p >= 0.0f && p < 1.0f, "Dropout: p = " << p << " must be in [0, 1)");
  KILN_CHECK(rng_ != nullptr, "Dropout: needs the model's RngStream");
}

std::string Dropout::describe() const {
  std::ostringstream os;
  os << "Dropout(p=" << p_ << ")";
  return os.str();
}

Tensor Dropout::forward(const Tensor& x) {
  active_ = training() && p_ > 0.0f;
  if (!active_) return x;
  const int64_t n = x.numel();
  offset_ = rng_->take(dropout_counters(n));
  const uint64_t seed = rng_->seed, off = offset_;
  const float p = p_;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "dropout.out");
  dispatch(
      x, [&](auto tag) { using T = decltype(tag);
        dropout_forward_cpu<T>(y.data<T>(), x.data<T>(), n, p, seed, off); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        dropout_forward(y.data<T>(), x.data<T>(), n, p, seed, off, s); });
  return y;
}

Tensor Dropout::backward(const Tensor& dy) {
  if (!active_) return dy;
  const int64_t n = dy.numel();
  const uint64_t seed = rng_->seed, off = offset_;
  const float p = p_;
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "dropout.dx");
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag);
        dropout_backward_cpu<T>(dx.data<T>(), dy.data<T>(), n, p, seed, off); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        dropout_backward(dx.data<T>(), dy.data<T>(), n, p, seed, off, s); });
  return dx;
}

}  // namespace kiln::nn
