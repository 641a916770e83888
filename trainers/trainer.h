// The one training loop every recipe runs:
//
//   for step in [start, total):
//     zero the trainable gradients
//     b = task.begin_step()                       (a step ahead on the loader thread)
//     tokens = Σ_ranks b.loss_tokens              (host all-reduce of three counts)
//     for each micro-batch: task.train_micro_batch(m, world / tokens, stats)
//       (the last one's backward launches the gradient buckets' all-reduce)
//     wait for the buckets (stream-ordered on the GPU)
//     norm, clip scale, non-finite flag = StepGuard (on the device)
//     optimizer.step(lr_schedule(step), {scale, flag})   (skips on the device;
//                                                          ZeRO-1: own shard, then all-gather)
//     at a log / eval / checkpoint / sample step: read the window's per-step
//     losses, norms and flags (the one host wait), report skipped steps or
//     stop (dist.on_nonfinite), log, then eval / sample / checkpoint
//   final eval on val and test; final checkpoint
//
// So between log windows a step never waits on the device (a test counts
// the host waits: runtime/stream.h's host_sync_count). With an after_step
// hook every step is a read point (the hook sees exact per-step values).
//
// Data parallel (`mpirun -np N kiln train ...`, design decision 5): one
// process per GPU (or per CPU share); rank 0's initial weights and buffers
// are broadcast; global batch = train.batch_size x grad_accum x N (or
// train.global_batch, from which grad_accum is derived); each task reads
// its shard of every global batch (its TaskContext says rank and world);
// gradients are averaged in buckets overlapped with backward
// (trainers/grad_reducer.h). Only rank 0 prints and writes metrics.jsonl and
// checkpoints; checkpoints hold the full optimizer state and the global data
// position, so a run resumes on any number of processes.
//
// Parameters and buffers (design decision 9): the optimizer, the gradient
// reducer, zero_grad, the global norm and the optimizer checkpoint see only
// trainable parameters; model.safetensors holds every parameter and every
// buffer (restored on resume, broadcast from rank 0 at start).
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
  bool has_accuracy = false;  ///< the task's predictions have an accuracy (classifiers)
  double wall_s = 0;
  double examples_per_s = 0;
  std::string run_dir;
};

/// Builds the task a config's data.type describes (trainers/make_task.cpp's
/// table) in the given context; its model comes from the model registry.
std::unique_ptr<Task> make_task(const TrainConfig& cfg, const TaskContext& ctx);

/// The compute dtype a config asks for on `device` (bf16 only on a GPU).
DType compute_dtype(const TrainConfig& cfg, Device device);

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
  /// Its rank and world are the run's (the tasks' context).
  Communicator* comm = nullptr;
  /// Builds the task instead of make_task (tests: a task with a loss mask).
  std::function<std::unique_ptr<Task>(const TrainConfig&, const TaskContext&)> make_task;
  /// Before a step's first micro-batch (step = steps done so far).
  std::function<void(int64_t step, nn::Module& model)> before_step;
  /// After each optimizer step, on every rank. Setting it makes every step
  /// read its loss, norm and flag back (a host wait per step).
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

/// What evaluate_checkpoint found.
struct CheckpointEval {
  TaskStats stats;
  bool has_accuracy = false;  ///< the task is a classifier
  std::string checkpoint;     ///< the checkpoint directory read
  TrainConfig cfg;            ///< the run's config (overrides applied)
};

/// Loads a checkpoint directory (or a run directory: its newest valid
/// checkpoint) with the config saved beside it and evaluates on `split`. A
/// config file (.yaml) instead evaluates the model that config starts from
/// (model.init_from, or the seeded initialization): "before training".
CheckpointEval evaluate_checkpoint(const std::string& path, Split split, const std::vector<std::string>& overrides);

}  // namespace kiln
