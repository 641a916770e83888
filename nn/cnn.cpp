#include "nn/cnn.h"

#include <sstream>

#include "nn/activation.h"
#include "nn/batchnorm.h"
#include "nn/conv.h"
#include "nn/linear.h"
#include "nn/pool.h"

namespace kiln::nn {

Tensor Flatten::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() >= 1, "Flatten: input '" << x.name() << "' has no batch dimension");
  in_ = x.shape();
  return x.reshape({x.size(0), x.size(0) ? x.numel() / x.size(0) : 0});
}

Tensor Flatten::backward(const Tensor& dy) {
  KILN_CHECK(in_.ndim() >= 1 && dy.numel() == in_.numel("Flatten input"),
             "Flatten: gradient '" << dy.name() << "' " << dy.shape().str() << " does not match " << in_.str());
  return dy.reshape(in_);
}

Cnn::Cnn(const CnnOptions& o, std::shared_ptr<RngStream> rng) : o_(o) {
  KILN_CHECK(!o.channels.empty() && o.channels.size() == o.blocks.size(),
             "Cnn: channels (" << o.channels.size() << " stages) and blocks (" << o.blocks.size()
                               << ") must list the same stages");
  KILN_CHECK(o.kernel >= 1 && o.kernel % 2 == 1, "Cnn: kernel = " << o.kernel << " must be odd");
  KILN_CHECK(o.in_channels > 0 && o.height > 0 && o.width > 0 && o.classes > 0,
             "Cnn: input " << o.height << "x" << o.width << "x" << o.in_channels << ", " << o.classes << " classes");
  uint64_t offset = 0;
  int64_t c = o.in_channels, h = o.height, w = o.width;
  bool first = true;
  double fwd = 0, first_conv = 0;
  for (size_t st = 0; st < o.channels.size(); ++st) {
    for (int64_t b = 0; b < o.blocks[st]; ++b) {
      Conv2dOptions co;
      co.in = c;
      co.out = o.channels[st];
      co.kernel_h = co.kernel_w = o.kernel;
      co.padding = o.kernel / 2;
      co.bias = false;  // BatchNorm's shift replaces it
      auto conv = std::make_unique<Conv2d>(co, o.seed, offset);
      offset += static_cast<uint64_t>(co.out * co.in * o.kernel * o.kernel + co.out);
      const double f = conv->flops_per_image(h, w);
      fwd += f;
      if (first) {
        conv->set_needs_input_grad(false);
        first_conv = f;
        first = false;
      }
      layers_.add(std::move(conv));
      BatchNormOptions bo;
      bo.channels = co.out;
      bo.momentum = o.bn_momentum;
      bo.eps = o.bn_eps;
      layers_.add(std::make_unique<BatchNorm2d>(bo));
      layers_.add(std::make_unique<ReLU>());
      c = co.out;
    }
    if (h >= 2 && w >= 2) {
      PoolOptions po;
      po.kernel = 2;
      if (o.pool == PoolKind::max) layers_.add(std::make_unique<MaxPool2d>(po));
      else layers_.add(std::make_unique<AvgPool2d>(po));
      h /= 2;
      w /= 2;
    }
  }
  int64_t features;
  if (o.global_pool) {
    layers_.add(std::make_unique<GlobalAvgPool>());
    features = c;
  } else {
    layers_.add(std::make_unique<Flatten>());
    features = c * h * w;
  }
  if (o.hidden > 0) {
    layers_.add(std::make_unique<Linear>(features, o.hidden, true, o.seed, offset));
    offset += static_cast<uint64_t>(features * o.hidden + o.hidden);
    fwd += 2.0 * static_cast<double>(features * o.hidden);
    layers_.add(std::make_unique<ReLU>());
    if (o.dropout > 0.0f) layers_.add(std::make_unique<Dropout>(o.dropout, rng));
    features = o.hidden;
  }
  layers_.add(std::make_unique<Linear>(features, o.classes, true, o.seed, offset));
  fwd += 2.0 * static_cast<double>(features * o.classes);
  flops_ = 3.0 * fwd - first_conv;
  register_module("layers", &layers_);
}

Tensor Cnn::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() == 4 && x.size(1) == o_.height && x.size(2) == o_.width && x.size(3) == o_.in_channels,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (N, "
                        << o_.height << ", " << o_.width << ", " << o_.in_channels << ")");
  return layers_.forward(x);
}

Tensor Cnn::backward(const Tensor& dy) { return layers_.backward(dy); }

std::string Cnn::describe() const {
  std::ostringstream os;
  os << "CNN(" << o_.height << "x" << o_.width << "x" << o_.in_channels;
  for (size_t s = 0; s < o_.channels.size(); ++s) os << " | " << o_.channels[s] << "x" << o_.blocks[s];
  os << (o_.global_pool ? " | gap" : " | flatten");
  if (o_.hidden) os << " | " << o_.hidden;
  os << " -> " << o_.classes << ")";
  return os.str();
}

}  // namespace kiln::nn
