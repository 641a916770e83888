// The trainer's seams (issue 10): a model registered in one line trains; a
// frozen parameter gets no gradient and no optimizer state; a buffer is
// saved and resumed bit for bit; model.init_from loads an MLP (and a missing
// file stops the run before it starts); the step's gradient is the mean over
// the loss tokens of the whole step however they fall into micro-batches; a
// step makes no host wait between log windows; data.num_workers changes
// nothing but who prepares the batch.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "data/safetensors.h"
#include "runtime/stream.h"
#include "tests/harness/temp_dir.h"
#include "tests/trainers/test_models.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

TrainConfig tiny(const std::string& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"output_dir=" + out, "model.mlp.dropout=0"};
  o.insert(o.end(), extra.begin(), extra.end());
  return load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml", o);
}

TrainConfig tiny_test_model(const std::string& out, std::vector<std::string> extra = {}) {
  extra.push_back("output_dir=" + out);
  return test::test_model_config(extra);
}

std::string newest_checkpoint(const std::string& run) {
  auto ck = find_latest_valid_checkpoint(run);
  EXPECT_TRUE(ck.has_value()) << run;
  return ck.value_or("");
}

std::vector<uint8_t> file_tensor(const std::string& file, const std::string& name) {
  SafetensorsFile f = read_safetensors(file);
  EXPECT_TRUE(f.has(name)) << name << " in " << file;
  return f.has(name) ? f.at(name).bytes() : std::vector<uint8_t>{};
}

TEST(Seams, RegisteredModelWithFrozenLayerAndBufferTrains) {
  test::TempDir dir;
  const TrainConfig cfg = tiny_test_model(dir.file("run"));
  std::vector<float> frozen_before, frozen_after;
  TrainOptions opt;
  opt.before_step = [&](int64_t step, nn::Module& m) {
    if (step != 0) return;
    nn::Parameter* w0 = m.parameters()[0];
    EXPECT_EQ(w0->name, "layers.0.weight");
    EXPECT_FALSE(w0->trainable);
    EXPECT_FALSE(w0->grad.defined());  // frozen: no gradient tensor at all
    frozen_before = w0->value.to_vector();
    EXPECT_LT(m.num_trainable_parameters(), m.num_parameters());
    EXPECT_NE(m.summary().find("parameters: 330 trainable / 25450 total"), std::string::npos) << m.summary();
  };
  testing::internal::CaptureStderr();
  const TrainResult r = train(cfg, opt);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("parameters: 330 trainable / 25450 total"), std::string::npos) << log;
  EXPECT_EQ(r.steps, 40);
  // The head learns on the frozen random features: the loss falls.
  const std::vector<nlohmann::json> m = read_metrics(dir.file("run") + "/metrics.jsonl");
  ASSERT_FALSE(m.empty());
  EXPECT_LT(r.final_train_loss, m.front()["loss"].get<double>() - 0.05);

  const std::string ck = newest_checkpoint(dir.file("run"));
  const std::string weights = ck + "/" + kCheckpointWeights, optim = ck + "/" + kCheckpointOptimizer;
  // The frozen weights did not move, are saved, and have no optimizer state.
  const std::vector<uint8_t> w0 = file_tensor(weights, "layers.0.weight");
  frozen_after.resize(w0.size() / sizeof(float));
  std::memcpy(frozen_after.data(), w0.data(), w0.size());
  EXPECT_EQ(frozen_after, frozen_before);
  SafetensorsFile os = read_safetensors(optim);
  EXPECT_FALSE(os.has("layers.0.weight.exp_avg"));
  EXPECT_FALSE(os.has("layers.0.weight.exp_avg_sq"));
  EXPECT_TRUE(os.has("layers.2.weight.exp_avg"));
  // The buffer is saved beside the weights: 40 training forwards seen.
  const std::vector<uint8_t> b = file_tensor(weights, "stats");
  ASSERT_EQ(b.size(), 2 * sizeof(float));
  float stats[2];
  std::memcpy(stats, b.data(), sizeof stats);
  EXPECT_EQ(stats[0], 40.0f);
  EXPECT_NE(stats[1], 0.0f);
}

TEST(Seams, BufferSurvivesSaveAndResumeBitForBit) {
  test::TempDir dir;
  const std::string full = dir.file("full"), part = dir.file("part");
  train(tiny_test_model(full, {"train.keep_last=0"}));
  train(tiny_test_model(part, {"train.keep_last=0"}));
  for (auto& [step, path] : list_checkpoints(part))
    if (step > 20) fs::remove_all(path);
  train(tiny_test_model(part, {"train.keep_last=0", "train.resume=auto"}));
  const std::string a = newest_checkpoint(full) + "/" + kCheckpointWeights;
  const std::string b = newest_checkpoint(part) + "/" + kCheckpointWeights;
  EXPECT_EQ(file_tensor(a, "stats"), file_tensor(b, "stats"));
  for (const char* w : {"layers.0.weight", "layers.2.weight", "layers.2.bias"})
    EXPECT_EQ(file_tensor(a, w), file_tensor(b, w)) << w;
}

TEST(Seams, InitFromLoadsAnMlpByName) {
  test::TempDir dir;
  train(tiny(dir.file("a")));
  const std::string file = newest_checkpoint(dir.file("a")) + "/" + kCheckpointWeights;
  bool checked = false;
  TrainOptions opt;
  opt.before_step = [&](int64_t step, nn::Module& m) {
    if (step != 0) return;
    for (nn::Parameter* p : m.parameters()) {
      const std::vector<float> v = p->value.to_vector();
      const std::vector<uint8_t> bytes(reinterpret_cast<const uint8_t*>(v.data()),
                                       reinterpret_cast<const uint8_t*>(v.data() + v.size()));
      EXPECT_EQ(bytes, file_tensor(file, p->name)) << p->name;
    }
    checked = true;
  };
  train(tiny(dir.file("b"), {"model.init_from=" + file, "train.max_steps=2"}), opt);
  EXPECT_TRUE(checked);

  // A file of another shape names the tensor; a missing file stops before
  // anything is written.
  try {
    train(tiny(dir.file("c"), {"model.init_from=" + file, "model.mlp.hidden=[16]"}));
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.weight"), std::string::npos) << e.what();
  }
  try {
    train(tiny(dir.file("d"), {"model.init_from=" + dir.file("nothing.safetensors")}));
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.init_from"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("d")));
}

// One SGD step at lr 1 without clipping: the update is the gradient.
std::vector<std::vector<float>> step_gradient(const TrainConfig& cfg) {
  std::vector<std::vector<float>> before, grad;
  train(cfg, test::masked_step_gradient(&before, &grad));
  return grad;
}

std::vector<std::string> sgd_one_step(const std::string& out) {
  std::vector<std::string> o = test::sgd_one_step_overrides();
  o.push_back("output_dir=" + out);
  return o;
}

using test::max_abs_diff;

TEST(Seams, GradientIsTheMeanOverTheStepsLossTokens) {
  test::TempDir dir;
  // 3 micro-batches of 4 rows holding 1, 4 and 3 loss tokens.
  std::vector<std::string> o = sgd_one_step(dir.file("accum"));
  o.insert(o.end(), {"train.batch_size=4", "train.grad_accum=3"});
  const TrainConfig accum = load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml", o);
  const auto g_accum = step_gradient(accum);
  const auto ref = test::one_pass_gradient(accum, 0, 12);
  EXPECT_LT(max_abs_diff(g_accum, ref), 2e-7);
  // One micro-batch of all 12 rows: the same.
  std::vector<std::string> o1 = sgd_one_step(dir.file("one"));
  o1.insert(o1.end(), {"train.batch_size=12", "train.grad_accum=1"});
  const auto g_one = step_gradient(load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml", o1));
  EXPECT_LT(max_abs_diff(g_one, ref), 2e-7);
  // Weighting micro-batches equally (the mean of the three micro-batch
  // means) is measurably another gradient: the comparison above can fail.
  std::vector<std::vector<float>> by_micro = test::one_pass_gradient(accum, 0, 4);
  for (int64_t m = 1; m < 3; ++m) {
    const auto gm = test::one_pass_gradient(accum, 4 * m, 4);
    for (size_t i = 0; i < gm.size(); ++i)
      for (size_t j = 0; j < gm[i].size(); ++j) by_micro[i][j] += gm[i][j];
  }
  for (auto& v : by_micro)
    for (float& x : v) x /= 3.0f;
  EXPECT_GT(max_abs_diff(by_micro, ref), 1e-3);
}

TEST(Seams, NoHostWaitBetweenLogWindows) {
  test::TempDir dir;
  // Syncs counted at the start of every step (before_step reads a host
  // counter, no device). Only the first step and steps that end a log window
  // (every 5th) may wait; eval, sampling and checkpoints are off until the end.
  std::vector<int64_t> at;
  TrainOptions opt;
  opt.before_step = [&](int64_t, nn::Module&) { at.push_back(host_sync_count()); };
  train(tiny(dir.file("run"), {"train.max_steps=20", "train.log_every=5", "train.eval_every=0",
                              "train.checkpoint_every=0"}),
        opt);
  ASSERT_EQ(at.size(), 20u);
  for (size_t s = 0; s + 1 < at.size(); ++s) {
    // Step s + 1 (1-based) logs, or is the first (read for the console line).
    const bool window_end = (s + 1) % 5 == 0 || s == 0;
    if (window_end) EXPECT_GT(at[s + 1], at[s]) << "step " << s + 1 << " reads its window";
    else EXPECT_EQ(at[s + 1], at[s]) << "step " << s + 1 << " waited on the device";
  }
}

TEST(Seams, LoaderThreadChangesNothingButWhoPreparesTheBatch) {
  test::TempDir dir;
  train(tiny(dir.file("thread"), {"data.num_workers=1"}));
  train(tiny(dir.file("inline"), {"data.num_workers=0"}));
  auto strip = [](std::vector<nlohmann::json> m) {
    for (auto& line : m) line.erase("samples_per_s");
    return m;
  };
  EXPECT_EQ(strip(read_metrics(dir.file("thread") + "/metrics.jsonl")),
            strip(read_metrics(dir.file("inline") + "/metrics.jsonl")));
  const std::string a = newest_checkpoint(dir.file("thread")), b = newest_checkpoint(dir.file("inline"));
  EXPECT_EQ(test::read_file(a + "/" + kCheckpointWeights), test::read_file(b + "/" + kCheckpointWeights));
  EXPECT_EQ(test::read_file(a + "/" + kCheckpointState), test::read_file(b + "/" + kCheckpointState));
}

}  // namespace
}  // namespace kiln
