// Sequential: runs children in order forward and in reverse backward.
#pragma once

#include <memory>
#include <vector>

#include "nn/module.h"

namespace kiln::nn {

class Sequential : public Module {
 public:
  /// Appends a child; its parameters are named "<index>.<name>".
  template <typename M>
  M& add(std::unique_ptr<M> m) {
    M& ref = *m;
    register_module(std::to_string(layers_.size()), m.get());
    layers_.push_back(std::move(m));
    return ref;
  }
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override { return "Sequential"; }
  size_t size() const { return layers_.size(); }
  Module& operator[](size_t i) { return *layers_[i]; }

 private:
  std::vector<std::unique_ptr<Module>> layers_;
};

}  // namespace kiln::nn
