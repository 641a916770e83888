// Task: what a recipe plugs into the one training loop. A task owns the
// model, its data and its loss; the Trainer owns the optimizer, schedule,
// clipping, logging, evaluation cadence and checkpoints.
//
// Image classification (MLP, CNN/ResNet, ViT) and language modelling (GPT,
// SFT, LoRA) are tasks; they differ in data, model and loss, not in the loop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/module.h"
#include "nn/rng.h"

namespace kiln {

enum class Split { train, val, test };
const char* split_name(Split s);

/// Sums over a set of batches (kept as sums so they combine exactly).
struct TaskStats {
  double loss_sum = 0;      ///< Σ per-example (or per-token) losses
  int64_t loss_count = 0;   ///< examples (or tokens) in loss_sum
  int64_t correct = 0;      ///< classifiers: right predictions
  int64_t samples = 0;      ///< examples processed
  int64_t tokens = 0;       ///< tokens processed (language models)
  void add(const TaskStats& o) {
    loss_sum += o.loss_sum; loss_count += o.loss_count; correct += o.correct;
    samples += o.samples; tokens += o.tokens;
  }
  double mean_loss() const { return loss_count ? loss_sum / static_cast<double>(loss_count) : 0.0; }
  double accuracy() const { return samples ? static_cast<double>(correct) / static_cast<double>(samples) : 0.0; }
};

class Task {
 public:
  virtual ~Task() = default;
  virtual nn::Module& model() = 0;
  /// The model's random stream (dropout); saved in checkpoints.
  virtual nn::RngStream& rng() = 0;
  /// Forward, loss and backward on the next training micro-batch; parameter
  /// gradients accumulate. The loss gradient is scaled by `loss_scale`
  /// (1 / micro-batches per step), so a step's gradient is the mean over its
  /// global batch.
  virtual TaskStats train_micro_batch(float loss_scale) = 0;
  /// Loss (and accuracy) over a split, at most `max_batches` batches (0 = all).
  virtual TaskStats evaluate(Split split, int64_t max_batches) = 0;
  virtual bool has_split(Split split) const = 0;
  /// Training examples in one epoch (over all ranks).
  virtual int64_t train_examples() const = 0;
  virtual bool is_classifier() const = 0;
  /// "samples" or "tokens": the throughput unit.
  virtual const char* unit() const = 0;
  /// Training FLOPs per example (forward + backward) for MFU; 0 = unknown.
  virtual double train_flops_per_example() const { return 0; }
  /// Data position for checkpoints, and its restore.
  virtual nlohmann::json data_state() const = 0;
  virtual void restore_data_state(const nlohmann::json& s) = 0;
  /// A text sample from the model for the log (language models; "" = none).
  /// Called every train.sample_every steps with the model in eval mode.
  virtual std::string sample_text() { return ""; }
  /// One line describing the data ("fashion_mnist: 54000 train, 6000 val, 10000 test").
  virtual std::string describe_data() const = 0;
};

}  // namespace kiln
