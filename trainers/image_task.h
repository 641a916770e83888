// Image classification: an MNIST-family dataset split into train/val (+ the
// test files), a seeded resumable sampler, whichever image model the registry
// builds for model.type (MLP today; CNN/ResNet and ViT register the same
// way), softmax cross-entropy.
//
// Images reach the model as (B, H, W, C) f32 (NHWC; bf16 on a bf16 GPU run),
// labels as (B) int32, both on the device. The training split's uint8 pixels
// live on the device (uploaded once); a StepLoader prepares each step's
// sample keys and labels a step ahead, and one kernel (kernels/augment.h)
// gathers the micro-batch by key, applies data.augment's crop and flip, and
// normalizes — the CPU backend runs the same reference. Models with
// BatchNorm update their running statistics once per step, averaged over the
// step's micro-batches on every rank (nn/batchnorm.h).
#pragma once

#include <memory>

#include "data/image_dataset.h"
#include "data/sampler.h"
#include "kernels/augment.h"
#include "nn/loss.h"
#include "trainers/config.h"
#include "trainers/models.h"
#include "trainers/step_loader.h"
#include "trainers/task.h"

namespace kiln {

class ImageClassificationTask : public Task {
 public:
  ImageClassificationTask(const TrainConfig& cfg, const TaskContext& ctx);

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }
  StepBatch begin_step() override;
  void train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) override;
  TaskStats evaluate(Split split, int64_t max_batches) override;
  bool has_split(Split s) const override;
  int64_t train_examples() const override { return train_.size(); }
  bool has_accuracy() const override { return true; }
  const char* unit() const override { return "samples"; }
  double train_flops_per_example() const override { return flops_; }
  nlohmann::json data_state() const override;
  void restore_data_state(const nlohmann::json& s) override;
  std::string describe_data() const override;

  const ImageShape& shape() const { return shape_; }

 private:
  // Writes one step's sample keys ((n, 2) int32: the halves of each int64
  // augment key) and labels (host) from the sampler.
  StepLoader::Filled fill_step(int32_t* keys, int32_t* y);
  nlohmann::json sampler_position() const;
  // (n, H, W, C) images on the device in the compute dtype.
  Tensor to_compute(const Tensor& x) const;

  TaskContext ctx_;
  ImageDataset train_, val_, test_;
  ImageShape shape_;
  std::unique_ptr<DistributedSampler> sampler_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Module> model_;
  nn::CrossEntropyLoss loss_;
  int64_t eval_batch_ = 0;
  double flops_ = 0;
  std::unique_ptr<StepLoader> loader_;
  Tensor train_pixels_;  // (N, H, W, C) u8: the training split in view order, on the device
  Tensor lut_;           // (256) f32: pixel value -> normalized input
  AugmentParams augment_;
  const StepLoader::Step* step_ = nullptr;  // the current step's device arrays
};

}  // namespace kiln
