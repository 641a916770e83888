#include "nn/pool.h"

#include <sstream>

#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

PoolShape make_shape(const PoolOptions& o, const Tensor& x, const std::string& who) {
  KILN_CHECK(x.ndim() == 4, who << ": input '" << x.name() << "' has shape " << x.shape().str()
                                << ", expected (N, H, W, C)");
  PoolShape s;
  s.n = x.size(0); s.h = x.size(1); s.w = x.size(2); s.c = x.size(3);
  s.kh = s.kw = o.kernel;
  s.sh = s.sw = o.stride > 0 ? o.stride : o.kernel;
  s.ph = s.pw = o.padding;
  check_pool_shape(s, who.c_str());
  return s;
}

std::string describe_pool(const char* name, const PoolOptions& o) {
  std::ostringstream os;
  os << name << "(" << o.kernel << "x" << o.kernel << ", stride " << (o.stride > 0 ? o.stride : o.kernel);
  if (o.padding) os << ", pad " << o.padding;
  os << ")";
  return os.str();
}

void check_options(const PoolOptions& o, const char* name) {
  KILN_CHECK(o.kernel >= 1 && o.stride >= 0 && o.padding >= 0 && 2 * o.padding <= o.kernel,
             name << ": kernel " << o.kernel << ", stride " << o.stride << ", padding " << o.padding
                  << " (padding at most half the kernel)");
}

}  // namespace

MaxPool2d::MaxPool2d(const PoolOptions& o) : o_(o) { check_options(o, "MaxPool2d"); }
std::string MaxPool2d::describe() const { return describe_pool("MaxPool2d", o_); }
PoolShape MaxPool2d::shape_for(const Tensor& x) const { return make_shape(o_, x, describe()); }

Tensor MaxPool2d::forward(const Tensor& x) {
  s_ = shape_for(x);
  Tensor y = Tensor::empty({s_.n, s_.out_h(), s_.out_w(), s_.c}, x.dtype(), x.device(), "maxpool.out");
  // The argmax is only needed for backward, i.e. in training.
  argmax_ = training() ? Tensor::empty(y.shape(), DType::i32, x.device(), "maxpool.argmax") : Tensor();
  int32_t* arg = argmax_.defined() ? argmax_.data<int32_t>() : nullptr;
  dispatch(
      x, [&](auto tag) { using T = decltype(tag); maxpool2d_forward_cpu<T>(y.data<T>(), arg, x.data<T>(), s_); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        maxpool2d_forward(y.data<T>(), arg, x.data<T>(), s_, st); });
  return y;
}

Tensor MaxPool2d::backward(const Tensor& dy) {
  KILN_CHECK(argmax_.defined(), describe() << ": backward needs a training-mode forward first");
  KILN_CHECK(dy.numel() == argmax_.numel() && dy.device() == argmax_.device(),
             describe() << ": gradient '" << dy.name() << "' " << dy.shape().str() << " does not match the output "
                        << argmax_.shape().str());
  Tensor dx = Tensor::empty({s_.n, s_.h, s_.w, s_.c}, dy.dtype(), dy.device(), "maxpool.dx");
  const int32_t* arg = argmax_.data<int32_t>();
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag); maxpool2d_backward_cpu<T>(dx.data<T>(), dy.data<T>(), arg, s_); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        maxpool2d_backward(dx.data<T>(), dy.data<T>(), arg, s_, st); });
  return dx;
}

AvgPool2d::AvgPool2d(const PoolOptions& o) : o_(o) { check_options(o, "AvgPool2d"); }
std::string AvgPool2d::describe() const { return describe_pool("AvgPool2d", o_); }
PoolShape AvgPool2d::shape_for(const Tensor& x) const { return make_shape(o_, x, describe()); }

Tensor AvgPool2d::forward(const Tensor& x) {
  s_ = shape_for(x);
  dtype_ = x.dtype();
  ran_ = true;
  Tensor y = Tensor::empty({s_.n, s_.out_h(), s_.out_w(), s_.c}, x.dtype(), x.device(), "avgpool.out");
  const bool pad = o_.count_include_pad;
  dispatch(
      x, [&](auto tag) { using T = decltype(tag); avgpool2d_forward_cpu<T>(y.data<T>(), x.data<T>(), s_, pad); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        avgpool2d_forward(y.data<T>(), x.data<T>(), s_, pad, st); });
  return y;
}

Tensor AvgPool2d::backward(const Tensor& dy) {
  KILN_CHECK(ran_ && dy.numel() == s_.y_numel() && dy.dtype() == dtype_,
             describe() << ": gradient '" << dy.name() << "' " << dy.shape().str() << " does not match the last forward");
  Tensor dx = Tensor::empty({s_.n, s_.h, s_.w, s_.c}, dy.dtype(), dy.device(), "avgpool.dx");
  const bool pad = o_.count_include_pad;
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag); avgpool2d_backward_cpu<T>(dx.data<T>(), dy.data<T>(), s_, pad); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        avgpool2d_backward(dx.data<T>(), dy.data<T>(), s_, pad, st); });
  return dx;
}

Tensor GlobalAvgPool::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 4 && x.size(1) * x.size(2) >= 1,
             "GlobalAvgPool: input '" << x.name() << "' has shape " << x.shape().str() << ", expected (N, H, W, C)");
  in_ = x.shape();
  ran_ = true;
  const int64_t n = x.size(0), hw = x.size(1) * x.size(2), c = x.size(3);
  Tensor y = Tensor::empty({n, c}, x.dtype(), x.device(), "global_avgpool.out");
  dispatch(
      x, [&](auto tag) { using T = decltype(tag); global_avgpool_forward_cpu<T>(y.data<T>(), x.data<T>(), n, hw, c); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        global_avgpool_forward(y.data<T>(), x.data<T>(), n, hw, c, st); });
  return y;
}

Tensor GlobalAvgPool::backward(const Tensor& dy) {
  KILN_CHECK(ran_ && dy.numel() == in_[0] * in_[3],
             "GlobalAvgPool: gradient '" << dy.name() << "' " << dy.shape().str() << " does not match the last forward");
  const int64_t n = in_[0], hw = in_[1] * in_[2], c = in_[3];
  Tensor dx = Tensor::empty(in_, dy.dtype(), dy.device(), "global_avgpool.dx");
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag);
        global_avgpool_backward_cpu<T>(dx.data<T>(), dy.data<T>(), n, hw, c); },
      [&](auto tag, cudaStream_t st) { using T = decltype(tag);
        global_avgpool_backward(dx.data<T>(), dy.data<T>(), n, hw, c, st); });
  return dx;
}

}  // namespace kiln::nn
