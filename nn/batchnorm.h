// BatchNorm2d over the channels of NHWC images (kernels/batchnorm.h).
//
//   x (N, H, W, C) -> y (same shape); any (..., C) works: rows = numel / C
//   weight (C) = 1, bias (C) = 0: trainable, no weight decay
//   buffers: running_mean (C) = 0, running_var (C) = 1 (fp32 whatever the
//   activations), saved with the weights and broadcast like them
//
// Training normalizes with the batch's statistics (biased variance) and eval
// with the running ones, as torch.nn.BatchNorm2d. The running statistics move
// toward the batch mean and the unbiased batch variance with `momentum`.
//
// Data parallelism (design decision 5: N processes compute the steps one
// would): statistics are always those of one micro-batch (a fixed group of
// samples whatever the process count), and in `deferred` mode the running
// statistics are updated once per step instead of once per forward: each
// training forward adds its micro-batch's mean and unbiased variance to a
// per-step sum, and update_batchnorm_running_stats() averages those sums over
// the step's micro-batches on all ranks (through a caller-supplied sum over
// ranks) and applies one momentum update. Every rank then holds the same
// buffers, and one process with the same global batch computes the same
// update. Outside deferred mode (the default: tests, parity, benchmarks) each
// training forward updates the running statistics at once, as PyTorch does.
#pragma once

#include <cstdint>
#include <functional>

#include "nn/module.h"

namespace kiln::nn {

struct BatchNormOptions {
  int64_t channels = 0;
  float eps = 1e-5f;
  float momentum = 0.1f;  ///< running = (1 − momentum)·running + momentum·batch
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(const BatchNormOptions& o);

  Tensor forward(const Tensor& x) override;    // (..., C) -> (..., C)
  Tensor backward(const Tensor& dy) override;  // training forwards only
  std::string describe() const override;

  /// Deferred mode: accumulate batch statistics until apply_running_update().
  void set_deferred_running_update(bool on) { deferred_ = on; }
  bool deferred_running_update() const { return deferred_; }
  /// Training forwards whose statistics are waiting (deferred mode).
  int64_t pending() const { return pending_; }
  /// Their sums, (C) each: Σ batch means and Σ unbiased batch variances.
  Tensor& pending_mean_sum() { return mean_sum_; }
  Tensor& pending_var_sum() { return var_sum_; }
  /// Applies the momentum update with the pending sums. `sum_over_ranks`
  /// sums an fp32 tensor across processes in place (nullptr: one process);
  /// `ranks` is how many processes contribute (each with the same pending()
  /// count). Clears the sums. No-op when nothing is pending.
  void apply_running_update(const std::function<void(Tensor&)>& sum_over_ranks, int ranks);

  Parameter& weight() { return *weight_; }
  Parameter& bias() { return *bias_; }
  Tensor& running_mean() { return running_mean_->value; }
  Tensor& running_var() { return running_var_->value; }
  const BatchNormOptions& options() const { return o_; }

 protected:
  void on_device_change() override;

 private:
  BatchNormOptions o_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  Buffer* running_mean_ = nullptr;
  Buffer* running_var_ = nullptr;
  bool deferred_ = false;
  int64_t pending_ = 0;
  Tensor mean_sum_, var_sum_;  // (C) fp32 (f64 in f64 checks): pending sums
  Tensor x_, mean_, rstd_;     // saved for backward
};

/// Every BatchNorm2d in the tree under `m`.
std::vector<BatchNorm2d*> batchnorm_layers(Module& m);
/// Sets deferred mode on every BatchNorm2d under `m`.
void set_batchnorm_deferred(Module& m, bool on);
/// apply_running_update on every BatchNorm2d under `m` with pending
/// statistics; all their sums travel in one tensor, so `sum_over_ranks` is
/// called once per step (every rank must call this at the same point).
void update_batchnorm_running_stats(Module& m, const std::function<void(Tensor&)>& sum_over_ranks, int ranks);

}  // namespace kiln::nn
