#include "nn/resnet.h"

#include <sstream>

#include "kernels/activation.h"
#include "nn/linear.h"
#include "nn/pool.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

std::unique_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t k, int64_t stride, uint64_t seed, uint64_t* offset) {
  Conv2dOptions o;
  o.in = in;
  o.out = out;
  o.kernel_h = o.kernel_w = k;
  o.stride = stride;
  o.padding = k / 2;
  o.bias = false;  // BatchNorm follows
  auto c = std::make_unique<Conv2d>(o, seed, *offset);
  *offset += static_cast<uint64_t>(out * in * k * k + out);
  return c;
}

BatchNormOptions bn_options(int64_t channels, const ResNetOptions& o) {
  BatchNormOptions b;
  b.channels = channels;
  b.momentum = o.bn_momentum;
  b.eps = o.bn_eps;
  return b;
}

// a + b into a new tensor (same shape, dtype, device).
Tensor add(const Tensor& a, const Tensor& b, const char* name) {
  check_same(a, b, name);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device(), name);
  const int64_t n = a.numel();
  dispatch(
      a, [&](auto tag) { using T = decltype(tag); residual_add_cpu<T>(out.data<T>(), a.data<T>(), b.data<T>(), n); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        residual_add(out.data<T>(), a.data<T>(), b.data<T>(), n, s); });
  return out;
}

}  // namespace

BasicBlock::BasicBlock(int64_t in, int64_t out, int64_t stride, const BatchNormOptions& bn, uint64_t seed,
                       uint64_t* offset)
    : in_(in), out_(out), stride_(stride) {
  conv1_ = conv(in, out, 3, stride, seed, offset);
  BatchNormOptions b = bn;
  b.channels = out;
  bn1_ = std::make_unique<BatchNorm2d>(b);
  conv2_ = conv(out, out, 3, 1, seed, offset);
  bn2_ = std::make_unique<BatchNorm2d>(b);
  register_module("conv1", conv1_.get());
  register_module("bn1", bn1_.get());
  register_module("conv2", conv2_.get());
  register_module("bn2", bn2_.get());
  if (stride != 1 || in != out) {
    shortcut_ = std::make_unique<Sequential>();
    shortcut_->add(conv(in, out, 1, stride, seed, offset));
    shortcut_->add(std::make_unique<BatchNorm2d>(b));
    register_module("shortcut", shortcut_.get());
  }
}

std::string BasicBlock::describe() const {
  std::ostringstream os;
  os << "BasicBlock(" << in_ << " -> " << out_ << (stride_ != 1 ? ", stride " + std::to_string(stride_) : "")
     << (shortcut_ ? ", projection" : "") << ")";
  return os.str();
}

double BasicBlock::flops_per_image(int64_t h, int64_t w) const {
  const int64_t ho = (h + 2 - 3) / stride_ + 1, wo = (w + 2 - 3) / stride_ + 1;
  double f = conv1_->flops_per_image(h, w) + conv2_->flops_per_image(ho, wo);
  if (shortcut_) f += 2.0 * static_cast<double>(ho * wo * in_ * out_);
  return f;
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor h = relu1_.forward(bn1_->forward(conv1_->forward(x)));
  h = bn2_->forward(conv2_->forward(h));
  const Tensor s = shortcut_ ? shortcut_->forward(x) : x;
  return relu2_.forward(add(h, s, "block.sum"));
}

Tensor BasicBlock::backward(const Tensor& dy) {
  const Tensor g = relu2_.backward(dy);  // gradient of the sum: both branches
  const Tensor dmain = conv1_->backward(bn1_->backward(relu1_.backward(conv2_->backward(bn2_->backward(g)))));
  const Tensor dshort = shortcut_ ? shortcut_->backward(g) : g;
  return add(dmain, dshort, "block.dx");
}

ResNet::ResNet(const ResNetOptions& o) : o_(o) {
  KILN_CHECK(!o.channels.empty() && o.channels.size() == o.blocks.size(),
             "ResNet: channels (" << o.channels.size() << " stages) and blocks (" << o.blocks.size()
                                  << ") must list the same stages");
  for (size_t s = 0; s < o.blocks.size(); ++s)
    KILN_CHECK(o.blocks[s] >= 1 && o.channels[s] >= 1, "ResNet: stage " << s << " needs at least one block and channel");
  uint64_t offset = 0;
  int64_t h = o.height, w = o.width;
  double fwd = 0;
  auto stem = conv(o.in_channels, o.channels[0], 3, 1, o.seed, &offset);
  stem->set_needs_input_grad(false);
  const double stem_flops = stem->flops_per_image(h, w);
  fwd += stem_flops;
  stem_.add(std::move(stem));
  stem_.add(std::make_unique<BatchNorm2d>(bn_options(o.channels[0], o)));
  stem_.add(std::make_unique<ReLU>());
  int64_t c = o.channels[0];
  for (size_t s = 0; s < o.channels.size(); ++s) {
    auto stage = std::make_unique<Sequential>();
    for (int64_t b = 0; b < o.blocks[s]; ++b) {
      const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
      auto block = std::make_unique<BasicBlock>(c, o.channels[s], stride, bn_options(o.channels[s], o), o.seed, &offset);
      fwd += block->flops_per_image(h, w);
      if (o.zero_init_residual) block->bn2().weight().value.zero_();
      h = (h - 1) / stride + 1;
      w = (w - 1) / stride + 1;
      c = o.channels[s];
      stage->add(std::move(block));
    }
    stages_.add(std::move(stage));
  }
  head_.add(std::make_unique<GlobalAvgPool>());
  head_.add(std::make_unique<Linear>(c, o.classes, true, o.seed, offset));
  fwd += 2.0 * static_cast<double>(c * o.classes);
  flops_ = 3.0 * fwd - stem_flops;
  register_module("stem", &stem_);
  register_module("stages", &stages_);
  register_module("head", &head_);
}

Tensor ResNet::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 4 && x.size(1) == o_.height && x.size(2) == o_.width && x.size(3) == o_.in_channels,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (N, "
                        << o_.height << ", " << o_.width << ", " << o_.in_channels << ")");
  return head_.forward(stages_.forward(stem_.forward(x)));
}

Tensor ResNet::backward(const Tensor& dy) { return stem_.backward(stages_.backward(head_.backward(dy))); }

std::string ResNet::describe() const {
  std::ostringstream os;
  os << "ResNet(" << o_.height << "x" << o_.width << "x" << o_.in_channels;
  for (size_t s = 0; s < o_.channels.size(); ++s) os << " | " << o_.channels[s] << "x" << o_.blocks[s];
  os << " -> " << o_.classes << ")";
  return os.str();
}

}  // namespace kiln::nn
