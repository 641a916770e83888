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
// (`Parameter::lowp`, through Parameter::in()), which the optimizer rewrites
// in the same pass that updates the master weight. Gradients are always in
// the master dtype.
//
// Trainable and frozen (design decision 9): a frozen parameter (LoRA's base
// weights, a fine-tune that fixes the embeddings) has no gradient tensor at
// all; layers skip its weight gradient, and the optimizer, the gradient
// reducer, the global norm and the optimizer checkpoint only ever see
// trainable_parameters(). Buffers (BatchNorm running statistics) are state
// that is saved, restored and broadcast with the weights but never trained.
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
  Tensor grad;       ///< same shape and dtype as value; accumulated by backward (undefined when frozen)
  Tensor lowp;       ///< bf16 copy for bf16 compute (undefined otherwise)
  bool decay = true; ///< weight decay applies (false for biases and norm weights by default)
  bool trainable = true;  ///< false: frozen (no gradient, no optimizer state); see Module::set_trainable

  /// The weight as an op computing in `compute` reads it: the bf16 copy for
  /// bf16, the master weights otherwise. Error naming the parameter when the
  /// bf16 copy is missing (Module::to was not called with bf16).
  const Tensor& in(DType compute) const;
  /// Rewrites the bf16 copy from the master weights (after loading or
  /// broadcasting them); a no-op without one.
  void refresh_lowp();
};

/// State that belongs to a module but is not trained: BatchNorm running
/// statistics, counters. Saved in model.safetensors beside the weights
/// (under its full name), restored on resume, broadcast from rank 0.
struct Buffer {
  std::string name;  ///< full dotted name, e.g. "layers.1.running_mean"
  Tensor value;      ///< any dtype; to() moves it but keeps its dtype
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
  /// with full dotted names (frozen ones included: they are saved and loaded).
  std::vector<Parameter*> parameters();
  /// The parameters that train: what optimizers, gradient reduction, norms
  /// and optimizer checkpoints iterate over.
  std::vector<Parameter*> trainable_parameters();
  /// Every buffer of this module and its children, registration order.
  std::vector<Buffer*> buffers();
  int64_t num_parameters();
  int64_t num_trainable_parameters();
  /// Sets every (trainable) gradient to zero.
  void zero_grad();
  /// Freezes (false) or unfreezes (true) every parameter of this subtree.
  /// Freezing drops the gradient tensor; unfreezing allocates a zero one on
  /// the parameter's device. Call before building the optimizer.
  void set_trainable(bool on);
  /// Rewrites every bf16 copy from its master weights (after a load).
  void refresh_lowp();
  /// Called (through grads_ready()) once a backward has finished adding into
  /// a parameter's gradient. The data-parallel gradient reducer uses it to
  /// start reducing a bucket while the rest of backward runs. Setting it on a
  /// module sets it on the whole subtree; an empty function removes it.
  using GradReadyHook = std::function<void(Parameter&)>;
  void set_grad_ready_hook(GradReadyHook hook);

  /// Direct children in registration order (name, module).
  const std::vector<std::pair<std::string, Module*>>& children() const { return children_; }
  /// Human-readable tree with parameter counts, ending with
  /// "parameters: <trainable> trainable / <total> total".
  std::string summary();

  /// Moves parameters (and the gradients of trainable ones) to `device` with
  /// master dtype `dtype`, creates bf16 copies when `compute` is bf16, and
  /// moves buffers (keeping their dtype). Call before training.
  void to(Device device, DType master = DType::f32, DType compute = DType::f32);
  Device device() const { return device_; }
  DType compute_dtype() const { return compute_; }

 protected:
  /// Registers a parameter (allocates its gradient). `name` is local ("weight").
  Parameter& register_parameter(const std::string& name, Tensor value, bool decay);
  /// Registers a buffer. `name` is local ("running_mean").
  Buffer& register_buffer(const std::string& name, Tensor value);
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
  void collect_buffers(const std::string& prefix, std::vector<Buffer*>& out);
  void set_training(bool on);
  void set_placement(Device d, DType compute);
  void set_hook(const std::shared_ptr<const GradReadyHook>& hook);

  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<std::string> local_names_;
  std::vector<std::unique_ptr<Buffer>> buffers_;
  std::vector<std::string> buffer_names_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
  Device device_ = Device::cpu();
  DType compute_ = DType::f32;
  std::shared_ptr<const GradReadyHook> grad_hook_;
};

}  // namespace kiln::nn
