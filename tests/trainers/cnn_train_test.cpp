// The CNN and ResNet recipes end to end on the CPU (configs/cnn_tiny.yaml,
// configs/resnet_tiny.yaml): a tiny run learns, saves BatchNorm's running
// statistics beside the weights, is deterministic, resumes exactly (buffers
// included), evaluates through `kiln eval`; augmentation and label smoothing
// change the run; the running statistics move once per step (grad_accum 2 ==
// the mean of both micro-batches); bad model.cnn / data.augment /
// train.label_smoothing settings stop with the key named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "data/safetensors.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kKiln = std::string(KILN_BINARY_DIR) + "/kiln";

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_cnn_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

TrainConfig tiny(const std::string& recipe, const fs::path& out, std::vector<std::string> extra = {}) {
  extra.push_back("output_dir=" + out.string());
  return load_config(std::string(KILN_SOURCE_DIR) + "/configs/" + recipe + ".yaml", extra);
}

std::vector<nlohmann::json> deterministic_metrics(const fs::path& run) {
  std::vector<nlohmann::json> m = read_metrics((run / "metrics.jsonl").string());
  for (auto& line : m) {
    line.erase("samples_per_s");
    line.erase("tokens_per_s");
    line.erase("mfu");
  }
  return m;
}

std::map<std::string, std::vector<uint8_t>> final_weights(const fs::path& run) {
  auto ck = find_latest_valid_checkpoint(run.string());
  EXPECT_TRUE(ck.has_value());
  SafetensorsFile f = read_safetensors((fs::path(*ck) / kCheckpointWeights).string());
  std::map<std::string, std::vector<uint8_t>> out;
  for (auto& [name, t] : f.tensors) out[name] = t.bytes();
  return out;
}

int run_cli(const std::string& args, std::string* out) {
  FILE* p = popen((kKiln + " " + args + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(CnnTrain, TinyCnnLearnsAndSavesRunningStatistics) {
  const fs::path dir = fresh_dir("cnn");
  TrainResult r = train(tiny("cnn_tiny", dir));
  EXPECT_EQ(r.steps, 40);
  // ln(10) = 2.30 at init (the smoothed loss's floor is higher than 0); 40
  // steps of 32 images get well below and well above chance on the test split.
  EXPECT_LT(r.final_train_loss, 2.0);
  EXPECT_GT(r.test_accuracy, 0.4);
  const auto w = final_weights(dir);
  EXPECT_TRUE(w.count("layers.0.weight") && w.count("layers.1.weight") && w.count("layers.1.running_mean") &&
              w.count("layers.1.running_var"));
  // The running statistics moved from their start (0 and 1).
  const std::vector<uint8_t>& rm = w.at("layers.1.running_mean");
  EXPECT_NE(rm, std::vector<uint8_t>(rm.size(), 0));
  std::string out;
  EXPECT_EQ(run_cli("eval '" + dir.string() + "' --split test", &out), 0) << out;
  fs::remove_all(dir);
}

TEST(CnnTrain, TinyResNetLearns) {
  const fs::path dir = fresh_dir("resnet");
  TrainResult r = train(tiny("resnet_tiny", dir, {"train.max_steps=60"}));
  EXPECT_LT(r.final_train_loss, 2.2);
  EXPECT_GT(r.test_accuracy, 0.2);
  const auto w = final_weights(dir);
  EXPECT_TRUE(w.count("stem.0.weight") && w.count("stages.1.0.shortcut.0.weight") &&
              w.count("stages.1.0.shortcut.1.running_var") && w.count("head.1.weight"));
  fs::remove_all(dir);
}

TEST(CnnTrain, SameSeedSameRunAndResumeIsExact) {
  const fs::path a = fresh_dir("a"), b = fresh_dir("b"), part = fresh_dir("part");
  train(tiny("cnn_tiny", a));
  train(tiny("cnn_tiny", b));
  EXPECT_EQ(deterministic_metrics(a), deterministic_metrics(b));
  EXPECT_EQ(final_weights(a), final_weights(b));
  train(tiny("cnn_tiny", part, {"train.keep_last=0"}));
  for (auto& [step, path] : list_checkpoints(part.string()))
    if (step > 20) fs::remove_all(path);
  train(tiny("cnn_tiny", part, {"train.resume=auto", "train.keep_last=0"}));
  EXPECT_EQ(final_weights(part), final_weights(a));  // weights and running statistics
  EXPECT_EQ(deterministic_metrics(part), deterministic_metrics(a));
  for (const auto& d : {a, b, part}) fs::remove_all(d);
}

TEST(CnnTrain, AugmentationAndLabelSmoothingChangeTheRun) {
  const fs::path base = fresh_dir("base"), plain = fresh_dir("plain"), hard = fresh_dir("hard");
  const std::vector<std::string> short_run = {"train.max_steps=10", "train.checkpoint_every=0", "train.eval_every=0"};
  std::vector<std::string> o = short_run;
  train(tiny("cnn_tiny", base, o));
  o.push_back("data.augment.crop_padding=0");
  o.push_back("data.augment.hflip=false");
  train(tiny("cnn_tiny", plain, o));
  o = short_run;
  o.push_back("train.label_smoothing=0");
  train(tiny("cnn_tiny", hard, o));
  const auto wb = final_weights(base);
  EXPECT_NE(wb, final_weights(plain));
  EXPECT_NE(wb, final_weights(hard));
  for (const auto& d : {base, plain, hard}) fs::remove_all(d);
}

TEST(CnnTrain, GradAccumMovesRunningStatisticsOncePerStep) {
  // One step of global batch 64: as 1 x 64 the running mean moves toward one
  // batch mean; as 2 x 32 toward the mean of the two micro-batch means. For
  // running_mean (a linear statistic) both are the same batch mean up to
  // rounding — and not what a PyTorch-style update per forward would give
  // (0.09·m_a + 0.1·m_b for momentum 0.1).
  const fs::path one = fresh_dir("acc1"), two = fresh_dir("acc2");
  const std::vector<std::string> o = {"train.max_steps=1", "train.eval_every=0", "train.checkpoint_every=1",
                                      "data.augment.crop_padding=0", "data.augment.hflip=false",
                                      "model.cnn.dropout=0"};
  std::vector<std::string> a = o, b = o;
  a.push_back("train.batch_size=64");
  b.push_back("train.batch_size=32");
  b.push_back("train.grad_accum=2");
  train(tiny("cnn_tiny", one, a));
  train(tiny("cnn_tiny", two, b));
  auto floats = [](const std::vector<uint8_t>& bytes) {
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  };
  const std::vector<float> m1 = floats(final_weights(one).at("layers.1.running_mean"));
  const std::vector<float> m2 = floats(final_weights(two).at("layers.1.running_mean"));
  ASSERT_EQ(m1.size(), m2.size());
  for (size_t c = 0; c < m1.size(); ++c) EXPECT_NEAR(m1[c], m2[c], 1e-5 + 1e-4 * std::fabs(m1[c])) << c;
  for (const auto& d : {one, two}) fs::remove_all(d);
}

TEST(CnnTrain, BadSettingsNameTheKey) {
  auto message = [&](const std::string& recipe, std::vector<std::string> o) -> std::string {
    try {
      tiny(recipe, fresh_dir("bad"), std::move(o));
    } catch (const InputError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(message("cnn_tiny", {"model.cnn.kernel=4"}).find("model.cnn.kernel"), std::string::npos);
  EXPECT_NE(message("cnn_tiny", {"model.cnn.hidden=0"}).find("model.cnn.dropout"), std::string::npos);
  EXPECT_NE(message("cnn_tiny", {"model.cnn.channels=[4, 8, 16]"}).find("blocks"), std::string::npos);
  EXPECT_NE(message("cnn_tiny", {"model.cnn.head=gap"}).find("model.cnn.head"), std::string::npos);
  EXPECT_NE(message("resnet_tiny", {"train.label_smoothing=1.0"}).find("train.label_smoothing"), std::string::npos);
  EXPECT_NE(message("resnet_tiny", {"data.augment.crop_padding=-1"}).find("data.augment.crop_padding"),
            std::string::npos);
  EXPECT_NE(message("resnet_tiny", {"model.resnet.hidden=3"}).find("model.resnet"), std::string::npos);
  EXPECT_EQ(message("resnet_tiny", {"model.resnet.zero_init_residual=true"}), "accepted");
}

}  // namespace
}  // namespace kiln
