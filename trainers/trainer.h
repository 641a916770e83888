// The one training loop every recipe runs:
//
//   for step in [start, total):
//     zero grads
//     for each micro-batch: task.train_micro_batch(1 / grad_accum)
//       (the last one's backward launches the gradient buckets' all-reduce)
//     wait for the buckets; sum loss/accuracy counts over ranks
//     norm = global grad norm; scale = clip(norm)
//     non-finite loss or norm on any rank -> every rank skips the step or
//     stops (dist.on_nonfinite)
//     optimizer.step(lr_schedule(step), scale)   (ZeRO-1: own shard, then all-gather)
//     log / eval / checkpoint on their cadences
//   final eval on val and test; final checkpoint
//
// Data parallel (`mpirun -np N kiln train ...`, design decision 5): one
// process per GPU (or per CPU share); rank 0's initial weights are broadcast;
// global batch = train.batch_size x grad_accum x N (or train.global_batch,
// from which grad_accum is derived); each rank reads its shard of every
// global batch (tasks read rank/world from process_info()); gradients are
// averaged in buckets overlapped with backward (trainers/grad_reducer.h).
// Only rank 0 prints and writes metrics.jsonl and checkpoints; checkpoints
// hold the full optimizer state and the global data position, so a run
// resumes on any number of processes.
//
// The run directory (output_dir) holds config.yaml (the resolved config),
// metrics.jsonl and checkpoints/. With train.resume = auto the newest valid
// checkpoint is loaded and the run continues; the result is bit-identical to
// an uninterrupted run (same device and process count).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "runtime/communicator.h"
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

/// How a step's samples are split: global = micro x accum x world.
struct BatchPlan {
  int64_t micro = 0;   ///< train.batch_size (per process, per micro-batch)
  int64_t accum = 1;   ///< micro-batches per step
  int64_t global = 0;  ///< samples per optimizer step over all processes
};
/// train.global_batch (when set) must be a multiple of batch_size x world;
/// grad_accum is then derived from it. InputError naming the keys otherwise.
BatchPlan plan_batch(const TrainConfig& cfg, int world);

/// A finished optimizer step, as TrainOptions::after_step sees it.
struct StepEvent {
  int64_t step = 0;        ///< steps done (1-based)
  double loss = 0;         ///< mean training loss of the step over all ranks
  double grad_norm = 0;    ///< global norm of the mean gradient (before clipping)
  bool skipped = false;    ///< non-finite loss or gradient: no update
  nn::Module* model = nullptr;
};

/// Hooks for tests and tools.
struct TrainOptions {
  /// Communicator to train over (not owned); null: make_communicator() for
  /// this process (single without a launcher, MPI or NCCL under mpirun).
  /// With one given, process_info() reports its rank and world for the run.
  Communicator* comm = nullptr;
  /// Before a step's first micro-batch (step = steps done so far).
  std::function<void(int64_t step, nn::Module& model)> before_step;
  /// After each optimizer step, on every rank.
  std::function<void(const StepEvent&)> after_step;
};

/// dist.on_nonfinite = stop: every rank throws it at the same step.
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& what) : Error(what) {}
};

/// Trains per the config. Throws InputError for bad data/checkpoints and
/// Error for internal failures; never leaves a partial checkpoint. With more
/// than one process, any error other than NonFiniteError (and the
/// global-batch check, which comes first) ends the whole job (MPI_Abort)
/// after printing it, so no rank waits out the collective timeout.
TrainResult train(const TrainConfig& cfg, const TrainOptions& opt = {});

/// Loads a checkpoint directory (or a run directory: its newest valid
/// checkpoint) with the config saved beside it and evaluates on `split`.
TaskStats evaluate_checkpoint(const std::string& path, Split split, const std::vector<std::string>& overrides,
                              TrainConfig* cfg_out = nullptr);

}  // namespace kiln
