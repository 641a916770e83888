// Task: what a recipe plugs into the one training loop. A task owns the
// model, its data and its loss; the Trainer owns the optimizer, schedule,
// clipping, logging, evaluation cadence and checkpoints.
//
// Image classification (MLP, CNN/ResNet, ViT) and language modelling (GPT,
// SFT, LoRA) are tasks; they differ in data, model and loss, not in the loop.
//
// A new task is a class implementing Task, built from a TrainConfig and a
// TaskContext (everything it may know about the run: device, dtypes, batch
// plan, rank, world, communicator; design decision 10: tasks never reach for
// globals), plus one line in trainers/make_task.cpp's table. Its model comes
// from the model registry (trainers/models.h: build_model), so any model of
// the right input kind trains on it.
//
// One training step, as the trainer drives it:
//
//   StepBatch b = task.begin_step();              // host: the step's micro-batches
//   all-reduce b.loss_tokens over ranks           // the step's global token count
//   for micro in [0, accum): task.train_micro_batch(micro, world / global_tokens, stats);
//
// so the step's gradient is the mean over every loss token of the global
// batch, however the tokens fall into micro-batches and ranks. Losses and
// correct counts go into `stats` on the device; nothing in a step reads the
// device from the host.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/module.h"
#include "nn/rng.h"
#include "runtime/communicator.h"
#include "runtime/device.h"
#include "runtime/dtype.h"
#include "trainers/loss_stats.h"

namespace kiln {

enum class Split { train, val, test };
const char* split_name(Split s);

/// How a step's samples are split: global = micro x accum x world.
struct BatchPlan {
  int64_t micro = 0;   ///< train.batch_size (per process, per micro-batch)
  int64_t accum = 1;   ///< micro-batches per step
  int64_t global = 0;  ///< samples per optimizer step over all processes
};

/// What a task is told about the run it is part of. The trainer makes one
/// per run; tools that only evaluate or sample make a one-process one
/// (single_process_context).
struct TaskContext {
  Device device = Device::cpu();
  DType compute = DType::f32;  ///< activations and matmuls: f32, or bf16 on the GPU
  BatchPlan plan;              ///< the step's split into micro-batches and processes
  int rank = 0;                ///< this process's shard of every global batch
  int world = 1;
  /// The run's communicator (not owned; outlives the task). Tasks use it for
  /// work one rank does for all (rank 0 builds token data, the others wait).
  Communicator* comm = nullptr;

  bool is_root() const { return rank == 0; }
  /// *comm; Error when the context has none.
  Communicator& communicator() const;
};

/// A context for one process on `device` (kiln eval, sample, export, tests):
/// world 1, a single-process communicator owned by the process, the compute
/// dtype `precision` implies on `device`, and `plan` as given.
TaskContext single_process_context(Device device, DType compute, const BatchPlan& plan);

/// What one step's micro-batches hold on this rank; known on the host before
/// any compute (from the targets, which the host reads anyway).
struct StepBatch {
  int64_t examples = 0;     ///< images or sequences
  int64_t units = 0;        ///< what throughput counts (Task::unit(): images, or tokens)
  int64_t loss_tokens = 0;  ///< targets that count in the loss (not ignore_index)
};

/// Sums over a set of batches (kept as sums so they combine exactly).
struct TaskStats {
  double loss_sum = 0;      ///< Σ per-example (or per-token) losses
  int64_t loss_count = 0;   ///< examples (or tokens) in loss_sum
  int64_t correct = 0;      ///< classifiers: right predictions
  int64_t samples = 0;      ///< examples processed
  int64_t units = 0;        ///< throughput units processed (Task::unit())
  int64_t exact_match_correct = 0;  ///< evaluation by generation (SFT): answers that matched a reference
  int64_t exact_match_total = 0;    ///< prompts answered (0: no generation eval)
  void add(const TaskStats& o) {
    loss_sum += o.loss_sum; loss_count += o.loss_count; correct += o.correct;
    samples += o.samples; units += o.units;
    exact_match_correct += o.exact_match_correct; exact_match_total += o.exact_match_total;
  }
  double mean_loss() const { return loss_count ? loss_sum / static_cast<double>(loss_count) : 0.0; }
  double accuracy() const { return samples ? static_cast<double>(correct) / static_cast<double>(samples) : 0.0; }
  double exact_match() const {
    return exact_match_total ? static_cast<double>(exact_match_correct) / static_cast<double>(exact_match_total) : 0.0;
  }
};

class Task {
 public:
  virtual ~Task() = default;
  virtual nn::Module& model() = 0;
  /// The model's random stream (dropout); saved in checkpoints.
  virtual nn::RngStream& rng() = 0;

  /// Makes the next step's micro-batches current (prepared one step ahead on
  /// a loader thread with data.num_workers 1, and uploaded from pinned
  /// memory on a copy stream) and says what they hold on this rank. Called
  /// once per step, before the first train_micro_batch.
  virtual StepBatch begin_step() = 0;
  /// Forward, loss and backward on micro-batch `micro` (0 <= micro <
  /// plan.accum) of the current step; parameter gradients accumulate. The
  /// loss gradient is `loss_scale` · d(Σ of the micro-batch's token losses):
  /// the trainer passes world / (loss tokens of the step over all ranks), so
  /// after the gradient reducer's mean over ranks a step's gradient is the
  /// mean over its global batch's loss tokens. Adds the losses (and correct
  /// predictions) into `stats`' selected row, on the device.
  virtual void train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) = 0;

  /// Loss (and accuracy) over a split, at most `max_batches` batches (0 = all).
  /// This rank's share when the task shards the split (the trainer sums over
  /// ranks). May synchronize (once, at the end, to return the sums).
  virtual TaskStats evaluate(Split split, int64_t max_batches) = 0;
  virtual bool has_split(Split split) const = 0;
  /// Training examples in one epoch (over all ranks).
  virtual int64_t train_examples() const = 0;
  /// Whether predictions have an accuracy (classifiers).
  virtual bool has_accuracy() const = 0;
  /// "samples" or "tokens": what StepBatch::units and throughput count.
  virtual const char* unit() const = 0;
  /// Training FLOPs per example (forward + backward) for MFU; 0 = unknown.
  virtual double train_flops_per_example() const { return 0; }
  /// Data position for checkpoints (the first step not yet begun, whatever
  /// a loader thread has read ahead), and its restore.
  virtual nlohmann::json data_state() const = 0;
  virtual void restore_data_state(const nlohmann::json& s) = 0;
  /// A text sample from the model for the log (language models; "" = none).
  /// Called every train.sample_every steps with the model in eval mode.
  virtual std::string sample_text() { return ""; }
  /// One line describing the data ("fashion_mnist: 54000 train, 6000 val, 10000 test").
  virtual std::string describe_data() const = 0;
};

}  // namespace kiln
