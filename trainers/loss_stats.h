// LossStats: a task's loss and accuracy sums, kept on the device until the
// trainer reads them (once per log window), so a training step never waits
// on the host for them.
//
// The sums live in rows of two doubles {loss_sum, correct}: the trainer keeps
// one row per step of the current log window (so it can still report every
// step's loss, skip and hook), an evaluation uses one. Tasks add into the
// selected row:
//
//   Tensor logits = model.forward(x);               // (B, classes)
//   stats.add_correct(logits, y, classes);          // before the loss overwrites logits
//   Tensor losses = loss.forward_backward_rows(logits, y, classes, scale);
//   stats.add_losses(losses, y);
//
// Each add is one small deterministic kernel (kernels/loss_stats.h) on the
// compute stream; on the CPU it runs at once, in row order, in double.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/device.h"
#include "runtime/tensor.h"

namespace kiln {

class LossStats {
 public:
  /// `rows` rows of {loss_sum, correct}, zeroed, on `device`.
  explicit LossStats(Device device, int64_t rows = 1);

  int64_t rows() const { return rows_; }
  /// Adds go to row `r` from now on (0 <= r < rows()).
  void select(int64_t r);
  int64_t selected() const { return row_; }

  /// loss_sum += Σ losses over the rows whose target is not ignore_index.
  /// losses (n) f32/f64 and targets (n) int32, on this device.
  void add_losses(const Tensor& losses, const Tensor& targets);
  /// correct += predictions of logits (n, Vp) whose argmax over the first V
  /// columns is the target (ignored targets never count).
  void add_correct(const Tensor& logits, const Tensor& targets, int64_t V);

  /// Zeroes every row (stream-ordered; no host wait).
  void zero();
  /// The rows on the host, row-major {loss_sum, correct, loss_sum, ...}. On a
  /// GPU this waits for the device (once: the one synchronization a log
  /// window makes).
  std::vector<double> read() const;

 private:
  Device device_;
  int64_t rows_ = 1;
  int64_t row_ = 0;
  Tensor sums_;  // (rows, 2) f64
};

}  // namespace kiln
