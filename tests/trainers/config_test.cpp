// Config loading: a table of bad configs (each must be an InputError whose
// message names the file, the position and the key path), good configs with
// their defaults, command-line overrides, and the to_yaml round trip.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "trainers/config.h"
#include "trainers/config_schema.h"
#include "trainers/models.h"

namespace fs = std::filesystem;
using kiln::InputError;
using kiln::TrainConfig;

namespace {

// The schema has sections for models that may not be registered yet (cnn,
// resnet, vit): placeholders make those types valid here, so the sections'
// rules are tested whether or not the models have landed (the config layer
// needs only a type's name and input).
const bool kPlaceholders = [] {
  for (const char* t : {"cnn", "resnet", "vit"})
    if (!kiln::find_model(t))
      kiln::register_model({t, kiln::ModelInput::images,
                            [](const TrainConfig&, const kiln::DataShape&,
                               std::shared_ptr<kiln::nn::RngStream>) -> kiln::BuiltModel {
                              throw InputError("placeholder model: never built in the config test");
                            },
                            nullptr});
  return true;
}();

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("kiln_config_test_" + std::to_string(::getpid()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p) << text;
    return p.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

const TempDir& tmp() {
  static TempDir d;
  return d;
}

/// Loads `text` from a file called `file`; returns the InputError's message,
/// or fails the test if anything else (or nothing) is thrown.
std::string load_error(const std::string& file, const std::string& text, const std::vector<std::string>& overrides = {}) {
  const std::string path = tmp().write(file, text);
  try {
    kiln::load_config(path, overrides);
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << file << ": expected kiln::InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << file << ": expected kiln::InputError, but the config loaded";
  return "";
}

TrainConfig load(const std::string& file, const std::string& text, const std::vector<std::string>& overrides = {}) {
  return kiln::load_config(tmp().write(file, text), overrides);
}

struct BadCase {
  const char* what;
  const char* file;
  std::string yaml;
  std::vector<std::string> overrides;
  std::vector<std::string> expect;  // substrings of the message (besides the file name)
};

const std::string kMlp = "model:\n  type: mlp\n";

std::vector<BadCase> bad_cases() {
  return {
      {"malformed YAML (unclosed flow list)", "malformed.yaml", "model:\n  type: mlp\n  mlp:\n    hidden: [256, 128\ntrain:\n  epochs: 2\n", {},
       {"malformed.yaml:5:", "malformed YAML"}},
      {"malformed YAML (bad indentation)", "indent.yaml", "model:\n  type: mlp\n   bad: 1\n", {},
       {"indent.yaml:3:", "malformed YAML"}},
      {"unknown key at depth 1", "unknown1.yaml", kMlp + "trian:\n  epochs: 2\n", {},
       {"unknown1.yaml:3:1:", "unknown key 'trian'", "did you mean 'train'?"}},
      {"unknown key at depth 1, longer name", "unknown1b.yaml", kMlp + "optimizer:\n  lr: 0.1\n", {},
       {"unknown1b.yaml:3:1:", "unknown key 'optimizer'", "did you mean 'optim'?"}},
      {"unknown key at depth 2", "unknown2.yaml", kMlp + "train:\n  batch_sise: 32\n", {},
       {"unknown2.yaml:4:3:", "unknown key 'train.batch_sise'", "did you mean 'train.batch_size'?"}},
      {"unknown key at depth 3", "unknown3.yaml", "model:\n  type: gpt\n  gpt:\n    n_layers: 4\n", {},
       {"unknown3.yaml:4:5:", "unknown key 'model.gpt.n_layers'", "did you mean 'model.gpt.n_layer'?"}},
      {"key one level too high", "misplaced.yaml", "model:\n  type: gpt\n  n_embd: 64\n", {},
       {"misplaced.yaml:3:3:", "unknown key 'model.n_embd'", "did you mean 'model.gpt.n_embd'?"}},
      {"key in the wrong section", "wrong_section.yaml", kMlp + "train:\n  lr: 0.1\n", {},
       {"wrong_section.yaml:4:3:", "unknown key 'train.lr'", "did you mean 'optim.lr'?"}},
      {"unknown key with nothing close", "unknown_far.yaml", kMlp + "train:\n  zzzzzzzz: 1\n", {},
       {"unknown_far.yaml:4:3:", "unknown key 'train.zzzzzzzz'", "valid keys in 'train':", "batch_size"}},
      {"duplicate key", "dup.yaml", kMlp + "train:\n  batch_size: 32\n  epochs: 2\n  batch_size: 64\n", {},
       {"dup.yaml:6:3:", "duplicate key 'train.batch_size'", "first given at", "dup.yaml:4:3"}},
      {"duplicate top-level section", "dup_top.yaml", kMlp + "train:\n  epochs: 2\nmodel:\n  type: cnn\n", {},
       {"dup_top.yaml:5:1:", "duplicate key 'model'"}},
      {"wrong type: word for integer", "type_int.yaml", kMlp + "train:\n  batch_size: abc\n", {},
       {"type_int.yaml:4:15:", "train.batch_size: expected an integer, got 'abc'"}},
      {"wrong type: fraction for integer", "type_frac.yaml", kMlp + "train:\n  epochs: 1.5\n", {},
       {"type_frac.yaml:4:11:", "train.epochs: expected an integer, got '1.5'"}},
      {"wrong type: quoted number", "type_quoted.yaml", kMlp + "train:\n  batch_size: \"64\"\n", {},
       {"type_quoted.yaml:4:15:", "train.batch_size: expected an integer, got the quoted string '64'"}},
      {"wrong type: word for number", "type_num.yaml", kMlp + "optim:\n  lr: fast\n", {},
       {"type_num.yaml:4:7:", "optim.lr: expected a number, got 'fast'"}},
      {"wrong type: bool", "type_bool.yaml", kMlp + "data:\n  shuffle: maybe\n", {},
       {"type_bool.yaml:4:12:", "data.shuffle: expected true or false, got 'maybe'"}},
      {"wrong type: scalar for list", "type_list.yaml", kMlp + "  mlp:\n    hidden: 256\n", {},
       {"type_list.yaml:4:13:", "model.mlp.hidden: expected a list of integers, got '256'"}},
      {"wrong type: list element", "type_elem.yaml", kMlp + "  mlp:\n    hidden: [256, x]\n", {},
       {"type_elem.yaml:4:19:", "model.mlp.hidden[1]: expected an integer, got 'x'"}},
      {"wrong type: map for value", "type_map.yaml", kMlp + "optim:\n  lr:\n    value: 1\n", {},
       {"type_map.yaml:", "optim.lr: expected a number, got a map"}},
      {"missing value", "type_null.yaml", kMlp + "optim:\n  lr:\n", {},
       {"type_null.yaml:4:3:", "optim.lr: expected a number, got nothing"}},
      {"bad choice with suggestion", "choice.yaml", "model:\n  type: mpl\n", {},
       {"choice.yaml:2:9:", "model.type: expected one of mlp", "got 'mpl'",
        "did you mean 'mlp'?"}},
      {"section given a value", "section_scalar.yaml", kMlp + "train: 5\n", {},
       {"section_scalar.yaml:3:8:", "train: expected a map of settings, got '5'"}},
      {"document is a list", "doc_list.yaml", "- model\n- train\n", {},
       {"doc_list.yaml:1:1:", "the document: expected a map of settings, got a list"}},
      {"out of range: integer", "range_int.yaml", kMlp + "train:\n  batch_size: 0\n", {},
       {"range_int.yaml:4:15:", "train.batch_size: 0 is out of range: must be in [1, 1048576]"}},
      {"out of range: exclusive bound", "range_open.yaml", kMlp + "optim:\n  lr: 0\n", {},
       {"range_open.yaml:4:7:", "optim.lr: 0 is out of range: must be in (0.0, 10.0]"}},
      {"out of range: beta2 = 1", "range_beta.yaml", kMlp + "optim:\n  beta2: 1.0\n", {},
       {"range_beta.yaml:4:10:", "optim.beta2: 1.0 is out of range: must be in [0.0, 1.0)"}},
      {"out of range: list element", "range_elem.yaml", kMlp + "  mlp:\n    hidden: [256, -3]\n", {},
       {"range_elem.yaml:4:19:", "model.mlp.hidden[1]: -3 is out of range"}},
      {"out of range: integer overflow", "range_huge.yaml", kMlp + "seed: 99999999999999999999999\n", {},
       {"range_huge.yaml:3:7:", "seed: 99999999999999999999999 is out of range"}},
      {"section not applicable to model type", "na_section.yaml", kMlp + "  gpt:\n    n_layer: 4\n", {},
       {"na_section.yaml:3:3:", "model.gpt: does not apply when model.type is 'mlp'",
        "applies only when model.type is gpt"}},
      {"field not applicable to optimizer type", "na_field.yaml", kMlp + "optim:\n  type: adamw\n  momentum: 0.9\n", {},
       {"na_field.yaml:5:3:", "optim.momentum: does not apply when optim.type is 'adamw'"}},
      {"section not applicable to data type", "na_sft.yaml", kMlp + "sft:\n  max_len: 10\n", {},
       {"na_sft.yaml:3:1:", "sft: does not apply when data.type is 'fashion_mnist'"}},
      {"missing model.type", "no_type.yaml", "train:\n  epochs: 2\n", {},
       {"no_type.yaml", "missing required key 'model.type'"}},
      {"empty file", "empty.yaml", "", {}, {"empty.yaml", "missing required key 'model.type'"}},
      {"heads do not divide width", "heads.yaml",
       "model:\n  type: gpt\n  gpt:\n    n_embd: 100\n    n_head: 12\ndata:\n  type: tokens\n  train_shards: x/*.bin\n", {},
       {"heads.yaml:5:5:", "model.gpt.n_head: 12 heads do not divide n_embd 100"}},
      {"stage lists of different lengths", "stages.yaml",
       "model:\n  type: resnet\n  resnet:\n    channels: [16, 32]\n    blocks: [2, 2, 2]\n", {},
       {"stages.yaml:5:5:", "model.resnet.blocks: channels has 2 stages but blocks has 3"}},
      {"image data with a GPT", "gpt_images.yaml", "model:\n  type: gpt\n", {},
       {"gpt_images.yaml", "data.type: image data needs an image model"}},
      {"token data without shards", "no_shards.yaml", "model:\n  type: gpt\ndata:\n  type: tokens\n", {},
       {"no_shards.yaml", "data.train_shards: required for data.type tokens"}},
      {"no bound on the run", "unbounded.yaml", kMlp + "train:\n  epochs: 0\n", {},
       {"unbounded.yaml:4:3:", "train.epochs: epochs and max_steps are both 0"}},
      {"bad run name", "badname.yaml", kMlp + "name: a/b\n", {}, {"badname.yaml:3:1:", "name: 'a/b' is not a usable run name"}},
      {"override: unknown key", "ov_unknown.yaml", kMlp, {"train.batch_sise=3"},
       {"command-line override 'train.batch_sise=3'", "unknown key 'train.batch_sise'",
        "did you mean 'train.batch_size'?"}},
      {"override: unknown section", "ov_section.yaml", kMlp, {"trian.epochs=3"},
       {"command-line override 'trian.epochs=3'", "unknown key 'trian'", "did you mean 'train'?"}},
      {"override: unknown key at depth 3", "ov_deep.yaml", "model:\n  type: gpt\n", {"model.gpt.n_layers=3"},
       {"command-line override 'model.gpt.n_layers=3'", "did you mean 'model.gpt.n_layer'?"}},
      {"override: wrong type", "ov_type.yaml", kMlp, {"train.batch_size=abc"},
       {"command-line override 'train.batch_size=abc'", "train.batch_size: expected an integer, got 'abc'"}},
      {"override: out of range", "ov_range.yaml", kMlp, {"optim.lr=-1"},
       {"command-line override 'optim.lr=-1'", "optim.lr: -1 is out of range"}},
      {"override: no '='", "ov_noeq.yaml", kMlp, {"train.batch_size"},
       {"command-line override 'train.batch_size'", "expected key.sub=value"}},
      {"override: a section", "ov_sec.yaml", kMlp, {"train=3"},
       {"command-line override 'train=3'", "'train' is a section"}},
      {"override: below a value", "ov_leaf.yaml", kMlp, {"train.batch_size.x=1"},
       {"command-line override 'train.batch_size.x=1'", "'train.batch_size' is a value, not a section"}},
      {"override: not applicable", "ov_na.yaml", kMlp, {"model.gpt.n_layer=3"},
       {"command-line override 'model.gpt.n_layer=3'", "model.gpt: does not apply when model.type is 'mlp'"}},
      {"override: malformed value", "ov_yaml.yaml", kMlp, {"model.mlp.hidden=[1, 2"},
       {"command-line override 'model.mlp.hidden=[1, 2'", "model.mlp.hidden: malformed value"}},
      // Keys whose feature is not built are refused, never ignored.
      {"LoRA without a base", "lora.yaml", "model: {type: gpt}\ndata: {type: tokens, train_shards: x/*.bin}\n"
                                           "lora:\n  enabled: true\n", {},
       {"lora.yaml:4:3:", "lora.enabled: needs model.init_from"}},
      {"LoRA rank 0", "lora_rank.yaml", "model: {type: gpt}\ndata: {type: tokens, train_shards: x/*.bin}\n"
                                        "lora:\n  rank: 0\n", {},
       {"lora_rank.yaml:4:9:", "lora.rank: 0 is out of range"}},
      {"non-deterministic kernels", "nondet.yaml", kMlp + "train:\n  deterministic: false\n", {},
       {"nondet.yaml:4:3:", "train.deterministic: false is not implemented"}},
      {"more than one loader thread", "workers.yaml", kMlp + "data:\n  num_workers: 4\n", {},
       {"workers.yaml:4:16:", "data.num_workers: 4 is out of range: must be in [0, 1]"}},
      {"unregistered model type", "unreg.yaml", "model:\n  type: transformer\n", {},
       {"unreg.yaml:2:9:", "model.type: expected one of mlp", "got 'transformer'"}},
  };
}

}  // namespace

TEST(ConfigTest, BadConfigsAreInputErrorsNamingFileAndKey) {
  for (const auto& c : bad_cases()) {
    SCOPED_TRACE(c.what);
    const std::string msg = load_error(c.file, c.yaml, c.overrides);
    if (c.overrides.empty()) {
      EXPECT_NE(msg.find(c.file), std::string::npos) << "message does not name the file: " << msg;
    }
    for (const auto& e : c.expect) EXPECT_NE(msg.find(e), std::string::npos) << "missing '" << e << "' in: " << msg;
  }
}

TEST(ConfigTest, MissingFileNamesIt) {
  const std::string path = (tmp().path() / "no_such.yaml").string();
  try {
    kiln::load_config(path);
    FAIL() << "loaded a missing file";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(ConfigTest, MinimalConfigGetsDefaults) {
  const TrainConfig c = load("mlp_min.yaml", kMlp);
  EXPECT_EQ(c.name, "mlp_min");
  EXPECT_EQ(c.output_dir, "runs/mlp_min");
  EXPECT_EQ(c.seed, 1337u);
  EXPECT_EQ(c.device, "auto");
  EXPECT_EQ(c.precision, kiln::Precision::fp32);
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.model.type, "mlp");
  EXPECT_EQ(c.model.mlp.hidden, (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(c.model.mlp.activation, kiln::Activation::relu);
  EXPECT_EQ(c.data.type, kiln::DatasetType::fashion_mnist);
  EXPECT_EQ(c.data.path, kiln::kFashionMnistDir);
  EXPECT_DOUBLE_EQ(c.data.mean, 0.2860);
  EXPECT_DOUBLE_EQ(c.data.std, 0.3530);
  EXPECT_TRUE(c.data.normalize);
  EXPECT_TRUE(c.data.shuffle);
  EXPECT_EQ(c.optim.type, kiln::OptimizerType::adamw);
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.999);
  EXPECT_TRUE(c.optim.no_decay_on_bias_and_norm);
  EXPECT_EQ(c.schedule.type, kiln::LrScheduleType::cosine);
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.grad_accum, 1);
  EXPECT_EQ(c.train.epochs, 1);
  EXPECT_EQ(c.train.resume, "none");
  EXPECT_TRUE(c.train.deterministic);
  EXPECT_EQ(c.dist.zero_stage, 0);
  EXPECT_EQ(c.dist.on_nonfinite, kiln::NonfiniteAction::stop);
  EXPECT_DOUBLE_EQ(c.mfu.peak_tflops, 0.0);
}

TEST(ConfigTest, GoodConfigsOfEveryKind) {
  const TrainConfig mlp = load("mlp_full.yaml",
                               "name: fashion\nseed: 7\ndevice: cpu\nthreads: 2\n"
                               "model:\n  type: mlp\n  mlp: {hidden: [512, 256, 128], activation: gelu, dropout: 0.1}\n"
                               "data:\n  type: fashion_mnist\n  val_fraction: 0.0833\n  normalize: True\n"
                               "optim:\n  type: sgd\n  lr: 3e-2\n  momentum: 0.8\n  nesterov: true\n"
                               "schedule:\n  type: step\n  step_size: 100\n  gamma: 0.5\n"
                               "train:\n  batch_size: 128\n  epochs: 10\n  max_steps: 5000\n  resume: auto\n"
                               "dist:\n  on_nonfinite: skip\n"
                               "# an empty section is all defaults\nmfu:\n");
  EXPECT_EQ(mlp.name, "fashion");
  EXPECT_EQ(mlp.output_dir, "runs/fashion");
  EXPECT_EQ(mlp.seed, 7u);
  EXPECT_EQ(mlp.device, "cpu");
  EXPECT_EQ(mlp.threads, 2);
  EXPECT_EQ(mlp.model.mlp.hidden, (std::vector<int64_t>{512, 256, 128}));
  EXPECT_EQ(mlp.model.mlp.activation, kiln::Activation::gelu);
  EXPECT_DOUBLE_EQ(mlp.model.mlp.dropout, 0.1);
  EXPECT_DOUBLE_EQ(mlp.data.val_fraction, 0.0833);
  EXPECT_EQ(mlp.optim.type, kiln::OptimizerType::sgd);
  EXPECT_DOUBLE_EQ(mlp.optim.lr, 0.03);
  EXPECT_DOUBLE_EQ(mlp.optim.momentum, 0.8);
  EXPECT_TRUE(mlp.optim.nesterov);
  EXPECT_EQ(mlp.schedule.type, kiln::LrScheduleType::step);
  EXPECT_EQ(mlp.schedule.step_size, 100);
  EXPECT_DOUBLE_EQ(mlp.schedule.gamma, 0.5);
  EXPECT_EQ(mlp.train.max_steps, 5000);
  EXPECT_EQ(mlp.train.resume, "auto");
  EXPECT_EQ(mlp.dist.on_nonfinite, kiln::NonfiniteAction::skip);

  const TrainConfig gpt = load("gpt.yaml",
                               "precision: bf16\noutput_dir: /tmp/gpt_run\n"
                               "model:\n  type: gpt\n  gpt:\n    vocab_size: 50304\n    block_size: 256\n"
                               "    n_layer: 4\n    n_head: 4\n    n_embd: 128\n    bias: false\n"
                               "data:\n  type: tokens\n  train_shards: data/tiny/train_*.bin\n"
                               "  val_shards: data/tiny/val_*.bin\n  tokenizer: data/gpt2\n"
                               "  text_files: [/usr/share/games/fortunes/fortunes, /usr/share/games/fortunes/art]\n"
                               "train:\n  batch_size: 8\n  grad_accum: 4\n  global_batch: 64\n  epochs: 0\n"
                               "  max_steps: 100\n  sample_every: 50\n"
                               "dist:\n  zero_stage: 1\n  bucket_mb: 12.5\n"
                               "lora:\n  enabled: false\n  rank: 8\n  targets: [attn.c_attn, attn.c_proj]\n"
                               "mfu:\n  peak_tflops: 989.5\n");
  EXPECT_EQ(gpt.precision, kiln::Precision::bf16);
  EXPECT_EQ(gpt.output_dir, "/tmp/gpt_run");
  EXPECT_EQ(gpt.model.gpt.vocab_size, 50304);
  EXPECT_EQ(gpt.model.gpt.n_embd, 128);
  EXPECT_FALSE(gpt.model.gpt.bias);
  EXPECT_DOUBLE_EQ(gpt.model.gpt.dropout, 0.0);
  EXPECT_EQ(gpt.data.type, kiln::DatasetType::tokens);
  EXPECT_EQ(gpt.data.text_files.size(), 2u);
  EXPECT_EQ(gpt.train.global_batch, 64);
  EXPECT_EQ(gpt.train.sample_every, 50);
  EXPECT_EQ(gpt.dist.zero_stage, 1);
  EXPECT_DOUBLE_EQ(gpt.dist.bucket_mb, 12.5);
  EXPECT_FALSE(gpt.lora.enabled);
  EXPECT_EQ(gpt.lora.rank, 8);
  EXPECT_DOUBLE_EQ(gpt.lora.alpha, 16.0);
  EXPECT_DOUBLE_EQ(gpt.mfu.peak_tflops, 989.5);

  const TrainConfig sft = load("sft.yaml",
                               "model: {type: gpt, init_from: runs/gpt/model.safetensors}\n"
                               "data: {type: sft, path: data/sft.jsonl, tokenizer: data/gpt2}\n"
                               "sft:\n  prompt_template: \"Q: {prompt}\\nA: \"\n  max_len: 512\n");
  EXPECT_EQ(sft.data.type, kiln::DatasetType::sft);
  EXPECT_EQ(sft.model.init_from, "runs/gpt/model.safetensors");
  EXPECT_EQ(sft.sft.prompt_template, "Q: {prompt}\nA: ");
  EXPECT_EQ(sft.sft.max_len, 512);

  const TrainConfig vit = load("vit.yaml", "model:\n  type: vit\n  vit: {patch: 7, dim: 96, depth: 4, heads: 6, mlp_ratio: 2}\n");
  EXPECT_EQ(vit.model.vit.patch, 7);
  EXPECT_DOUBLE_EQ(vit.model.vit.mlp_ratio, 2.0);
  const TrainConfig cnn = load("cnn.yaml", "model: {type: cnn}\n");
  EXPECT_EQ(cnn.model.cnn.channels, (std::vector<int64_t>{32, 64}));
  const TrainConfig resnet = load("resnet.yaml", "model: {type: resnet, resnet: {channels: [8], blocks: [3]}}\n");
  EXPECT_EQ(resnet.model.resnet.blocks, (std::vector<int64_t>{3}));
  const TrainConfig mnist = load("mnist.yaml", kMlp + "data: {type: mnist, path: /data/mnist, mean: 0.1307, std: 0.3081}\n");
  EXPECT_EQ(mnist.data.path, "/data/mnist");
}

TEST(ConfigTest, OverridesApplyWithTheSameChecks) {
  const std::string base = kMlp + "train:\n  batch_size: 32\n";
  const TrainConfig c = load("ov.yaml", base,
                             {"train.batch_size=256", "optim.lr=0.02", "model.mlp.hidden=[512, 64]", "name=run7",
                              "train.resume=ckpt=3", "optim.momentum=0.5", "optim.type=sgd", "train.batch_size=128"});
  EXPECT_EQ(c.train.batch_size, 128);  // the last override of a key wins
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.02);
  EXPECT_EQ(c.model.mlp.hidden, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(c.name, "run7");
  EXPECT_EQ(c.output_dir, "runs/run7");
  EXPECT_EQ(c.train.resume, "ckpt=3");  // only the first '=' splits
  // Conditions are checked after all overrides: momentum before type=sgd is fine.
  EXPECT_EQ(c.optim.type, kiln::OptimizerType::sgd);
  EXPECT_DOUBLE_EQ(c.optim.momentum, 0.5);

  // Switching the model type by override makes the file's gpt section an error,
  // reported at the section's line in the file.
  const std::string msg = load_error("ov_switch.yaml", "model:\n  type: gpt\n  gpt:\n    n_layer: 2\n", {"model.type=mlp"});
  EXPECT_NE(msg.find("ov_switch.yaml:3:3: model.gpt: does not apply when model.type is 'mlp'"), std::string::npos)
      << msg;
}

/// Every field that applies to `c` appears in `yaml`, and no other.
void expect_fields_match(const TrainConfig& c, const std::string& yaml) {
  const YAML::Node doc = YAML::Load(yaml);
  const auto& schema = kiln::train_config_schema();
  // Recursion on const nodes: assigning yaml-cpp nodes would write into `doc`.
  std::function<bool(const YAML::Node&, const std::string&)> has = [&](const YAML::Node& n, const std::string& p) {
    const size_t dot = p.find('.');
    const std::string head = p.substr(0, dot);
    if (!n.IsMap() || !n[head]) return false;
    return dot == std::string::npos ? true : has(n[head], p.substr(dot + 1));
  };
  for (const auto& f : schema.fields())
    EXPECT_EQ(has(doc, f.path), schema.applies(&c, f.path)) << f.path << " in\n" << yaml;
}

TEST(ConfigTest, ToYamlRoundTrips) {
  const std::vector<std::pair<std::string, std::string>> configs = {
      {"rt_mlp.yaml", kMlp},
      {"rt_sgd.yaml", kMlp + "optim: {type: sgd, lr: 0.1, nesterov: true}\nschedule: {type: step, gamma: 0.3}\n"
                             "data: {val_fraction: 0.0833333333333333, mean: 0.1}\nseed: 9223372036854775807\n"},
      {"rt_gpt.yaml", "model: {type: gpt, gpt: {n_layer: 2, n_head: 2, n_embd: 64, dropout: 0.1}}\n"
                      "data: {type: tokens, train_shards: 'a b/*.bin', text_files: ['x', '~', '', 'y: z']}\n"
                      "lora: {enabled: false}\ntrain: {sample_every: 10}\n"},
      {"rt_sft.yaml", "model: {type: gpt}\ndata: {type: sft, path: s.jsonl}\n"
                      "sft: {prompt_template: \"### Q\\n{prompt}\\n\\t# not a comment\\n\", max_len: 100}\n"},
      {"rt_vit.yaml", "model: {type: vit}\nprecision: bf16\noptim: {eps: 1.0e-12, weight_decay: 0.05}\n"},
  };
  for (const auto& [file, text] : configs) {
    SCOPED_TRACE(file);
    const TrainConfig a = load(file, text);
    const std::string yaml = kiln::to_yaml(a);
    expect_fields_match(a, yaml);
    // The saved file is what a run directory holds; loading it gives the same
    // config (its name and output_dir are written out, so the saved file's own
    // name does not matter).
    const std::string saved = tmp().write("config.yaml", yaml);
    const TrainConfig b = kiln::load_config(saved);
    EXPECT_TRUE(a == b) << yaml;
    EXPECT_EQ(kiln::to_yaml(b), yaml);
    EXPECT_EQ(kiln::to_yaml(a, /*docs=*/false), kiln::to_yaml(b, false));
    // Without comments too.
    EXPECT_TRUE(kiln::parse_config(kiln::to_yaml(a, false), "x.yaml") == a);
  }
}

TEST(ConfigTest, ToYamlLeavesOutWhatDoesNotApply) {
  const std::string yaml = kiln::to_yaml(load("lo.yaml", kMlp));
  EXPECT_NE(yaml.find("hidden: [256, 128]"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("beta1: 0.9"), std::string::npos) << yaml;
  for (const char* absent : {"gpt:", "vit:", "momentum:", "lora:", "sft:", "train_shards:", "gamma:", "sample_every:"})
    EXPECT_EQ(yaml.find(absent), std::string::npos) << absent << " in\n" << yaml;
}

TEST(ConfigTest, EqualityComparesEveryField) {
  const TrainConfig a = load("eq.yaml", kMlp);
  TrainConfig b = a;
  EXPECT_TRUE(a == b);
  b.optim.lr = 2e-3;
  EXPECT_TRUE(a != b);
  b = a;
  b.model.mlp.hidden.push_back(10);
  EXPECT_TRUE(a != b);
  b = a;
  b.precision = kiln::Precision::bf16;
  EXPECT_TRUE(a != b);
}

TEST(ConfigTest, ReferenceListsEveryKey) {
  const std::string ref = kiln::config_reference();
  for (const auto& f : kiln::train_config_schema().fields())
    EXPECT_NE(ref.find(f.path + " ("), std::string::npos) << f.path;
  EXPECT_NE(ref.find("train.batch_size (an integer), default 64, in [1, 1048576]"), std::string::npos) << ref;
  EXPECT_NE(ref.find("(only when model.type is gpt)"), std::string::npos);
}

// --- the generic mechanism on its own --------------------------------------------------

namespace {
struct Inner {
  int64_t depth = 0;
  std::vector<std::string> tags;
};
struct Toy {
  std::string kind;
  double rate = 0;
  Inner inner;
};
}  // namespace

TEST(ConfigSchemaTest, DeclaresLoadsAndPrintsAnyStruct) {
  kiln::config::Schema s;
  auto root = s.root<Toy>();
  root.choice("kind", &Toy::kind, {"small", "large"}, "small", "size");
  root.number("rate", &Toy::rate, 0.5, "a rate").above(0.0).below(1.0);
  auto inner = root.section("inner", &Toy::inner, "nested").when("kind", {"large"});
  inner.integer("depth", &Inner::depth, 3, "depth").range(1, 10);
  inner.strings("tags", &Inner::tags, {"a"}, "tags").items(1, 2);

  Toy t;
  s.load_text(&t, "kind: large\ninner: {depth: 7}\n", "toy.yaml", {"inner.tags=[x, y]"}, nullptr);
  EXPECT_EQ(t.kind, "large");
  EXPECT_DOUBLE_EQ(t.rate, 0.5);
  EXPECT_EQ(t.inner.depth, 7);
  EXPECT_EQ(t.inner.tags, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(s.to_yaml(&t, false), "kind: large\nrate: 0.5\ninner:\n  depth: 7\n  tags: [x, y]\n");

  Toy u;
  try {
    s.load_text(&u, "inner: {tags: [a, b, c]}\n", "toy.yaml", {}, nullptr);
    FAIL() << "accepted 3 tags";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("toy.yaml:1:15: inner.tags: expected 1 to 2 elements, got 3"),
              std::string::npos)
        << e.what();
  }
  s.load_text(&u, "", "toy.yaml", {}, nullptr);
  EXPECT_EQ(s.to_yaml(&u, false), "kind: small\nrate: 0.5\n");  // inner does not apply to small
}

TEST(ConfigSchemaTest, EditDistanceAndSuggestions) {
  using kiln::config::edit_distance;
  using kiln::config::nearest;
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("gtp", "gpt"), 1u);  // transposition
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(nearest("batch_sise", {"epochs", "batch_size", "grad_accum"}), "batch_size");
  EXPECT_EQ(nearest("LR", {"lr", "eps"}), "lr");
  EXPECT_EQ(nearest("optimizer", {"optim", "train"}), "optim");
  EXPECT_EQ(nearest("zzzzzz", {"optim", "train"}), "");
}

TEST(ConfigSchemaTest, NumbersPrintShortestAndReadBack) {
  using kiln::config::format_number;
  EXPECT_EQ(format_number(1.0), "1.0");
  EXPECT_EQ(format_number(0.001), "0.001");
  EXPECT_EQ(format_number(1e-8), "1e-08");
  EXPECT_EQ(format_number(0.1 + 0.2), "0.30000000000000004");
  for (double v : {3e-4, 0.2860, 1.0 / 3.0, 123456789.125, 5e-324})
    EXPECT_EQ(std::strtod(format_number(v).c_str(), nullptr), v) << format_number(v);
}
