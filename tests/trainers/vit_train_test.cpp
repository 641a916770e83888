// The ViT recipe end to end on the CPU (configs/vit_tiny.yaml): a tiny run
// learns, is deterministic, resumes exactly (class token and positions
// included), mean pooling trains too, `kiln eval` reads its checkpoint; bad
// model.vit settings stop with the key named before anything is built.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
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
const std::string kTiny = std::string(KILN_SOURCE_DIR) + "/configs/vit_tiny.yaml";

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_vit_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

TrainConfig tiny(const fs::path& out, std::vector<std::string> extra = {}) {
  extra.push_back("output_dir=" + out.string());
  return load_config(kTiny, extra);
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

struct CliRun {
  int status = -1;
  std::string out;  // stdout and stderr
};

CliRun run_cli(const std::string& args) {
  CliRun r;
  FILE* p = popen((kKiln + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

TEST(VitTrain, TinyRunLearns) {
  const fs::path dir = fresh_dir("basic");
  TrainResult r = train(tiny(dir));
  EXPECT_EQ(r.steps, 40);
  // ln(10) = 2.30 at init; 40 steps of 32 images of a one-block ViT get below 2.1
  // and well above chance (0.1) on the test split.
  EXPECT_LT(r.final_train_loss, 2.1);
  EXPECT_GT(r.test_accuracy, 0.2);
  const auto w = final_weights(dir);
  EXPECT_TRUE(w.count("cls_token") && w.count("pos_embed") && w.count("patch_embed.proj.weight") &&
              w.count("blocks.0.attn.c_attn.weight") && w.count("head.weight"));
  // The checkpoint evaluates through the CLI.
  const CliRun e = run_cli("eval '" + dir.string() + "' --split test");
  EXPECT_EQ(e.status, 0) << e.out;
  fs::remove_all(dir);
}

TEST(VitTrain, SameSeedSameRunAndResumeIsExact) {
  const fs::path a = fresh_dir("a"), b = fresh_dir("b"), part = fresh_dir("part");
  train(tiny(a));
  train(tiny(b));
  EXPECT_EQ(deterministic_metrics(a), deterministic_metrics(b));
  EXPECT_EQ(final_weights(a), final_weights(b));
  train(tiny(part, {"train.keep_last=0"}));
  for (auto& [step, path] : list_checkpoints(part.string()))
    if (step > 20) fs::remove_all(path);
  train(tiny(part, {"train.resume=auto", "train.keep_last=0"}));
  EXPECT_EQ(final_weights(part), final_weights(a));
  EXPECT_EQ(deterministic_metrics(part), deterministic_metrics(a));
  for (const auto& d : {a, b, part}) fs::remove_all(d);
}

TEST(VitTrain, MeanPoolingAndDropoutTrain) {
  const fs::path dir = fresh_dir("mean");
  TrainResult r = train(tiny(dir, {"model.vit.pool=mean", "model.vit.dropout=0.1"}));
  EXPECT_LT(r.final_train_loss, 2.2);
  const auto w = final_weights(dir);
  EXPECT_EQ(w.count("cls_token"), 0u);  // no class token with mean pooling
  EXPECT_EQ(w.count("pos_embed"), 1u);
  fs::remove_all(dir);
}

TEST(VitTrain, BadSettingsNameTheKey) {
  const fs::path dir = fresh_dir("bad");
  auto message = [&](std::vector<std::string> o) -> std::string {
    try {
      train(tiny(dir, std::move(o)));
    } catch (const InputError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(message({"model.vit.patch=5"}).find("model.vit.patch: 5 does not divide the 28x28 images"),
            std::string::npos);
  EXPECT_NE(message({"model.vit.heads=3"}).find("model.vit.heads"), std::string::npos);
  EXPECT_NE(message({"model.vit.pool=avg"}).find("model.vit.pool"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "checkpoints"));  // stopped before training
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
