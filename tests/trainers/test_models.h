// Test models and a test task for the trainer's seams, shared by
// tests/trainers/seams_test.cpp and tests/dist/data_parallel_test.cpp:
//
//   "test_frozen_buffered": an image model registered through the model
//   registry in one line (register_test_models): an MLP whose first layer is
//   frozen, plus a buffer that changes every training forward (a forward
//   count and a running mean of the inputs, like BatchNorm's statistics) and
//   starts at a rank-dependent value, so broadcast and save/resume show.
//
//   MaskedTask: a classification task on synthetic rows whose targets are
//   partly ignore_index, so micro-batches hold different numbers of loss
//   tokens (rows 1, 2, 3 and 9 of every 12 are ignored); its model is one
//   Linear (an MLP without hidden layers).
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "nn/loss.h"
#include "nn/mlp.h"
#include "runtime/process_info.h"
#include "trainers/config.h"
#include "trainers/models.h"
#include "trainers/task.h"
#include "trainers/trainer.h"

namespace kiln::test {

/// An MLP with a frozen first layer and a buffer "stats" = {training
/// forwards seen, running mean of the inputs}; CPU only (the buffer is
/// updated on the host).
class FrozenBufferedMlp : public nn::Module {
 public:
  FrozenBufferedMlp(const nn::MlpOptions& o, std::shared_ptr<nn::RngStream> rng) : mlp_(o, std::move(rng)) {
    register_module("", &mlp_);  // parameter names stay the MLP's ("layers.0.weight")
    // A different start on every rank: only rank 0's survives the broadcast.
    Tensor init = Tensor::from_vector({0.0f, 100.0f * static_cast<float>(process_info().rank)}, {2}, DType::f32,
                                      Device::cpu());
    stats_ = &register_buffer("stats", init);
    mlp_.children()[0].second->children()[0].second->set_trainable(false);  // layers.0: frozen
  }
  Tensor forward(const Tensor& x) override {
    if (training()) {
      float* s = stats_->value.data<float>();
      const std::vector<float> v = x.to_vector();
      double mean = 0;
      for (float f : v) mean += f;
      mean /= static_cast<double>(v.empty() ? 1 : v.size());
      s[0] += 1.0f;
      s[1] = 0.9f * s[1] + 0.1f * static_cast<float>(mean);
    }
    return mlp_.forward(x);
  }
  Tensor backward(const Tensor& dy) override { return mlp_.backward(dy); }
  std::string describe() const override { return "FrozenBufferedMlp"; }

 private:
  nn::Mlp mlp_;
  nn::Buffer* stats_ = nullptr;
};

inline BuiltModel build_frozen_buffered(const TrainConfig& cfg, const DataShape& shape,
                                        std::shared_ptr<nn::RngStream> rng) {
  nn::MlpOptions o;  // a test model has no schema section: fixed options
  o.in = shape.image.pixels();
  o.hidden = {32};
  o.out = shape.image.classes;
  o.seed = cfg.seed;
  BuiltModel b;
  b.module = std::make_unique<FrozenBufferedMlp>(o, std::move(rng));
  return b;
}

/// Registers the test model types (once per process).
inline void register_test_models() {
  static const bool once = [] {
    // The one line a new model needs (its builder is above):
    register_model({"test_frozen_buffered", ModelInput::images, build_frozen_buffered, nullptr});
    return true;
  }();
  (void)once;
}

/// configs/mlp_tiny.yaml's run with the registered test model (which has
/// no schema section of its own), plus `overrides`.
inline TrainConfig test_model_config(const std::vector<std::string>& overrides = {}) {
  register_test_models();
  return parse_config(
      "name: test_model\nseed: 7\ndevice: cpu\nmodel:\n  type: test_frozen_buffered\n"
      "data:\n  type: fashion_mnist\n  val_fraction: 0.05\noptim:\n  lr: 0.003\n"
      "schedule:\n  type: cosine\n  warmup_steps: 5\n"
      "train:\n  batch_size: 32\n  max_steps: 40\n  epochs: 0\n  eval_every: 20\n  eval_batches: 2\n"
      "  log_every: 5\n  checkpoint_every: 10\n  keep_last: 2\n",
      "test_model.yaml", overrides);
}

/// Synthetic classification rows with some targets ignored (see the top).
class MaskedTask : public Task {
 public:
  static constexpr int64_t kFeatures = 5, kClasses = 3;

  static bool ignored(int64_t row) {
    const int64_t r = row % 12;
    return r == 1 || r == 2 || r == 3 || r == 9;
  }
  static float feature(int64_t row, int64_t f) {
    return std::sin(0.7f * static_cast<float>(row * kFeatures + f)) + 0.1f * static_cast<float>(f);
  }
  static int32_t label(int64_t row) { return ignored(row) ? -100 : static_cast<int32_t>(row % kClasses); }

  MaskedTask(const TrainConfig& cfg, const TaskContext& ctx) : ctx_(ctx), rng_(std::make_shared<nn::RngStream>()) {
    nn::MlpOptions o;
    o.in = kFeatures;
    o.hidden = {};
    o.out = kClasses;
    o.seed = cfg.seed;
    model_ = std::make_unique<nn::Mlp>(o, rng_);
  }

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }

  /// This rank's rows of micro-batch m of step s, in the layout every task
  /// uses: the global batch in order, micro-batch by micro-batch, each split
  /// into the ranks' consecutive blocks.
  int64_t first_row(int64_t step, int64_t micro) const {
    const BatchPlan& p = ctx_.plan;
    return step * p.global + micro * p.micro * ctx_.world + ctx_.rank * p.micro;
  }

  StepBatch begin_step() override {
    const BatchPlan& p = ctx_.plan;
    StepBatch b;
    x_.assign(static_cast<size_t>(p.accum * p.micro * kFeatures), 0.0f);
    y_.assign(static_cast<size_t>(p.accum * p.micro), 0);
    for (int64_t m = 0; m < p.accum; ++m)
      for (int64_t i = 0; i < p.micro; ++i) {
        const int64_t row = first_row(step_, m) + i, k = m * p.micro + i;
        for (int64_t f = 0; f < kFeatures; ++f) x_[static_cast<size_t>(k * kFeatures + f)] = feature(row, f);
        y_[static_cast<size_t>(k)] = label(row);
        b.loss_tokens += !ignored(row);
      }
    b.examples = b.units = p.accum * p.micro;
    ++step_;
    return b;
  }

  void train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) override {
    const int64_t B = ctx_.plan.micro;
    const std::vector<float> xs(x_.begin() + micro * B * kFeatures, x_.begin() + (micro + 1) * B * kFeatures);
    const std::vector<int32_t> ys(y_.begin() + micro * B, y_.begin() + (micro + 1) * B);
    const Tensor x = Tensor::from_vector(xs, {B, kFeatures}, DType::f32, ctx_.device);
    const Tensor y = Tensor::from_vector(ys, {B}, ctx_.device);
    Tensor logits = model_->forward(x);
    stats.add_losses(loss_.forward_backward_rows(logits, y, kClasses, loss_scale), y);
    model_->backward(logits);
  }

  TaskStats evaluate(Split, int64_t) override { return {}; }
  bool has_split(Split s) const override { return s == Split::train; }
  int64_t train_examples() const override { return 1 << 20; }
  bool has_accuracy() const override { return false; }
  const char* unit() const override { return "samples"; }
  nlohmann::json data_state() const override { return {{"step", step_}}; }
  void restore_data_state(const nlohmann::json& s) override { step_ = s.at("step").get<int64_t>(); }
  std::string describe_data() const override { return "masked synthetic rows"; }

 private:
  TaskContext ctx_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Mlp> model_;
  nn::CrossEntropyLoss loss_;
  int64_t step_ = 0;
  std::vector<float> x_;
  std::vector<int32_t> y_;
};

/// Options that train MaskedTask and record the step's update of every
/// parameter (before - after) into *grad: with SGD at lr 1, no momentum, no
/// decay and no clipping, that is the step's gradient. Keep `before` alive
/// with the options.
inline TrainOptions masked_step_gradient(std::vector<std::vector<float>>* before,
                                         std::vector<std::vector<float>>* grad) {
  TrainOptions opt;
  opt.make_task = [](const TrainConfig& c, const TaskContext& ctx) -> std::unique_ptr<Task> {
    return std::make_unique<MaskedTask>(c, ctx);
  };
  opt.before_step = [before](int64_t, nn::Module& m) {
    for (nn::Parameter* p : m.parameters()) before->push_back(p->value.to_vector());
  };
  opt.after_step = [before, grad](const StepEvent& e) {
    const auto ps = e.model->parameters();
    for (size_t i = 0; i < ps.size(); ++i) {
      const std::vector<float> after = ps[i]->value.to_vector();
      std::vector<float> g(after.size());
      for (size_t j = 0; j < g.size(); ++j) g[j] = (*before)[i][j] - after[j];
      grad->push_back(g);
    }
  };
  return opt;
}

/// The overrides that make one step's update its gradient (see above).
inline std::vector<std::string> sgd_one_step_overrides() {
  return {"optim.type=sgd", "optim.lr=1", "optim.momentum=0", "optim.weight_decay=0", "optim.grad_clip=0",
          "schedule.type=constant", "schedule.warmup_steps=0", "train.max_steps=1", "train.eval_every=0",
          "train.checkpoint_every=0", "model.mlp.dropout=0"};
}

/// Largest |a - b| over matching elements (and a failure when shapes differ).
inline double max_abs_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double worst = 0;
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    EXPECT_EQ(a[i].size(), b[i].size());
    for (size_t j = 0; j < a[i].size() && j < b[i].size(); ++j)
      worst = std::max(worst, std::fabs(static_cast<double>(a[i][j]) - b[i][j]));
  }
  return worst;
}

/// dL/dW, dL/db of MaskedTask's model at its initial weights for rows
/// [first, first + n) in one pass: the mean over their loss tokens
/// (CrossEntropyLoss's own mean over targets that are not ignored).
inline std::vector<std::vector<float>> one_pass_gradient(const TrainConfig& cfg, int64_t first, int64_t n) {
  nn::MlpOptions o;
  o.in = MaskedTask::kFeatures;
  o.hidden = {};
  o.out = MaskedTask::kClasses;
  o.seed = cfg.seed;
  nn::Mlp m(o, std::make_shared<nn::RngStream>());
  m.to(Device::cpu());
  std::vector<float> xs;
  std::vector<int32_t> ys;
  for (int64_t r = first; r < first + n; ++r) {
    for (int64_t f = 0; f < MaskedTask::kFeatures; ++f) xs.push_back(MaskedTask::feature(r, f));
    ys.push_back(MaskedTask::label(r));
  }
  m.zero_grad();
  Tensor logits = m.forward(Tensor::from_vector(xs, {n, MaskedTask::kFeatures}, DType::f32, Device::cpu()));
  nn::CrossEntropyLoss().forward_backward(logits, ys, MaskedTask::kClasses, 1.0f);
  m.backward(logits);
  std::vector<std::vector<float>> g;
  for (nn::Parameter* p : m.parameters()) g.push_back(p->grad.to_vector());
  return g;
}

}  // namespace kiln::test
