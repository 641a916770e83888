// Module: named parameters, explicit forward/backward, train/eval mode.
//
// There is no autograd tape (design decision 1): forward(x) keeps what its
// backward needs, backward(dy) returns dx and *accumulates* (+=) into each
// parameter's gradient, so gradient accumulation over micro-batches is just
// "call backward again"; the trainer zeroes gradients once per optimizer step.
// Composite modules call their children's backward in reverse order.
//
// Precision: parameters are fp32 master weights (f64 in the CPU gradient
// checks); with bf16 activations a module reads the parameter's bf16 copy
// (`Parameter::lowp`), which the optimizer rewrites in the same pass that
// updates the master weight. Gradients are always in the master dtype.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace kiln::nn {

struct Parameter {
  std::string name;  ///< full dotted name, e.g. "layers.0.weight"
  Tensor value;      ///< master weights (f32; f64 in gradient checks)
  Tensor grad;       ///< same shape and dtype as value; accumulated by backward
  Tensor lowp;       ///< bf16 copy for bf16 compute (undefined otherwise)
  bool decay = true; ///< weight decay applies (false for biases and norm weights by default)
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// Forward pass; keeps the activations backward needs.
  virtual Tensor forward(const Tensor& x) = 0;
  /// Backward pass for the most recent forward: returns dL/dx and adds
  /// dL/dparam into each parameter's grad.
  virtual Tensor backward(const Tensor& dy) = 0;
  /// Short description for summaries, e.g. "Linear(784 -> 256)".
  virtual std::string describe() const = 0;

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  /// Every parameter of this module and its children, in registration order,
  /// with full dotted names.
  std::vector<Parameter*> parameters();
  int64_t num_parameters();
  /// Sets every gradient to zero.
  void zero_grad();
  /// Called (through grads_ready()) once a backward has finished adding into
  /// a parameter's gradient. The data-parallel gradient reducer uses it to
  /// start reducing a bucket while the rest of backward runs. Setting it on a
  /// module sets it on the whole subtree; an empty function removes it.
  using GradReadyHook = std::function<void(Parameter&)>;
  void set_grad_ready_hook(GradReadyHook hook);

  /// Direct children in registration order (name, module).
  const std::vector<std::pair<std::string, Module*>>& children() const { return children_; }
  /// Human-readable tree with parameter counts.
  std::string summary();

  /// Moves parameters (and gradients) to `device` with master dtype `dtype`
  /// and creates bf16 copies when `compute` is bf16. Call before training.
  void to(Device device, DType master = DType::f32, DType compute = DType::f32);
  Device device() const { return device_; }
  DType compute_dtype() const { return compute_; }

 protected:
  /// Registers a parameter (allocates its gradient). `name` is local ("weight").
  Parameter& register_parameter(const std::string& name, Tensor value, bool decay);
  /// Registers a child module owned elsewhere (usually a member or a
  /// unique_ptr held by this module). `name` is local ("0", "attn"); an
  /// empty name adds no part to its parameters' names.
  void register_module(const std::string& name, Module* child);
  /// Called by to() after parameters moved; modules with extra state override.
  virtual void on_device_change() {}
  /// Modules with parameters call this in backward right after the last
  /// accumulation into their own parameters' gradients (before computing dx,
  /// so the reduction overlaps it). Does nothing when no hook is set; a
  /// module that never calls it is still correct, it only overlaps less.
  void grads_ready();

 private:
  void collect(const std::string& prefix, std::vector<Parameter*>& out);
  void set_training(bool on);
  void set_placement(Device d, DType compute);
  void set_hook(const std::shared_ptr<const GradReadyHook>& hook);

  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<std::string> local_names_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
  Device device_ = Device::cpu();
  DType compute_ = DType::f32;
  std::shared_ptr<const GradReadyHook> grad_hook_;
};

}  // namespace kiln::nn
