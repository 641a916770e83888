// The one training loop every recipe runs:
//
//   for step in [start, total):
//     zero grads
//     for each micro-batch: task.train_micro_batch(1 / grad_accum)
//     norm = global grad norm; scale = clip(norm)
//     non-finite norm -> skip the step or stop (dist.on_nonfinite)
//     optimizer.step(lr_schedule(step), scale)
//     log / eval / checkpoint on their cadences
//   final eval on val and test; final checkpoint
//
// The run directory (output_dir) holds config.yaml (the resolved config),
// metrics.jsonl and checkpoints/. With train.resume = auto the newest valid
// checkpoint is loaded and the run continues; the result is bit-identical to
// an uninterrupted run (same device and process count).
#pragma once

#include <memory>
#include <string>

#include "runtime/device.h"
#include "trainers/config.h"
#include "trainers/task.h"

namespace kiln {

struct TrainResult {
  int64_t steps = 0;
  double final_train_loss = 0;
  double val_loss = 0, val_accuracy = 0;
  double test_loss = 0, test_accuracy = 0;
  double wall_s = 0;
  double examples_per_s = 0;
  std::string run_dir;
};

/// Builds the task a config describes (model + data + loss) on `device`.
std::unique_ptr<Task> make_task(const TrainConfig& cfg, Device device);

/// Trains per the config. Throws InputError for bad data/checkpoints and
/// Error for internal failures; never leaves a partial checkpoint.
TrainResult train(const TrainConfig& cfg);

/// Loads a checkpoint directory (or a run directory: its newest valid
/// checkpoint) with the config saved beside it and evaluates on `split`.
TaskStats evaluate_checkpoint(const std::string& path, Split split, const std::vector<std::string>& overrides,
                              TrainConfig* cfg_out = nullptr);

}  // namespace kiln
