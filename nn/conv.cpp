#include "nn/conv.h"

#include <cmath>
#include <sstream>

#include "kernels/activation.h"
#include "runtime/dispatch.h"
#include "runtime/stream.h"

namespace kiln::nn {

namespace {
// acc += fresh (same shape and dtype: a master-dtype gradient).
void add_into(Tensor& acc, const Tensor& fresh) {
  dispatch(
      acc, [&](auto tag) { using T = decltype(tag);
        residual_add_cpu<T>(acc.data<T>(), acc.data<T>(), fresh.data<T>(), acc.numel()); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        residual_add(acc.data<T>(), acc.data<T>(), fresh.data<T>(), acc.numel(), s); });
}
}  // namespace

Conv2d::Conv2d(const Conv2dOptions& o, uint64_t seed, uint64_t offset) : o_(o) {
  KILN_CHECK(o.in > 0 && o.out > 0 && o.groups > 0 && o.in % o.groups == 0 && o.out % o.groups == 0,
             "Conv2d(" << o.in << " -> " << o.out << ", groups " << o.groups
                       << "): channel counts must be positive and divisible by groups");
  KILN_CHECK(o.kernel_h > 0 && o.kernel_w > 0 && o.stride > 0 && o.padding >= 0 && o.dilation > 0,
             "Conv2d: kernel " << o.kernel_h << "x" << o.kernel_w << ", stride " << o.stride << ", padding "
                               << o.padding << ", dilation " << o.dilation << " out of range");
  const int64_t cg = o.in / o.groups, fan_in = cg * o.kernel_h * o.kernel_w;
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  Tensor w = Tensor::empty({o.out, o.kernel_h, o.kernel_w, cg}, DType::f32, Device::cpu());
  const uint64_t next = w.uniform_(seed, offset, -bound, bound);
  weight_ = &register_parameter("weight", w, /*decay=*/true);
  if (o.bias) {
    Tensor b = Tensor::empty({o.out}, DType::f32, Device::cpu());
    b.uniform_(seed, next, -bound, bound);
    bias_ = &register_parameter("bias", b, /*decay=*/false);
  }
}

uint64_t Conv2d::init_counters() const {
  const uint64_t w = static_cast<uint64_t>(o_.out * o_.kernel_h * o_.kernel_w * (o_.in / o_.groups));
  return (w + 3) / 4 + (o_.bias ? (static_cast<uint64_t>(o_.out) + 3) / 4 : 0);
}

std::string Conv2d::describe() const {
  std::ostringstream os;
  os << "Conv2d(" << o_.in << " -> " << o_.out << ", " << o_.kernel_h << "x" << o_.kernel_w;
  if (o_.stride != 1) os << ", stride " << o_.stride;
  if (o_.padding != 0) os << ", pad " << o_.padding;
  if (o_.dilation != 1) os << ", dilation " << o_.dilation;
  if (o_.groups != 1) os << ", groups " << o_.groups;
  if (!o_.bias) os << ", no bias";
  os << ")";
  return os.str();
}

Conv2dGeometry Conv2d::geometry(int64_t n, int64_t h, int64_t w) const {
  Conv2dGeometry g;
  g.n = n; g.h = h; g.w = w; g.c = o_.in;
  g.k = o_.out; g.r = o_.kernel_h; g.s = o_.kernel_w;
  g.stride_h = g.stride_w = o_.stride;
  g.pad_h = g.pad_w = o_.padding;
  g.dilation_h = g.dilation_w = o_.dilation;
  g.groups = o_.groups;
  return g;
}

double Conv2d::flops_per_image(int64_t h, int64_t w) const { return geometry(1, h, w).flops(); }

Tensor Conv2d::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 4 && x.size(3) == o_.in,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (N, H, W, "
                        << o_.in << ")");
  const Conv2dGeometry g = geometry(x.size(0), x.size(1), x.size(2));
  check_conv2d_geometry(g);
  x_ = x;
  Tensor y = Tensor::empty({g.n, g.out_h(), g.out_w(), g.k}, x.dtype(), x.device(), "conv.out");
  const Tensor& w = weight_->in(x.dtype());
  // The bias is the master copy: f32 with f32 or bf16 activations, f64 in f64 checks.
  conv2d_forward(g, x.dtype(), x.raw(), w.raw(), bias_ ? bias_->value.raw() : nullptr, y.raw(), x.device(),
                 compute_stream(x.device()));
  return y;
}

Tensor Conv2d::backward(const Tensor& dy) {
  KILN_CHECK(x_.defined(), describe() << ": backward before forward");
  const Conv2dGeometry g = geometry(x_.size(0), x_.size(1), x_.size(2));
  KILN_CHECK(dy.ndim() == 4 && dy.size(0) == g.n && dy.size(1) == g.out_h() && dy.size(2) == g.out_w() &&
                 dy.size(3) == g.k && dy.dtype() == x_.dtype() && dy.device() == x_.device(),
             describe() << ": gradient '" << dy.name() << "' has shape " << dy.shape().str() << " "
                        << dtype_name(dy.dtype()) << ", expected (" << g.n << ", " << g.out_h() << ", " << g.out_w()
                        << ", " << g.k << ") " << dtype_name(x_.dtype()));
  const Device dev = dy.device();
  cudaStream_t stream = compute_stream(dev);
  const bool dw = weight_->grad.defined();
  void* dbias = bias_ && bias_->grad.defined() ? bias_->grad.raw() : nullptr;
  if (dw) {
    // This backward's dW (and db) are computed fresh and then added to the
    // gradient: one rounding per micro-batch, grad + fresh, which is the sum
    // an all-reduce makes of the ranks' micro-batch gradients. (Accumulating
    // inside the GEMM would add the micro-batch's partial sums to the
    // gradient one K block at a time.) So one process with grad_accum 2
    // computes what two processes do, bit for bit.
    Tensor fresh = Tensor::empty(weight_->grad.shape(), weight_->grad.dtype(), dev, "conv.dw_micro");
    Tensor fresh_b;
    if (dbias) fresh_b = Tensor::zeros(bias_->grad.shape(), bias_->grad.dtype(), dev, "conv.db_micro");
    conv2d_backward_filter(g, dy.dtype(), x_.raw(), dy.raw(), fresh.raw(), fresh.dtype(), /*accumulate=*/false,
                           dbias ? fresh_b.raw() : nullptr, dev, stream);
    add_into(weight_->grad, fresh);
    if (dbias) add_into(bias_->grad, fresh_b);
  } else if (dbias) {
    // Frozen weight, trainable bias: dbias alone (a zero-size filter pass is not worth a special case).
    Tensor scratch = Tensor::empty(weight_->value.shape(), weight_->value.dtype(), dev, "conv.dw_unused");
    conv2d_backward_filter(g, dy.dtype(), x_.raw(), dy.raw(), scratch.raw(), scratch.dtype(), false, dbias, dev,
                           stream);
  }
  grads_ready();  // dW and db are final for this backward: their reduction may start
  if (!needs_input_grad_) return Tensor();
  Tensor dx = Tensor::empty(x_.shape(), dy.dtype(), dev, "conv.dx");
  conv2d_backward_data(g, dy.dtype(), dy.raw(), weight_->in(dy.dtype()).raw(), dx.raw(), dev, stream);
  return dx;
}

}  // namespace kiln::nn
