// Optimizers over a model's parameters: AdamW and SGD on the fused
// multi-tensor kernels (kernels/optimizer.h: one launch updates every
// parameter and rewrites its bf16 copy in the same pass).
//
// Weight decay applies to parameters whose `decay` flag is set (2-D weights);
// with no_decay_on_bias_and_norm = false it applies to all of them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "nn/module.h"

namespace kiln::nn {

enum class OptimizerKind { adamw, sgd };

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::adamw;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  ///< AdamW
  double momentum = 0.0;                          ///< SGD
  bool nesterov = false;                          ///< SGD
  bool no_decay_on_bias_and_norm = true;
};

/// A step's inputs that the trainer keeps on the device (kernels/norm.h
/// writes them), so deciding and scaling a step never waits on the host.
struct StepInputs {
  float grad_scale = 1.0f;  ///< multiplies every gradient
  Tensor scale;             ///< optional (1) f32 on the parameters' device: also multiplies (the clip scale)
  Tensor skip;              ///< optional (1) f32 there: nonzero → no update, and steps() does not advance
};

class Optimizer {
 public:
  /// Updates the trainable ones among `params` (frozen parameters get no state).
  Optimizer(std::vector<Parameter*> params, const OptimizerOptions& opt);

  /// One update with learning rate `lr`; every gradient is multiplied by
  /// `grad_scale` first (the clipping factor). Rewrites bf16 copies.
  void step(double lr, float grad_scale = 1.0f);
  /// The same with device-resident inputs: a step the flag skips changes
  /// nothing (weights, moments, bf16 copies, the step count).
  void step(double lr, const StepInputs& in);
  /// Updates taken so far (AdamW's bias-correction t). The count lives on
  /// the parameters' device, beside the skip flag: reading it synchronizes.
  int64_t steps() const;

  /// Optimizer state for checkpoints: "<param>.exp_avg", "<param>.exp_avg_sq"
  /// (AdamW) or "<param>.momentum_buffer" (SGD), as in PyTorch's state dicts.
  std::vector<std::pair<std::string, Tensor>> state() const;
  /// Restores state() output (tensors may be on the CPU) and the step count.
  /// Throws InputError naming the missing or mis-shaped tensor.
  void load_state(const std::map<std::string, Tensor>& state, int64_t steps);

 private:
  std::vector<Parameter*> params_;
  OptimizerOptions opt_;
  std::vector<Tensor> m_, v_;  // per parameter; v_ unused by SGD; m_ empty for SGD without momentum
  Tensor steps_;  // (1) i32 on the parameters' device: the kernels read and advance it
};

/// Global L2 norm of the trainable parameters' gradients (deterministic
/// reduction, fp64 on the host for the final sum over tensors).
double grad_norm(const std::vector<Parameter*>& params);

/// Clipping factor for a global norm: min(1, max_norm / (norm + 1e-6)); 1 when
/// max_norm <= 0 (clipping off).
float clip_scale(double norm, double max_norm);

}  // namespace kiln::nn
