// Linear: y = x · Wᵀ + b, W of shape (out, in) as in PyTorch (so weights
// export with the usual layout). x may have any leading dims: (..., in).
#pragma once

#include <memory>

#include "nn/module.h"

namespace kiln::nn {

class LoraAdapter;  // nn/lora.h

class Linear : public Module {
 public:
  /// Weights drawn from U(-1/√in, 1/√in) (PyTorch's default) with the Philox
  /// stream (seed, offset); callers that want another init overwrite them.
  Linear(int64_t in, int64_t out, bool bias, uint64_t seed, uint64_t offset);
  ~Linear() override;

  /// x (..., in) -> y (..., out)
  Tensor forward(const Tensor& x) override;
  /// dy (..., out) -> dx (..., in); dW += dyᵀ·x, db += Σ dy.
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;

  /// The first layer of a network does not need dx: skipping it saves a
  /// third of that layer's backward FLOPs.
  void set_needs_input_grad(bool v) { needs_input_grad_ = v; }
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

  /// LoRA (nn/lora.h): the layer owns the adapter and adds its term to y and
  /// dx; the adapter's parameters join this layer's under its own names
  /// ("lora_A.weight"). One adapter per layer; nullptr when none.
  void attach_adapter(std::unique_ptr<LoraAdapter> adapter);
  LoraAdapter* adapter() const { return lora_.get(); }

 private:
  int64_t in_, out_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  bool needs_input_grad_ = true;
  Tensor x_;  // saved input (rows, in)
  std::unique_ptr<LoraAdapter> lora_;
};

}  // namespace kiln::nn
