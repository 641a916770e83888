// A plain convolutional classifier built from `model.cnn`: stages of
// (conv3x3 → BatchNorm → ReLU) x blocks, each stage followed by 2x2 pooling,
// then a head: flatten (or global average pool), an optional hidden Linear
// with ReLU and dropout, and a Linear to the classes.
//
//   x (N, H, W, C_in) NHWC images -> logits (N, classes)
//
// The flatten is of NHWC features, (P, Q, C) order: a PyTorch model with the
// same weights flattens NCHW, so its first head weight is this one's with the
// columns permuted (tests/parity does that).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/rng.h"
#include "nn/sequential.h"

namespace kiln::nn {

enum class PoolKind { max, avg };

struct CnnOptions {
  int64_t in_channels = 1, height = 28, width = 28, classes = 10;
  std::vector<int64_t> channels = {32, 64};  ///< per stage
  std::vector<int64_t> blocks = {1, 1};      ///< conv-BN-ReLU layers per stage
  int64_t kernel = 3;                        ///< odd: padding kernel/2 keeps the size
  PoolKind pool = PoolKind::max;             ///< 2x2, stride 2, after every stage
  bool global_pool = false;                  ///< head input: global average (true) or flatten
  int64_t hidden = 0;                        ///< hidden Linear width in the head (0 = none)
  float dropout = 0.0f;                      ///< before the last Linear (with hidden)
  float bn_momentum = 0.1f, bn_eps = 1e-5f;
  uint64_t seed = 0;                         ///< weight init stream
};

/// (N, ...) -> (N, prod(...)); backward restores the shape.
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override { return "Flatten"; }

 private:
  Shape in_;
};

/// Parameter names: "layers.<i>.weight" / ".bias" in layer order (conv, BN,
/// ..., Linear); BN buffers "layers.<i>.running_mean" / ".running_var".
class Cnn : public Module {
 public:
  Cnn(const CnnOptions& o, std::shared_ptr<RngStream> rng);
  Tensor forward(const Tensor& x) override;    // (N, H, W, C) -> (N, classes)
  Tensor backward(const Tensor& dy) override;  // -> undefined (images need no gradient)
  std::string describe() const override;
  /// Forward + backward FLOPs per image (convolutions and Linears; the first
  /// convolution has no input gradient).
  double train_flops_per_example() const { return flops_; }
  const CnnOptions& options() const { return o_; }

 private:
  CnnOptions o_;
  Sequential layers_;
  double flops_ = 0;
};

}  // namespace kiln::nn
