// Image classification (MLP today; CNN/ResNet and ViT plug in the same way):
// an MNIST-family dataset split into train/val (+ the test files), a seeded
// resumable sampler, a model from the config, softmax cross-entropy.
#pragma once

#include <memory>

#include "data/image_dataset.h"
#include "data/sampler.h"
#include "nn/loss.h"
#include "trainers/config.h"
#include "trainers/task.h"

namespace kiln {

class ImageClassificationTask : public Task {
 public:
  ImageClassificationTask(const TrainConfig& cfg, Device device);

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }
  TaskStats train_micro_batch(float loss_scale) override;
  TaskStats evaluate(Split split, int64_t max_batches) override;
  bool has_split(Split s) const override;
  int64_t train_examples() const override { return train_.size(); }
  bool is_classifier() const override { return true; }
  const char* unit() const override { return "samples"; }
  double train_flops_per_example() const override { return flops_; }
  nlohmann::json data_state() const override;
  void restore_data_state(const nlohmann::json& s) override;
  std::string describe_data() const override;

 private:
  // Fills (x, y) for dataset indices idx and runs the model forward.
  Tensor forward_batch(const ImageDataset& ds, const int64_t* idx, int64_t n, std::vector<int32_t>* labels);

  Device device_;
  DType compute_;
  ImageDataset train_, val_, test_;
  std::unique_ptr<DistributedSampler> sampler_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Module> model_;
  nn::CrossEntropyLoss loss_;
  int64_t classes_ = 0;
  int64_t eval_batch_ = 0;
  int64_t step_samples_ = 0;  // global batch: an epoch ends on a step boundary
  double flops_ = 0;
};

}  // namespace kiln
