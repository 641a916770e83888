// Pooling layers over NHWC images (kernels/pool.h): MaxPool2d, AvgPool2d
// (window, stride, zero padding; floor mode, as PyTorch) and GlobalAvgPool.
#pragma once

#include <cstdint>

#include "kernels/pool.h"
#include "nn/module.h"

namespace kiln::nn {

struct PoolOptions {
  int64_t kernel = 2;
  int64_t stride = 0;   ///< 0 = kernel (PyTorch's default)
  int64_t padding = 0;
  bool count_include_pad = true;  ///< AvgPool2d's divisor (PyTorch's default)
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const PoolOptions& o);
  Tensor forward(const Tensor& x) override;    // (N, H, W, C) -> (N, P, Q, C)
  Tensor backward(const Tensor& dy) override;  // gather through the saved argmax
  std::string describe() const override;
  PoolShape shape_for(const Tensor& x) const;

 private:
  PoolOptions o_;
  PoolShape s_;
  Tensor argmax_;  // (N, P, Q, C) int32
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(const PoolOptions& o);
  Tensor forward(const Tensor& x) override;    // (N, H, W, C) -> (N, P, Q, C)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;
  PoolShape shape_for(const Tensor& x) const;

 private:
  PoolOptions o_;
  PoolShape s_;
  DType dtype_ = DType::f32;
  bool ran_ = false;
};

/// Mean over the pixels of each channel: (N, H, W, C) -> (N, C).
class GlobalAvgPool : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override { return "GlobalAvgPool"; }

 private:
  Shape in_;
  bool ran_ = false;
};

}  // namespace kiln::nn
