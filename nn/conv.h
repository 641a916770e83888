// Conv2d over NHWC images on runtime/conv.h (cuDNN on the GPU, im2col +
// OpenBLAS on the CPU).
//
//   x (N, H, W, C) -> y (N, P, Q, K)
//   weight (K, R, S, C/groups)  "KRSC", cuDNN's channels-last filter layout;
//                               PyTorch's (K, C/groups, R, S) is this permuted (0, 3, 1, 2)
//   bias (K)                    optional
#pragma once

#include <cstdint>

#include "nn/module.h"
#include "runtime/conv.h"

namespace kiln::nn {

struct Conv2dOptions {
  int64_t in = 1, out = 1;          ///< channels C -> K
  int64_t kernel_h = 3, kernel_w = 3;
  int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
  bool bias = true;
};

class Conv2d : public Module {
 public:
  /// Weights (and bias) from U(−1/√fan_in, 1/√fan_in), fan_in = C/groups·R·S
  /// (PyTorch's default), drawn from the Philox stream (seed, offset).
  Conv2d(const Conv2dOptions& o, uint64_t seed, uint64_t offset);

  Tensor forward(const Tensor& x) override;    // (N, H, W, C) -> (N, P, Q, K)
  Tensor backward(const Tensor& dy) override;  // (N, P, Q, K) -> (N, H, W, C); dW, db +=
  std::string describe() const override;

  /// The network's first convolution needs no input gradient (the images).
  void set_needs_input_grad(bool v) { needs_input_grad_ = v; }
  const Conv2dOptions& options() const { return o_; }
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  /// Counters the init draws from (weights and bias): the next layer's offset.
  uint64_t init_counters() const;
  /// The geometry for an input of n images of h x w.
  Conv2dGeometry geometry(int64_t n, int64_t h, int64_t w) const;
  /// Forward multiply-adds x2 for one h x w image (each backward is the same).
  double flops_per_image(int64_t h, int64_t w) const;

 private:
  Conv2dOptions o_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  bool needs_input_grad_ = true;
  Tensor x_;  // saved input (N, H, W, C)
};

}  // namespace kiln::nn
