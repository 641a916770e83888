// LoRA end to end through the kiln binary: a tiny GPT is pretrained
// (configs/gpt_tiny.yaml), then adapted on a small spelling task with
// lora.enabled and model.init_from naming that run. The adapters learn the
// task, checkpoints hold the adapters and their optimizer state only, runs
// are deterministic, an adapter-only resume ends bit-identical to an
// uninterrupted run, a changed base is refused by its hash, kiln export
// --adapter writes PEFT's names and shapes and --merge a GPT-2 file whose
// logits (through kiln eval) equal the adapted model's, bad targets are
// named, and every lora.* key changes the run (keys_test cites this file).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "data/safetensors.h"
#include "tests/harness/temp_dir.h"
#include "tests/trainers/run_checks.h"
#include "trainers/checkpoint.h"
#include "trainers/metrics.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kTiny = std::string(KILN_SOURCE_DIR) + "/configs/gpt_tiny.yaml";

// "word: cab\npron:" -> " C A B": spelling three-letter words out.
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

std::string lora_yaml(const fs::path& base, const fs::path& data) {
  return "name: lora_tiny\nseed: 5\ndevice: cpu\n"
         "model:\n  type: gpt\n  init_from: " + base.string() + "\n"
         "data:\n  type: sft\n  path: " + (data / "train.jsonl").string() + "\n  val_path: " +
         (data / "train.jsonl").string() + "\n  test_path: " + (data / "test.jsonl").string() +
         "\nsft:\n  prompt_template: \"{prompt}\"\n  max_len: 32\n  eval_examples: 24\n  max_new_tokens: 12\n"
         "lora:\n  enabled: true\n  rank: 8\n  alpha: 16\n  targets: [all-linear]\n"
         "optim: {lr: 0.01, weight_decay: 0.0}\nschedule: {type: cosine, warmup_steps: 5}\n"
         "train: {batch_size: 4, max_steps: 300, epochs: 0, eval_every: 0, log_every: 20, checkpoint_every: 100, "
         "keep_last: 0, sample_every: 0}\n";
}

// The stdout JSON line of `kiln eval`.
nlohmann::json eval_json(const std::string& args) {
  test::CliRun r = test::run_kiln("eval " + args, /*with_stderr=*/false);
  EXPECT_EQ(r.status, 0) << args << "\n" << r.output;
  const size_t start = r.output.rfind('{');
  if (start == std::string::npos) return nlohmann::json::object();
  return nlohmann::json::parse(r.output.substr(start));
}

std::map<std::string, std::vector<int64_t>> shapes(const std::string& file) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& [name, t] : read_safetensors(file).tensors) out[name] = t.shape;
  return out;
}

class LoraTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() / ("kiln_lora_train_test_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_ / "data");
    const fs::path tok = *root_ / "tokdata";
    base_args_ = new std::string("data.tokenizer=" + (tok / "tok").string() + " 'data.train_shards=" +
                                 (tok / "train_*.bin").string() + "' 'data.val_shards=" +
                                 (tok / "val_*.bin").string() + "' train.checkpoint_every=0 train.sample_every=0 " +
                                 "train.eval_every=0 train.max_steps=300");
    // The base: the tiny GPT pretrained for 300 steps (BPE and shards built on first use).
    test::CliRun b = test::run_kiln("train " + kTiny + " " + *base_args_ + " output_dir=" + (*root_ / "base").string());
    ASSERT_EQ(b.status, 0) << b.output;
    write_spelling(*root_ / "data" / "train.jsonl", 0, 24);
    write_spelling(*root_ / "data" / "test.jsonl", 100, 8);
    test::write_file((*root_ / "lora.yaml").string(), lora_yaml(*root_ / "base", *root_ / "data"));
    run_ = new test::CliRun(train("run"));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete run_;
    delete base_args_;
  }
  // `kiln train lora.yaml output_dir=ROOT/<out> extra...`
  static test::CliRun train(const std::string& out, const std::string& extra = "") {
    return test::run_kiln("train " + (*root_ / "lora.yaml").string() + " output_dir=" + (*root_ / out).string() +
                          " " + extra);
  }
  static std::string dir(const std::string& name) { return (*root_ / name).string(); }
  static fs::path* root_;
  static std::string* base_args_;
  static test::CliRun* run_;
};

fs::path* LoraTrain::root_ = nullptr;
std::string* LoraTrain::base_args_ = nullptr;
test::CliRun* LoraTrain::run_ = nullptr;

TEST_F(LoraTrain, LearnsWithAdaptersOnly) {
  ASSERT_EQ(run_->status, 0) << run_->output;
  // The start-up lines: trainable / total and the optimizer state saved.
  EXPECT_NE(run_->output.find("kiln: lora: 8 adapters (r 8, alpha 16, scale 2, dropout 0) on all-linear"),
            std::string::npos)
      << run_->output;
  EXPECT_NE(run_->output.find("parameters: 8192 trainable / "), std::string::npos) << run_->output;
  EXPECT_NE(run_->output.find("for full fine-tuning"), std::string::npos);
  const std::vector<nlohmann::json> m = read_metrics(dir("run") + "/metrics.jsonl");
  double first = -1, last = -1, val_em = -1, val_loss = -1;
  for (const auto& l : m) {
    if (l.at("split") == "train") {
      if (first < 0) first = l.at("loss").get<double>();
      last = l.at("loss").get<double>();
    }
    if (l.at("split") == "val") {
      val_em = l.at("exact_match").get<double>();
      val_loss = l.at("loss").get<double>();
    }
  }
  EXPECT_LT(last, 0.9 * first) << first << " -> " << last;
  // The completion loss of the base on the same split (kiln eval of the
  // config: the model it starts from) and after: the adapters learned the
  // task (about 5.5 -> 1.5 nats when written; full fine-tuning, which also
  // moves the tied embedding and the LayerNorms, gets further).
  const double before = eval_json((*root_ / "lora.yaml").string() + " --split val").at("loss").get<double>();
  EXPECT_LT(val_loss, 0.4 * before) << before << " -> " << val_loss;
  // The checkpoint: 16 adapter tensors and their AdamW moments, nothing else.
  const std::string ck = *find_latest_valid_checkpoint(dir("run"));
  const SafetensorsFile w = read_safetensors(ck + "/" + kCheckpointWeights);
  EXPECT_EQ(w.tensors.size(), 16u);
  for (const auto& [name, t] : w.tensors) EXPECT_NE(name.find(".lora_"), std::string::npos) << name;
  EXPECT_EQ(w.metadata.at("kiln_lora"), "adapter");
  const SafetensorsFile o = read_safetensors(ck + "/" + kCheckpointOptimizer);
  EXPECT_EQ(o.tensors.size(), 32u);
  for (const auto& [name, t] : o.tensors) EXPECT_NE(name.find(".lora_"), std::string::npos) << name;
  const nlohmann::json state = nlohmann::json::parse(test::read_file(ck + "/" + kCheckpointState));
  EXPECT_EQ(state.at("lora").at("base").at("init_from"), dir("base"));
  EXPECT_EQ(state.at("lora").at("base").at("hash").get<std::string>().size(), 16u);
  EXPECT_EQ(state.at("lora").at("adapted").size(), 8u);
  // kiln eval loads the base, checks its hash, then the adapters: the same
  // exact match as the run's own final evaluation.
  const nlohmann::json ev = eval_json(dir("run") + " --split val");
  EXPECT_NEAR(ev.at("exact_match").get<double>(), val_em, 1e-6);  // kiln eval prints 6 decimals
}

TEST_F(LoraTrain, Deterministic) {
  ASSERT_EQ(run_->status, 0);
  test::CliRun again = train("again");
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_EQ(test::deterministic_metrics(dir("again")), test::deterministic_metrics(dir("run")));
  EXPECT_EQ(test::final_weights(dir("again")), test::final_weights(dir("run")));
}

TEST_F(LoraTrain, AdapterOnlyResumeIsBitIdentical) {
  ASSERT_EQ(run_->status, 0);
  // The run's step-200 checkpoint alone, then resume to step 300.
  fs::copy(dir("run"), dir("resumed"), fs::copy_options::recursive);
  fs::remove_all(dir("resumed") + "/checkpoints/" + checkpoint_dir_name(300));
  test::CliRun r = train("resumed", "train.resume=auto");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + dir("resumed") + "/checkpoints/step_000200 at step 200"), std::string::npos)
      << r.output;
  const std::string a = *find_latest_valid_checkpoint(dir("run")), b = *find_latest_valid_checkpoint(dir("resumed"));
  EXPECT_EQ(test::read_file(a + "/" + kCheckpointWeights), test::read_file(b + "/" + kCheckpointWeights));
  EXPECT_EQ(test::read_file(a + "/" + kCheckpointOptimizer), test::read_file(b + "/" + kCheckpointOptimizer));
  EXPECT_EQ(test::deterministic_metrics(dir("resumed")), test::deterministic_metrics(dir("run")));
}

TEST_F(LoraTrain, AChangedBaseIsRefused) {
  ASSERT_EQ(run_->status, 0);
  // Adapters trained on a copy of the base; then that copy is replaced by
  // another base (a different seed) at the same path.
  fs::copy(dir("base"), dir("base2"), fs::copy_options::recursive);
  test::CliRun r = train("on_base2", "model.init_from=" + dir("base2") + " train.max_steps=20 train.checkpoint_every=10");
  ASSERT_EQ(r.status, 0) << r.output;
  fs::remove_all(dir("base2"));
  test::CliRun b = test::run_kiln("train " + kTiny + " " + *base_args_ + " seed=99 output_dir=" + dir("base2"));
  ASSERT_EQ(b.status, 0) << b.output;
  test::CliRun e = test::run_kiln("eval " + dir("on_base2"));
  EXPECT_EQ(e.status, 2) << e.output;
  EXPECT_NE(e.output.find("holds LoRA adapters for a base with weights hash"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("the base changed since the adapters were trained"), std::string::npos) << e.output;
  // Resuming on it stops the same way (the base comes from model.init_from).
  fs::remove_all(dir("on_base2") + "/checkpoints/" + checkpoint_dir_name(20));
  test::CliRun res = train("on_base2", "model.init_from=" + dir("base2") +
                                           " train.max_steps=20 train.checkpoint_every=10 train.resume=auto");
  EXPECT_EQ(res.status, 2) << res.output;
  EXPECT_NE(res.output.find("this run loaded from model.init_from hashes to"), std::string::npos) << res.output;
}

TEST_F(LoraTrain, ExportAdapterAndMerge) {
  ASSERT_EQ(run_->status, 0);
  // --adapter: PEFT's names and shapes.
  test::CliRun a = test::run_kiln("export " + dir("run") + " --adapter --out " + dir("peft"));
  ASSERT_EQ(a.status, 0) << a.output;
  const auto peft = shapes(dir("peft") + "/adapter_model.safetensors");
  EXPECT_EQ(peft.size(), 16u);
  const int64_t C = 32, r = 8;
  struct Lin { const char* name; int64_t in, out; };
  for (int blk = 0; blk < 2; ++blk)
    for (const Lin& l : {Lin{"attn.c_attn", C, 3 * C}, Lin{"attn.c_proj", C, C}, Lin{"mlp.c_fc", C, 4 * C},
                         Lin{"mlp.c_proj", 4 * C, C}}) {
      const std::string p = "base_model.model.transformer.h." + std::to_string(blk) + "." + l.name;
      ASSERT_TRUE(peft.count(p + ".lora_A.weight")) << p;
      EXPECT_EQ(peft.at(p + ".lora_A.weight"), (std::vector<int64_t>{r, l.in})) << p;
      EXPECT_EQ(peft.at(p + ".lora_B.weight"), (std::vector<int64_t>{l.out, r})) << p;
    }
  const nlohmann::json cfg = nlohmann::json::parse(test::read_file(dir("peft") + "/adapter_config.json"));
  EXPECT_EQ(cfg.at("peft_type"), "LORA");
  EXPECT_EQ(cfg.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(cfg.at("r"), 8);
  EXPECT_DOUBLE_EQ(cfg.at("lora_alpha").get<double>(), 16.0);
  EXPECT_DOUBLE_EQ(cfg.at("lora_dropout").get<double>(), 0.0);
  EXPECT_EQ(cfg.at("fan_in_fan_out"), true);
  EXPECT_EQ(cfg.at("bias"), "none");
  EXPECT_EQ(cfg.at("target_modules"),
            (std::vector<std::string>{"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}));
  // A plain export of a LoRA run says what to do instead.
  test::CliRun plain = test::run_kiln("export " + dir("run") + " --out " + dir("plain.safetensors"));
  EXPECT_EQ(plain.status, 2);
  EXPECT_NE(plain.output.find("holds LoRA adapters: export them with --adapter"), std::string::npos) << plain.output;

  // --merge: the base's HF GPT-2 names and shapes, projections changed, the rest bit for bit.
  test::CliRun mg = test::run_kiln("export " + dir("run") + " --merge --out " + dir("merged.safetensors"));
  ASSERT_EQ(mg.status, 0) << mg.output;
  test::CliRun be = test::run_kiln("export " + dir("base") + " --out " + dir("base.safetensors"));
  ASSERT_EQ(be.status, 0) << be.output;
  EXPECT_EQ(shapes(dir("merged.safetensors")), shapes(dir("base.safetensors")));
  const SafetensorsFile merged = read_safetensors(dir("merged.safetensors"));
  const SafetensorsFile basef = read_safetensors(dir("base.safetensors"));
  int changed = 0;
  for (const auto& [name, t] : merged.tensors) {
    const bool projection = name.find(".weight") != std::string::npos &&
                            (name.find(".c_attn.") != std::string::npos || name.find(".c_proj.") != std::string::npos ||
                             name.find(".c_fc.") != std::string::npos);
    if (projection) changed += t.bytes() != basef.at(name).bytes();
    else EXPECT_EQ(t.bytes(), basef.at(name).bytes()) << name << " changed by the merge";
  }
  EXPECT_EQ(changed, 8);
  // The merged file, loaded as a plain GPT (no LoRA), gives the adapted
  // model's completion loss and exact match.
  const std::string plain_cfg = dir("merged_eval.yaml");
  std::string y = test::read_file(dir("lora.yaml"));
  y.replace(y.find("init_from: " + dir("base")), ("init_from: " + dir("base")).size(),
            "init_from: " + dir("merged.safetensors") +
                "\n  gpt: {vocab_size: 512, block_size: 32, n_layer: 2, n_head: 2, n_embd: 32, dropout: 0.0}");
  y.replace(y.find("lora:\n  enabled: true"), std::string("lora:\n  enabled: true").size(), "lora:\n  enabled: false");
  y.replace(y.find("  type: sft\n"), std::string("  type: sft\n").size(),
            "  type: sft\n  tokenizer: " + (*root_ / "tokdata" / "tok").string() + "\n");
  test::write_file(plain_cfg, y);
  const nlohmann::json adapted = eval_json(dir("run") + " --split val");
  const nlohmann::json folded = eval_json(plain_cfg + " --split val");
  const double la = adapted.at("loss").get<double>(), lf = folded.at("loss").get<double>();
  EXPECT_NEAR(lf, la, 1e-5 * std::fabs(la)) << "merged " << lf << " vs adapted " << la;
  EXPECT_EQ(folded.at("exact_match"), adapted.at("exact_match"));
}

TEST_F(LoraTrain, BadTargetsAndMissingBaseAreNamed) {
  test::CliRun t = train("bad_targets", "'lora.targets=[attn.c_attn, attn.qkv]'");
  EXPECT_EQ(t.status, 2) << t.output;
  EXPECT_NE(t.output.find("lora.targets: pattern 'attn.qkv' matches no Linear layer of the model"), std::string::npos)
      << t.output;
  EXPECT_FALSE(fs::exists(dir("bad_targets") + "/checkpoints"));
  test::CliRun n = test::run_kiln("train " + kTiny + " " + *base_args_ + " lora.enabled=true output_dir=" + dir("nobase"));
  EXPECT_EQ(n.status, 2) << n.output;
  EXPECT_NE(n.output.find("lora.enabled: needs model.init_from"), std::string::npos) << n.output;
}

// Every lora.* key changes what a (short) run trains.
TEST_F(LoraTrain, EveryKeyHasAnEffect) {
  const std::string shortrun = "train.max_steps=20 train.checkpoint_every=0 sft.eval_examples=0";
  ASSERT_EQ(train("k_default", shortrun).status, 0);
  const auto def = test::final_weights(dir("k_default"));
  // lora.enabled=true is the file's; false trains every weight instead.
  test::CliRun off = train("k_off", shortrun + " lora.enabled=false");
  ASSERT_EQ(off.status, 0) << off.output;
  const auto full = test::final_weights(dir("k_off"));
  EXPECT_TRUE(full.count("wte.weight")) << "lora.enabled=true vs false: a full checkpoint";
  EXPECT_FALSE(def.count("wte.weight"));
  // lora.rank=2: A is (2, in).
  ASSERT_EQ(train("k_rank", shortrun + " lora.rank=2").status, 0);
  const auto rk = shapes(*find_latest_valid_checkpoint(dir("k_rank")) + "/" + kCheckpointWeights);
  EXPECT_EQ(rk.at("h.0.attn.c_attn.lora_A.weight"), (std::vector<int64_t>{2, 32}));
  // lora.alpha=2: another scale, other adapters.
  ASSERT_EQ(train("k_alpha", shortrun + " lora.alpha=2").status, 0);
  EXPECT_NE(test::final_weights(dir("k_alpha")), def);
  // lora.targets=[mlp.c_fc]: two adapters only.
  test::CliRun tg = train("k_targets", shortrun + " 'lora.targets=[mlp.c_fc]'");
  ASSERT_EQ(tg.status, 0) << tg.output;
  std::set<std::string> names;
  for (const auto& [name, bytes] : test::final_weights(dir("k_targets"))) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"h.0.mlp.c_fc.lora_A.weight", "h.0.mlp.c_fc.lora_B.weight",
                                          "h.1.mlp.c_fc.lora_A.weight", "h.1.mlp.c_fc.lora_B.weight"}));
  // lora.dropout=0.2: masks on the adapters' input.
  ASSERT_EQ(train("k_dropout", shortrun + " lora.dropout=0.2").status, 0);
  EXPECT_NE(test::final_weights(dir("k_dropout")), def);
}

}  // namespace
}  // namespace kiln
