// End-to-end tiny training runs on the CPU: a run trains (loss falls, files
// appear), two runs with one seed write identical metrics, and a run killed
// and resumed ends with weights identical to an uninterrupted run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/safetensors.h"
#include "tests/trainers/run_checks.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

std::string tiny_config() { return std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml"; }

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

TrainConfig tiny(const fs::path& out, std::vector<std::string> extra = {}) {
  extra.push_back("output_dir=" + out.string());
  return load_config(tiny_config(), extra);
}

std::vector<nlohmann::json> deterministic_metrics(const fs::path& run) { return test::deterministic_metrics(run.string()); }
std::map<std::string, std::vector<uint8_t>> final_weights(const fs::path& run) { return test::final_weights(run.string()); }

TEST(Train, TinyRunLearnsAndWritesItsFiles) {
  const fs::path dir = fresh_dir("basic");
  TrainResult r = train(tiny(dir));
  EXPECT_EQ(r.steps, 40);
  EXPECT_TRUE(fs::exists(dir / "config.yaml"));
  EXPECT_TRUE(fs::exists(dir / "metrics.jsonl"));
  auto m = read_metrics((dir / "metrics.jsonl").string());
  ASSERT_GE(m.size(), 8u);
  EXPECT_EQ(m.front()["split"], "train");
  EXPECT_TRUE(m.front().contains("grad_norm"));
  EXPECT_TRUE(m.front().contains("samples_per_s"));
  EXPECT_TRUE(m.front().contains("accuracy"));
  // ln(10) = 2.30 at random init; 40 steps of 32 samples must get well below.
  EXPECT_LT(r.final_train_loss, 1.6);
  EXPECT_GT(r.test_accuracy, 0.55);
  // keep_last: 2 → the step 30 and 40 checkpoints remain.
  EXPECT_EQ(list_checkpoints(dir.string()).size(), 2u);
  fs::remove_all(dir);
}

TEST(Train, SameSeedSameMetrics) {
  const fs::path a = fresh_dir("seed_a"), b = fresh_dir("seed_b");
  train(tiny(a));
  train(tiny(b));
  EXPECT_EQ(deterministic_metrics(a), deterministic_metrics(b));
  EXPECT_EQ(final_weights(a), final_weights(b));
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST(Train, ResumeEqualsUninterrupted) {
  const fs::path full = fresh_dir("full"), part = fresh_dir("part");
  train(tiny(full));
  // Run to the end, then delete every checkpoint after step 20, as if the
  // process had died right after saving step 20, and resume.
  train(tiny(part, {"train.checkpoint_every=10", "train.keep_last=0"}));
  for (auto& [step, path] : list_checkpoints(part.string()))
    if (step > 20) fs::remove_all(path);
  train(tiny(part, {"train.resume=auto", "train.keep_last=0"}));
  EXPECT_EQ(final_weights(part), final_weights(full));
  EXPECT_EQ(deterministic_metrics(part), deterministic_metrics(full));
  fs::remove_all(full);
  fs::remove_all(part);
}

}  // namespace
}  // namespace kiln
