// The SFT recipe end to end on the CPU: a tiny GPT is pretrained for a few
// steps (configs/gpt_tiny.yaml), then fine-tuned on a small spelling task
// with model.init_from naming that run directory. The fine-tuned model
// learns its answers (exact match in metrics.jsonl), runs are deterministic
// and resume exactly, unpacked rows train too, `kiln eval` reports loss and
// exact match for a run and for the config's starting point, and
// model.init_from rejects contradicting keys and unusable directories.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "runtime/error.h"
#include "tests/harness/temp_dir.h"
#include "tests/trainers/run_checks.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kTiny = std::string(KILN_SOURCE_DIR) + "/configs/gpt_tiny.yaml";

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_sft_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// "word: cab\npron:" -> " C A B": spelling a word out, 24 words.
void write_spelling(const fs::path& path, int first, int count) {
  std::ofstream f(path);
  for (int i = first; i < first + count; ++i) {
    std::string w;
    for (int k = 0, v = i * 7 + 3; k < 3; ++k, v /= 5) w += static_cast<char>('a' + (v % 5) * 5 + k);
    std::string spelled;
    for (char c : w) (spelled += ' ') += static_cast<char>(c - 'a' + 'A');
    f << "{\"prompt\": \"word: " << w << "\\npron:\", \"completion\": \"" << spelled << "\"}\n";
  }
}

std::string sft_yaml(const fs::path& base, const fs::path& data, const std::string& extra = "") {
  return "name: sft_tiny\nseed: 5\ndevice: cpu\n"
         "model:\n  type: gpt\n  init_from: " +
         base.string() + "\n" + extra +
         "data:\n  type: sft\n  path: " + (data / "train.jsonl").string() + "\n  val_path: " +
         (data / "train.jsonl").string() + "\n  test_path: " + (data / "test.jsonl").string() +
         "\nsft:\n  prompt_template: \"{prompt}\"\n  max_len: 32\n  eval_examples: 24\n  max_new_tokens: 12\n"
         "optim: {lr: 0.01}\nschedule: {type: cosine, warmup_steps: 5}\n"
         "train: {batch_size: 4, max_steps: 600, epochs: 0, eval_every: 300, log_every: 20, checkpoint_every: 200, "
         "keep_last: 0}\n";
}

class SftTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fresh_dir("root"));
    const fs::path tokdata = *root_ / "tokdata";
    // The base: a few pretraining steps of the tiny GPT (BPE and shards built on first use).
    train(load_config(kTiny, {"data.tokenizer=" + (tokdata / "tok").string(),
                              "data.train_shards=" + (tokdata / "train_*.bin").string(),
                              "data.val_shards=" + (tokdata / "val_*.bin").string(),
                              "output_dir=" + (*root_ / "base").string(), "train.max_steps=4",
                              "train.checkpoint_every=0", "train.sample_every=0", "train.eval_every=0"}));
    fs::create_directories(*root_ / "data");
    write_spelling(*root_ / "data" / "train.jsonl", 0, 24);
    write_spelling(*root_ / "data" / "test.jsonl", 100, 8);
    test::write_file((*root_ / "sft.yaml").string(), sft_yaml(*root_ / "base", *root_ / "data"));
    result_ = new TrainResult(train(config({"output_dir=" + (*root_ / "run").string()})));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete result_;
  }
  static TrainConfig config(std::vector<std::string> overrides) {
    return load_config((*root_ / "sft.yaml").string(), overrides);
  }
  static fs::path* root_;
  static TrainResult* result_;
};

fs::path* SftTrain::root_ = nullptr;
TrainResult* SftTrain::result_ = nullptr;

TEST_F(SftTrain, InheritsTheBaseModelAndTokenizer) {
  const TrainConfig c = config({});
  const TrainConfig base = load_config((*root_ / "base" / "config.yaml").string());
  EXPECT_EQ(c.model.gpt.n_layer, base.model.gpt.n_layer);
  EXPECT_EQ(c.model.gpt.n_embd, base.model.gpt.n_embd);
  EXPECT_EQ(c.model.gpt.vocab_size, 512);
  EXPECT_EQ(c.model.gpt.block_size, 32);
  EXPECT_EQ(c.data.tokenizer, base.data.tokenizer);
  // The run's saved config reads back as the same config.
  EXPECT_EQ(load_config((*root_ / "run" / "config.yaml").string()), config({"output_dir=" + (*root_ / "run").string()}));
}

TEST_F(SftTrain, ContradictingKeysAndBadInitFromAreErrors) {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string n = message([&] { config({"model.gpt.n_layer=3"}); });
  EXPECT_NE(n.find("model.gpt.n_layer: 3 contradicts 2 in " + (*root_ / "base" / "config.yaml").string()),
            std::string::npos)
      << n;
  EXPECT_NE(message([&] { config({"data.tokenizer=/elsewhere"}); }).find("data.tokenizer"), std::string::npos);
  EXPECT_EQ(message([&] { config({"model.gpt.n_layer=2", "model.gpt.dropout=0.1"}); }), "");  // agreeing is fine
  fs::create_directories(*root_ / "empty");
  EXPECT_NE(message([&] { config({"model.init_from=" + (*root_ / "empty").string()}); }).find("without config.yaml"),
            std::string::npos);
  // A run directory with a config but no checkpoint stops before training.
  fs::create_directories(*root_ / "nockpt");
  fs::copy_file(*root_ / "base" / "config.yaml", *root_ / "nockpt" / "config.yaml");
  const std::string nock = message([&] {
    train(config({"model.init_from=" + (*root_ / "nockpt").string(), "output_dir=" + (*root_ / "x").string()}));
  });
  EXPECT_NE(nock.find("holds no valid checkpoint"), std::string::npos) << nock;
}

TEST_F(SftTrain, LearnsItsAnswers) {
  const std::vector<nlohmann::json> m = read_metrics((*root_ / "run" / "metrics.jsonl").string());
  double first_train = -1, last_train = -1, final_em = -1, test_em = -1;
  for (const auto& l : m) {
    if (l.at("split") == "train") {
      if (first_train < 0) first_train = l.at("loss").get<double>();
      last_train = l.at("loss").get<double>();
    }
    if (l.at("split") == "val") {
      ASSERT_TRUE(l.contains("exact_match")) << l.dump();
      final_em = l.at("exact_match").get<double>();
    }
    if (l.at("split") == "test") test_em = l.at("exact_match").get<double>();
  }
  EXPECT_LT(last_train, 0.5 * first_train) << first_train << " -> " << last_train;
  // val is the training set here: the model has learned to spell it; the
  // held-out words it has never seen, some of them (4 of 8 when written).
  EXPECT_GE(final_em, 0.9);
  EXPECT_GT(test_em, 0.0);
  EXPECT_GT(result_->val_loss, 0.0);
}

TEST_F(SftTrain, DeterministicAndResumesExactly) {
  const fs::path again = *root_ / "again";
  train(config({"output_dir=" + again.string()}));
  EXPECT_EQ(test::deterministic_metrics(again.string()), test::deterministic_metrics((*root_ / "run").string()));
  EXPECT_EQ(test::final_weights(again.string()), test::final_weights((*root_ / "run").string()));
  // Keep only the step-200 checkpoint and resume from it.
  const fs::path resumed = *root_ / "resumed";
  fs::copy(again, resumed, fs::copy_options::recursive);
  for (int step : {400, 600}) fs::remove_all(fs::path(checkpoints_root(resumed.string())) / checkpoint_dir_name(step));
  ASSERT_EQ(list_checkpoints(resumed.string()).size(), 1u);
  train(config({"output_dir=" + resumed.string(), "train.resume=auto"}));
  EXPECT_EQ(test::final_weights(resumed.string()), test::final_weights((*root_ / "run").string()));
}

TEST_F(SftTrain, UnpackedRowsTrainToo) {
  const fs::path run = *root_ / "unpacked";
  const TrainResult r = train(config({"output_dir=" + run.string(), "data.pack=false", "train.max_steps=20",
                                      "train.eval_every=0", "sft.eval_examples=4"}));
  EXPECT_EQ(r.steps, 20);
  EXPECT_GT(r.val_loss, 0.0);
  // Different rows, so a different run than the packed one.
  EXPECT_NE(test::final_weights(run.string()), test::final_weights((*root_ / "run").string()));
}

TEST_F(SftTrain, EvalReportsLossAndExactMatch) {
  const test::CliRun r = test::run_kiln("eval " + (*root_ / "run").string() + " --split val", /*with_stderr=*/false);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j.at("split"), "val");
  EXPECT_EQ(j.at("answered"), 24);
  EXPECT_GE(j.at("exact_match").get<double>(), 0.9);
  // The config itself: the base model before fine-tuning knows nothing of the task.
  const test::CliRun b = test::run_kiln("eval " + (*root_ / "sft.yaml").string() + " --split val", false);
  ASSERT_EQ(b.status, 0) << b.output;
  const nlohmann::json jb = nlohmann::json::parse(b.output);
  EXPECT_EQ(jb.at("exact_match").get<double>(), 0.0);
  EXPECT_GT(jb.at("loss").get<double>(), j.at("loss").get<double>());
}

}  // namespace
}  // namespace kiln
