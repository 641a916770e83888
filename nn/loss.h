// Softmax cross-entropy loss on the fused kernel (kernels/cross_entropy.h):
// the forward writes per-row losses and, in training, overwrites the logits
// with dlogits in place — the probabilities are never stored.
//
// The loss is a mean over rows whose target is not ignore_index (-100); the
// per-row losses come back to the host and are summed there in row order in
// double, so the reported loss is deterministic.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace kiln::nn {

struct LossSum {
  double sum = 0;     ///< Σ losses over counted rows
  int64_t count = 0;  ///< rows not ignored
};

class CrossEntropyLoss {
 public:
  /// label_smoothing ε: the target distribution is (1 − ε)·onehot + ε/V
  /// (torch.nn.CrossEntropyLoss's label_smoothing), in every call below.
  explicit CrossEntropyLoss(float label_smoothing = 0.0f);
  float label_smoothing() const { return label_smoothing_; }

  /// logits (rows, Vp) with the first V columns real (V = 0: V = Vp).
  /// targets (rows) on the host, in [0, V) or -100.
  /// Forward and backward in one pass: on return `logits` holds dL/dlogits
  /// for L = grad_scale · mean loss.
  LossSum forward_backward(Tensor& logits, const std::vector<int32_t>& targets, int64_t V, float grad_scale);
  /// Forward only; logits unchanged.
  LossSum forward(const Tensor& logits, const std::vector<int32_t>& targets, int64_t V);

  /// The same without a host round trip (the trainer's asynchronous step):
  /// `targets` (rows) int32 on the logits' device, already checked by the
  /// caller (the GPU kernel writes NaN for a target outside [0, V)); the
  /// per-row losses (rows) come back on the device (0 for ignored rows) and
  /// dL/dlogits is for L = grad_scale · Σ losses, a *sum*: the caller's
  /// grad_scale carries the 1 / (loss tokens of the step).
  Tensor forward_backward_rows(Tensor& logits, const Tensor& targets, int64_t V, float grad_scale);
  /// Forward only, per-row losses on the device; logits unchanged.
  Tensor forward_rows(const Tensor& logits, const Tensor& targets, int64_t V);

 private:
  float label_smoothing_ = 0.0f;
};

/// Index of the largest logit in each row among the first V columns (host result).
std::vector<int32_t> argmax_rows(const Tensor& logits, int64_t V);

}  // namespace kiln::nn
