#include "nn/linear.h"

#include <cmath>
#include <sstream>

#include "kernels/activation.h"
#include "nn/lora.h"
#include "runtime/dispatch.h"
#include "runtime/blas.h"

namespace kiln::nn {

Linear::Linear(int64_t in, int64_t out, bool bias, uint64_t seed, uint64_t offset) : in_(in), out_(out) {
  KILN_CHECK(in > 0 && out > 0, "Linear(" << in << ", " << out << "): sizes must be positive");
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  Tensor w = Tensor::empty({out, in}, DType::f32, Device::cpu());
  uint64_t next = w.uniform_(seed, offset, -bound, bound);
  weight_ = &register_parameter("weight", w, /*decay=*/true);
  if (bias) {
    Tensor b = Tensor::empty({out}, DType::f32, Device::cpu());
    b.uniform_(seed, next, -bound, bound);
    bias_ = &register_parameter("bias", b, /*decay=*/false);
  }
}

Linear::~Linear() = default;

void Linear::attach_adapter(std::unique_ptr<LoraAdapter> adapter) {
  KILN_CHECK(adapter && !lora_, describe() << ": attach_adapter needs one adapter and takes no second");
  lora_ = std::move(adapter);
  register_module("", lora_.get());  // no name part: "<this>.lora_A.weight"
}

std::string Linear::describe() const {
  std::ostringstream os;
  os << "Linear(" << in_ << " -> " << out_ << (bias_ ? "" : ", no bias") << ")";
  return os.str();
}

Tensor Linear::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() >= 1 && x.size(-1) == in_,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (..., " << in_ << ")");
  const int64_t rows = x.numel() / in_;
  x_ = x.reshape({rows, in_});
  std::vector<int64_t> out_shape = x.shape().vec();
  out_shape.back() = out_;
  Tensor y = Tensor::empty(Shape(out_shape), x.dtype(), x.device(), "linear.out");
  const Tensor& w = weight_->in(x.dtype());

  // y (rows, out) = x (rows, in) · Wᵀ (in, out)
  GemmArgs g;
  g.trans_a = false;
  g.trans_b = true;
  g.m = rows; g.n = out_; g.k = in_;
  g.a = x_.raw(); g.lda = in_;
  g.b = w.raw(); g.ldb = in_;
  g.c = y.raw(); g.ldc = out_;
  g.in_dtype = x.dtype();
  g.out_dtype = x.dtype();
  const bool fuse_bias = bias_ && x.device().is_cuda();
  if (fuse_bias) {
    // cuBLASLt's bias epilogue: bias in the output dtype.
    g.epilogue = Epilogue::bias;
    g.bias = bias_->in(x.dtype()).raw();
  }
  gemm(g, x.device(), compute_stream(x.device()));
  if (bias_ && !fuse_bias) {
    const Tensor& b = bias_->value;
    dispatch(
        y, [&](auto tag) { using T = decltype(tag);
          bias_add_forward_cpu<T>(y.data<T>(), y.data<T>(), b.data<T>(), rows, out_); },
        [&](auto tag, cudaStream_t) {});
  }
  if (lora_ && !lora_->merged()) {
    Tensor y2 = y.reshape({rows, out_});
    lora_->forward_into(x_, y2);  // y += s·B·A·dropout(x)
  }
  return y;
}

Tensor Linear::backward(const Tensor& dy) {
  KILN_CHECK(x_.defined(), describe() << ": backward before forward");
  const int64_t rows = x_.size(0);
  KILN_CHECK(dy.numel() == rows * out_, describe() << ": gradient '" << dy.name() << "' has shape "
                                                   << dy.shape().str() << ", expected " << rows << " x " << out_);
  const Device dev = dy.device();
  cudaStream_t stream = compute_stream(dev);

  // dW (out, in) += dyᵀ (out, rows) · x (rows, in); fp32 (master dtype) output.
  // A frozen weight (LoRA's base) gets none: the layer computes only dx.
  if (weight_->trainable) {
    GemmArgs gw;
    gw.trans_a = true;
    gw.trans_b = false;
    gw.m = out_; gw.n = in_; gw.k = rows;
    gw.a = dy.raw(); gw.lda = out_;
    gw.b = x_.raw(); gw.ldb = in_;
    gw.c = weight_->grad.raw(); gw.ldc = in_;
    gw.beta = 1.0f;
    gw.in_dtype = dy.dtype();
    gw.out_dtype = weight_->grad.dtype();
    gemm(gw, dev, stream);
  }

  if (bias_ && bias_->trainable) {
    Tensor& db = bias_->grad;
    dispatch(
        dy, [&](auto tag) { using T = decltype(tag);
          bias_backward_cpu<T>(db.data<T>(), dy.data<T>(), rows, out_); },
        [&](auto tag, cudaStream_t s) { using T = decltype(tag);
          bias_backward(db.data<float>(), dy.data<T>(), rows, out_, s); });
  }
  grads_ready();  // dW and db are final for this backward: their reduction may start
  const bool adapted = lora_ && !lora_->merged();
  const Tensor dy2 = adapted ? dy.reshape({rows, out_}) : Tensor();

  if (!needs_input_grad_) {
    if (adapted) lora_->backward_into(dy2, nullptr);  // dA, dB only
    return Tensor();
  }
  // dx (rows, in) = dy (rows, out) · W (out, in)
  std::vector<int64_t> dx_shape = dy.shape().vec();
  dx_shape.back() = in_;
  Tensor dx = Tensor::empty(Shape(dx_shape), dy.dtype(), dev, "linear.dx");
  const Tensor& w = weight_->in(dy.dtype());
  GemmArgs gx;
  gx.m = rows; gx.n = in_; gx.k = out_;
  gx.a = dy.raw(); gx.lda = out_;
  gx.b = w.raw(); gx.ldb = in_;
  gx.c = dx.raw(); gx.ldc = in_;
  gx.in_dtype = dy.dtype();
  gx.out_dtype = dy.dtype();
  gemm(gx, dev, stream);
  if (adapted) {
    Tensor dx2 = dx.reshape({rows, in_});
    lora_->backward_into(dy2, &dx2);  // dA, dB; dx += the adapter's share
  }
  return dx;
}

}  // namespace kiln::nn
