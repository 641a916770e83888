// Parameter-free element-wise layers: ReLU, GELU (tanh form), Dropout.
#pragma once

#include <memory>

#include "nn/module.h"
#include "nn/rng.h"

namespace kiln::nn {

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;   // (...) -> (...)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override { return "ReLU"; }

 private:
  Tensor x_;
};

class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;   // (...) -> (...)
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override { return "GELU(tanh)"; }

 private:
  Tensor x_;
};

/// Inverted dropout: in training, zeroes each element with probability p and
/// scales the rest by 1/(1-p); identity in eval mode or when p == 0. The mask
/// comes from the shared Philox stream `rng` (one counter range per call), so
/// backward regenerates it instead of storing it, and CPU and GPU agree.
class Dropout : public Module {
 public:
  Dropout(float p, std::shared_ptr<RngStream> rng);
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;

 private:
  float p_;
  std::shared_ptr<RngStream> rng_;
  uint64_t offset_ = 0;  // counter offset of the last forward's mask
  bool active_ = false;  // last forward applied a mask
};

}  // namespace kiln::nn
