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
  /// logits (rows, Vp) with the first V columns real (V = 0: V = Vp).
  /// targets (rows) on the host, in [0, V) or -100.
  /// Forward and backward in one pass: on return `logits` holds dL/dlogits
  /// for L = grad_scale · mean loss.
  LossSum forward_backward(Tensor& logits, const std::vector<int32_t>& targets, int64_t V, float grad_scale);
  /// Forward only; logits unchanged.
  LossSum forward(const Tensor& logits, const std::vector<int32_t>& targets, int64_t V);
};

/// Index of the largest logit in each row among the first V columns (host result).
std::vector<int32_t> argmax_rows(const Tensor& logits, int64_t V);

}  // namespace kiln::nn
