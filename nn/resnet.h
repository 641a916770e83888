// ResNet for small images built from `model.resnet`: a 3x3 stem (no 7x7
// convolution or max-pool: a 28x28 image keeps its resolution into the first
// stage), stages of basic blocks (two 3x3 convolutions with BatchNorm, a
// shortcut), stride-2 downsampling at the first block of every stage after
// the first with a 1x1 stride-2 projection (+ BatchNorm) on the shortcut,
// then global average pooling and a Linear head.
//
//   x (N, H, W, C_in) NHWC -> logits (N, classes)
//   28x28, channels {32, 64, 128}: 28x28x32 -> 14x14x64 -> 7x7x128 -> 128 -> classes
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/activation.h"
#include "nn/batchnorm.h"
#include "nn/conv.h"
#include "nn/sequential.h"

namespace kiln::nn {

struct ResNetOptions {
  int64_t in_channels = 1, height = 28, width = 28, classes = 10;
  std::vector<int64_t> channels = {32, 64, 128};  ///< per stage (the stem has channels[0])
  std::vector<int64_t> blocks = {2, 2, 2};        ///< basic blocks per stage
  bool zero_init_residual = false;  ///< start each block's last BatchNorm at weight 0 (block = identity)
  float bn_momentum = 0.1f, bn_eps = 1e-5f;
  uint64_t seed = 0;
};

/// relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = x, or
/// bn(conv1x1 stride s (x)) when the stride or the width changes.
/// Parameter names: conv1, bn1, conv2, bn2, shortcut.0 (conv), shortcut.1 (bn).
class BasicBlock : public Module {
 public:
  /// Draws conv weights from (seed, *offset) and advances *offset.
  BasicBlock(int64_t in, int64_t out, int64_t stride, const BatchNormOptions& bn, uint64_t seed, uint64_t* offset);
  Tensor forward(const Tensor& x) override;    // (N, H, W, in) -> (N, H/s, W/s, out)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;
  double flops_per_image(int64_t h, int64_t w) const;  ///< forward, input h x w
  BatchNorm2d& bn2() { return *bn2_; }

 private:
  int64_t in_, out_, stride_;
  std::unique_ptr<Conv2d> conv1_, conv2_;
  std::unique_ptr<BatchNorm2d> bn1_, bn2_;
  ReLU relu1_, relu2_;
  std::unique_ptr<Sequential> shortcut_;  // null: identity
};

/// Parameter names: stem.0 (conv), stem.1 (bn), stages.<s>.<b>.<block names>, head.1 (the Linear).
class ResNet : public Module {
 public:
  explicit ResNet(const ResNetOptions& o);
  Tensor forward(const Tensor& x) override;    // (N, H, W, C) -> (N, classes)
  Tensor backward(const Tensor& dy) override;  // -> undefined (the stem needs no input gradient)
  std::string describe() const override;
  double train_flops_per_example() const { return flops_; }
  const ResNetOptions& options() const { return o_; }

 private:
  ResNetOptions o_;
  Sequential stem_, stages_, head_;
  double flops_ = 0;
};

}  // namespace kiln::nn
