// Every key `kiln keys` lists does what it says or is refused (issue 10,
// "honest config"):
//
//   - a table classifies every schema key: shown by the effect battery in
//     this file, shown by a named test elsewhere (the file must mention it),
//     owned by another recipe's section (its test file must mention it), or
//     refused until built; a key nobody classified fails the coverage test,
//     so a new key has to say which it is;
//   - each refused key stops `kiln train` with exit status 2 naming the key;
//   - the effect battery trains the tiny MLP with each key changed and checks
//     the final weights (or the metrics) differ from the default run's;
//   - model.init_from naming a missing file exits 2 before the run starts.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/harness/temp_dir.h"
#include "tests/trainers/run_checks.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/config_schema.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kSrc = KILN_SOURCE_DIR;
const std::string kTiny = kSrc + "/configs/mlp_tiny.yaml";
const std::string kGptTiny = kSrc + "/configs/gpt_tiny.yaml";

enum class How {
  effect,     ///< the battery below changes it and sees the difference
  elsewhere,  ///< a test in `where` shows its effect (the file mentions `what`)
  section,    ///< another recipe's key (by prefix); its tests in `where` mention `what`
  refused,    ///< not built: `what` as an override must exit 2 (on `where`'s config)
};

struct KeyClass {
  std::string key;  ///< a full key, or a prefix ending in '.' (How::section)
  How how;
  std::string where;
  std::string what;
};

const std::vector<KeyClass>& table() {
  static const std::vector<KeyClass> t = {
      // top level
      {"name", How::elsewhere, "tests/trainers/config_test.cpp", "c.name"},
      {"seed", How::effect, "", "seed=8"},
      {"device", How::elsewhere, "tests/trainers/cli_test.cpp", "device: cpu"},
      {"precision", How::elsewhere, "tests/nn/gpt_test.cpp", "bf16"},
      {"output_dir", How::elsewhere, "tests/trainers/train_test.cpp", "output_dir="},
      {"threads", How::elsewhere, "tests/runtime/blas_test.cpp", "threads"},
      // model
      {"model.type", How::elsewhere, "tests/trainers/test_models.h", "test_frozen_buffered"},
      {"model.init_from", How::elsewhere, "tests/trainers/seams_test.cpp", "InitFromLoadsAnMlpByName"},
      {"model.mlp.hidden", How::effect, "", "model.mlp.hidden=[16]"},
      {"model.mlp.activation", How::effect, "", "model.mlp.activation=gelu"},
      {"model.mlp.dropout", How::effect, "", "model.mlp.dropout=0.3"},
      {"model.gpt.vocab_size", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "vocab_size"},
      {"model.gpt.block_size", How::elsewhere, "tests/nn/gpt_test.cpp", "block_size"},
      {"model.gpt.n_layer", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "h.1.attn.c_attn.weight"},
      {"model.gpt.n_head", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "n_head"},
      {"model.gpt.n_embd", How::elsewhere, "tests/nn/gpt_test.cpp", "n_embd"},
      {"model.gpt.dropout", How::elsewhere, "tests/nn/layers_test.cpp", "Dropout"},
      {"model.gpt.bias", How::elsewhere, "tests/nn/gpt_test.cpp", "bias"},
      {"model.cnn.", How::section, "tests/dist/batchnorm_parallel_test.cpp", "cnn"},
      {"model.resnet.", How::section, "tests/nn/conv_layers_test.cpp", "ResNet"},
      {"model.vit.", How::section, "tests/trainers/vit_train_test.cpp", "vit"},
      // data
      {"data.type", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "gpt_tiny"},
      {"data.path", How::elsewhere, "tests/trainers/cli_test.cpp", "data.path"},
      {"data.val_fraction", How::effect, "", "data.val_fraction=0.2"},
      {"data.normalize", How::effect, "", "data.normalize=false"},
      {"data.mean", How::effect, "", "data.mean=0.5"},
      {"data.std", How::effect, "", "data.std=0.2"},
      {"data.shuffle", How::effect, "", "data.shuffle=false"},
      {"data.num_workers", How::elsewhere, "tests/trainers/seams_test.cpp", "LoaderThreadChangesNothing"},
      {"data.train_shards", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "data.train_shards"},
      {"data.val_shards", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "val_000000.bin"},
      {"data.tokenizer", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "data.tokenizer"},
      {"data.text_files", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "data.text_files"},
      {"data.val_path", How::section, "tests/trainers/sft_cli_test.cpp", "val"},
      {"data.test_path", How::section, "tests/trainers/sft_cli_test.cpp", "test"},
      {"data.pack", How::section, "tests/trainers/sft_cli_test.cpp", "pack"},
      {"data.skip_bad_lines", How::section, "tests/data/sft_dataset_test.cpp", "skip_bad_lines"},
      {"data.cmudict", How::section, "tests/trainers/sft_cli_test.cpp", "cmudict"},
      {"data.augment.", How::section, "tests/kernels/augment_test.cpp", "flip"},
      {"sft.", How::section, "tests/trainers/sft_task_test.cpp", "sft"},
      // optimizer and schedule
      {"optim.type", How::effect, "", "optim.type=sgd"},
      {"optim.lr", How::effect, "", "optim.lr=0.01"},
      {"optim.weight_decay", How::effect, "", "optim.weight_decay=0.5"},
      {"optim.beta1", How::effect, "", "optim.beta1=0.5"},
      {"optim.beta2", How::effect, "", "optim.beta2=0.9"},
      {"optim.eps", How::effect, "", "optim.eps=0.01"},
      {"optim.momentum", How::effect, "optim.type=sgd", "optim.momentum=0.5"},
      {"optim.nesterov", How::effect, "optim.type=sgd", "optim.nesterov=true"},
      {"optim.grad_clip", How::effect, "", "optim.grad_clip=0.01"},
      {"optim.no_decay_on_bias_and_norm", How::effect, "optim.weight_decay=0.5", "optim.no_decay_on_bias_and_norm=false"},
      {"schedule.type", How::effect, "", "schedule.type=constant"},
      {"schedule.warmup_steps", How::effect, "", "schedule.warmup_steps=1"},
      {"schedule.min_lr_ratio", How::effect, "", "schedule.min_lr_ratio=0.5"},
      {"schedule.step_size", How::effect, "schedule.type=step", "schedule.step_size=3"},
      {"schedule.gamma", How::effect, "schedule.type=step schedule.step_size=3", "schedule.gamma=0.5"},
      // training loop
      {"train.batch_size", How::effect, "", "train.batch_size=16"},
      {"train.grad_accum", How::effect, "", "train.grad_accum=2"},
      {"train.global_batch", How::elsewhere, "tests/dist/data_parallel_test.cpp", "train.global_batch"},
      {"train.epochs", How::elsewhere, "tests/trainers/sft_cli_test.cpp", "epochs"},
      {"train.max_steps", How::effect, "", "train.max_steps=7"},
      {"train.eval_every", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "val"},
      {"train.eval_batches", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "eval_batches"},
      {"train.log_every", How::elsewhere, "tests/dist/data_parallel_test.cpp", "log_every 5 over 20 steps"},
      {"train.checkpoint_every", How::elsewhere, "tests/trainers/train_test.cpp", "train.checkpoint_every=10"},
      {"train.keep_last", How::elsewhere, "tests/trainers/train_test.cpp", "keep_last: 2"},
      {"train.resume", How::elsewhere, "tests/trainers/train_test.cpp", "ResumeEqualsUninterrupted"},
      {"train.sample_every", How::elsewhere, "tests/trainers/gpt_train_test.cpp", "sampled"},
      {"train.deterministic", How::refused, "", "train.deterministic=false"},
      {"train.label_smoothing", How::section, "tests/kernels/label_smoothing_test.cpp", "smoothing"},
      // data parallelism
      {"dist.zero_stage", How::elsewhere, "tests/dist/data_parallel_test.cpp", "dist.zero_stage=1"},
      {"dist.bucket_mb", How::elsewhere, "tests/trainers/grad_reducer_test.cpp", "bucket_mb"},
      {"dist.on_nonfinite", How::elsewhere, "tests/dist/data_parallel_test.cpp", "dist.on_nonfinite=skip"},
      {"dist.timeout_s", How::elsewhere, "tests/dist/fault_test.cpp", "timeout"},
      // LoRA: each key's effect through the kiln binary
      {"lora.enabled", How::elsewhere, "tests/trainers/lora_train_test.cpp", "lora.enabled=true"},
      {"lora.rank", How::elsewhere, "tests/trainers/lora_train_test.cpp", "lora.rank=2"},
      {"lora.alpha", How::elsewhere, "tests/trainers/lora_train_test.cpp", "lora.alpha=2"},
      {"lora.targets", How::elsewhere, "tests/trainers/lora_train_test.cpp", "lora.targets=[mlp.c_fc]"},
      {"lora.dropout", How::elsewhere, "tests/trainers/lora_train_test.cpp", "lora.dropout=0.2"},
      // reporting
      {"mfu.peak_tflops", How::effect, "", "mfu.peak_tflops=1"},
  };
  return t;
}

const KeyClass* classify(const std::string& key) {
  for (const KeyClass& k : table()) {
    if (k.key == key) return &k;
    if (k.how == How::section && k.key.back() == '.' && key.rfind(k.key, 0) == 0) return &k;
  }
  return nullptr;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

TEST(Keys, EveryKeyIsClassifiedAndItsEvidenceExists) {
  const config::Schema& schema = train_config_schema();
  std::map<std::string, bool> used;
  for (const config::Field& f : schema.fields()) {
    const KeyClass* k = classify(f.path);
    ASSERT_NE(k, nullptr) << "key '" << f.path << "' is in `kiln keys` but tests/trainers/keys_test.cpp does not say "
                          << "whether it is implemented (and which test shows it) or refused";
    used[k->key] = true;
    if (k->how == How::elsewhere || k->how == How::section) {
      const std::string text = read_text(kSrc + "/" + k->where);
      EXPECT_FALSE(text.empty()) << f.path << ": evidence file " << k->where << " is missing";
      EXPECT_NE(text.find(k->what), std::string::npos) << f.path << ": " << k->where << " never mentions '" << k->what << "'";
    }
  }
  // Exact entries name keys that exist (another recipe's sections may not have landed yet).
  for (const KeyClass& k : table())
    if (k.how != How::section) {
      EXPECT_TRUE(used.count(k.key)) << "keys_test lists '" << k.key << "', which is no key";
    }
}

using test::CliRun;
using test::run_kiln;

TEST(Keys, RefusedKeysExitTwoNamingTheKey) {
  test::TempDir dir;
  for (const KeyClass& k : table()) {
    if (k.how != How::refused) continue;
    const std::string config = k.where == "gpt" ? kGptTiny : kTiny;
    const CliRun r = run_kiln("train " + config + " output_dir=" + dir.file("run") + " '" + k.what + "'");
    EXPECT_EQ(r.status, 2) << k.what << ":\n" << r.output;
    EXPECT_NE(r.output.find(k.key), std::string::npos) << k.what << ":\n" << r.output;
    EXPECT_FALSE(fs::exists(dir.file("run"))) << k.what << ": a run directory was made";
  }
}

TEST(Keys, InitFromAMissingFileExitsTwoBeforeTheRun) {
  test::TempDir dir;
  const CliRun r = run_kiln("train " + kTiny + " output_dir=" + dir.file("run") + " model.init_from=" +
                         dir.file("no_such.safetensors"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("model.init_from"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("run") + "/metrics.jsonl"));
}

// The final weights of a 10-step tiny run with `overrides`, and its metrics.
struct Outcome {
  std::string weights;
  std::vector<nlohmann::json> metrics;
};

Outcome train_tiny(const std::string& out, const std::vector<std::string>& overrides) {
  std::vector<std::string> o = {"output_dir=" + out, "train.max_steps=10", "train.eval_every=0",
                                "train.eval_batches=1", "train.checkpoint_every=0", "train.log_every=5",
                                "model.mlp.dropout=0"};
  o.insert(o.end(), overrides.begin(), overrides.end());
  train(load_config(kTiny, o));
  Outcome r;
  r.weights = test::read_file(find_latest_valid_checkpoint(out).value_or("") + "/" + kCheckpointWeights);
  r.metrics = read_metrics(out + "/metrics.jsonl");
  for (auto& line : r.metrics) line.erase("samples_per_s");
  return r;
}

TEST(Keys, EachKeyOfTheBatteryChangesTheRun) {
  test::TempDir dir;
  std::map<std::string, Outcome> base;  // by the entry's base overrides
  int n = 0;
  for (const KeyClass& k : table()) {
    if (k.how != How::effect) continue;
    SCOPED_TRACE(k.key + ": " + k.what);
    const std::vector<std::string> ground = split_words(k.where);
    if (!base.count(k.where)) base[k.where] = train_tiny(dir.file("base" + std::to_string(base.size())), ground);
    std::vector<std::string> changed = ground;
    changed.push_back(k.what);
    const Outcome got = train_tiny(dir.file("run" + std::to_string(n++)), changed);
    const Outcome& ref = base[k.where];
    ASSERT_FALSE(got.weights.empty());
    if (k.key == "mfu.peak_tflops") {  // reporting only: the train lines gain an MFU
      EXPECT_EQ(got.weights, ref.weights);
      EXPECT_TRUE(got.metrics.front().contains("mfu"));
      EXPECT_FALSE(ref.metrics.front().contains("mfu"));
      continue;
    }
    EXPECT_NE(got.weights, ref.weights) << "the key changed nothing in the trained weights";
  }
  EXPECT_GE(n, 20);
}

}  // namespace
}  // namespace kiln
