// StepGuard: a step's global gradient norm, clip scale and non-finite flag,
// computed and kept on the device (kernels/norm.h), and handed to the
// optimizer as device pointers (nn::StepInputs). The host never reads the
// norm back to clip or to decide whether to skip: the optimizer kernel reads
// the flag the norm kernel set.
//
// The flag is per step with dist.on_nonfinite = skip (cleared by
// begin_step), and sticky with stop: after the first non-finite step no
// later step updates anything, so when the trainer reads the flags at its
// next log window and stops, the weights are those before that step.
//
// Sharded gradients (ZeRO-1): each rank's shard gives partial sums of
// squares, an all-reduce adds them (on the device with NCCL; on the host over
// MPI for the CPU), and every rank finishes the same norm.
#pragma once

#include <vector>

#include "nn/module.h"
#include "nn/optimizer.h"
#include "runtime/communicator.h"
#include "runtime/tensor.h"

namespace kiln {

class StepGuard {
 public:
  /// max_norm <= 0: no clipping (the norm and the flag are still computed).
  /// sticky: the flag stays raised once a step was non-finite.
  StepGuard(Device device, double max_norm, bool sticky);

  /// Clears the flag for a new step (not when sticky).
  void begin_step();
  /// Norm, scale and flag over the gradients of `params` (all on this
  /// device, f32). `shard_comm`: the gradients are this rank's shard of the
  /// whole (ZeRO-1) and the norm is over all ranks' shards (collective).
  void compute(const std::vector<nn::Parameter*>& params, Communicator* shard_comm = nullptr);

  /// The clip scale (when clipping) and the flag, for Optimizer::step.
  nn::StepInputs inputs() const;
  const Tensor& norm() const { return norm_; }  ///< (1) f32: the last computed norm
  const Tensor& flag() const { return flag_; }  ///< (1) f32: nonzero = the step is skipped

 private:
  Device device_;
  double max_norm_;
  bool sticky_;
  Tensor norm_, scale_, flag_;
  Tensor partials_;  // GPU: kNormPartials floats of pass 1 (shared by the sharded all-reduce)
};

}  // namespace kiln
