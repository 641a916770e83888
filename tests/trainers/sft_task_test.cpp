// The SFT task's pieces: config -> data options and paths, the exact-match
// example selection (distinct prompts, seeded sample), and exact match
// itself on a tiny GPT taught to answer.
#include "trainers/sft_task.h"

#include <gtest/gtest.h>

#include <set>

#include "nn/loss.h"
#include "nn/optimizer.h"
#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

const Tokenizer& bytes_tok() {
  static const Tokenizer t = Tokenizer::from_merges({});
  return t;
}

SftRecord pc(const std::string& prompt, const std::string& completion, std::vector<std::string> answers = {}) {
  SftRecord r;
  r.prompt = prompt;
  r.completion = completion;
  r.answers = answers.empty() ? std::vector<std::string>{completion} : answers;
  return r;
}

TEST(SftConfigData, OptionsAndPathsFromTheConfig) {
  const TrainConfig cfg = parse_config(
      "model: {type: gpt, gpt: {vocab_size: 300, block_size: 64, n_layer: 1, n_head: 1, n_embd: 8}}\n"
      "data: {type: sft, path: a/train.jsonl, val_path: a/val.jsonl, tokenizer: tok, skip_bad_lines: true, "
      "pack: false}\n"
      "sft: {prompt_template: \"Q: {prompt}\\nA:\", max_len: 48, overflow: drop}\n",
      "t.yaml");
  const SftDataOptions o = sft_data_options(cfg);
  EXPECT_EQ(o.tmpl.prompt, "Q: {prompt}\nA:");
  EXPECT_EQ(o.max_len, 48);
  EXPECT_EQ(o.overflow, SftOverflow::drop);
  EXPECT_TRUE(o.skip_bad_lines);
  EXPECT_EQ(sft_split_path(cfg, Split::train), "a/train.jsonl");
  EXPECT_EQ(sft_split_path(cfg, Split::val), "a/val.jsonl");
  EXPECT_EQ(sft_split_path(cfg, Split::test), "");
  EXPECT_EQ(sft_tokenizer_dir(cfg), "tok");

  const SftDataset d = SftDataset::from_records({pc("ab", "c")}, "mem", bytes_tok(), o);
  const SftLoaderOptions lo = sft_loader_options(cfg, d, Split::train, 4, 1, 2);
  EXPECT_EQ(lo.seq_len, 48);
  EXPECT_FALSE(lo.pack);
  EXPECT_TRUE(lo.shuffle);
  EXPECT_EQ(lo.rank, 1);
  EXPECT_EQ(lo.world, 2);
  EXPECT_EQ(lo.pad_id, 256);
  EXPECT_FALSE(sft_loader_options(cfg, d, Split::val, 4, 0, 1).shuffle);  // evaluation in file order
}

TEST(SftConfigData, TokenizerFromTheBaseRun) {
  test::TempDir dir;
  test::write_file(dir.file("config.yaml"), "model: {type: gpt}\ndata: {type: tokens, train_shards: x_*.bin, "
                                            "tokenizer: .cache/base_tok}\n");
  const TrainConfig cfg = parse_config("model: {type: gpt, init_from: " + dir.path() +
                                           "}\ndata: {type: sft, path: t.jsonl}\nsft: {max_len: 64}\n",
                                       "t.yaml");
  EXPECT_EQ(sft_tokenizer_dir(cfg), ".cache/base_tok");
  const TrainConfig none = parse_config("model: {type: gpt}\ndata: {type: sft, path: t.jsonl}\nsft: {max_len: 64}\n",
                                        "t.yaml");
  EXPECT_THROW(sft_tokenizer_dir(none), InputError);
}

TEST(SftExactMatchExamples, DistinctPromptsAndASeededSample) {
  std::vector<SftRecord> recs;
  for (int i = 0; i < 40; ++i) {
    recs.push_back(pc("w" + std::to_string(i), "x"));
    if (i % 3 == 0) recs.push_back(pc("w" + std::to_string(i), "y"));  // an alternate: same prompt
  }
  const SftDataset d = SftDataset::from_records(recs, "mem", bytes_tok(), SftDataOptions{});
  ASSERT_EQ(d.size(), 54);
  const std::vector<int64_t> all = sft_exact_match_examples(d, 0, 1);
  ASSERT_EQ(all.size(), 40u);
  std::set<std::string> prompts;
  for (const int64_t i : all) prompts.insert(d.record(i).prompt);
  EXPECT_EQ(prompts.size(), 40u);
  EXPECT_EQ(all[1], 2);  // w0, w0 (alternate, skipped), w1
  EXPECT_EQ(sft_exact_match_examples(d, 40, 1), all);

  const std::vector<int64_t> a = sft_exact_match_examples(d, 10, 7), b = sft_exact_match_examples(d, 10, 7),
                             c = sft_exact_match_examples(d, 10, 8);
  ASSERT_EQ(a.size(), 10u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  for (const int64_t i : a) EXPECT_NE(std::find(all.begin(), all.end(), i), all.end());
}

// A tiny GPT trained on three prompts answers them; exact match counts an
// answer only with its EOS, and any listed answer counts.
TEST(SftExactMatch, ATrainedGptAnswersItsPrompts) {
  const std::vector<SftRecord> recs = {pc("ab:", "xy"), pc("cd:", "zz", {"q", "zz"}), pc("ef:", "yx")};
  SftDataOptions o;
  o.max_len = 16;
  const SftDataset d = SftDataset::from_records(recs, "mem", bytes_tok(), o);
  nn::GptOptions go;
  go.vocab_size = 257;
  go.block_size = 16;
  go.n_layer = 1;
  go.n_head = 2;
  go.n_embd = 32;
  go.seed = 5;
  auto rng = std::make_shared<nn::RngStream>();
  nn::Gpt gpt(go, rng);

  const ExactMatch before = sft_exact_match(gpt, d, bytes_tok(), 0, 4, 0, true);
  EXPECT_EQ(before.total, 3);
  EXPECT_EQ(before.correct, 0);

  SftLoaderOptions lo;
  lo.batch = 3;
  lo.seq_len = 16;
  lo.pack = false;
  lo.shuffle = false;
  lo.pad_id = d.eos();
  SftLoader loader(d, lo);
  nn::Optimizer opt(gpt.parameters(), nn::OptimizerOptions{});
  nn::CrossEntropyLoss ce;
  SftBatch b;
  gpt.train();
  for (int s = 0; s < 150; ++s) {
    loader.next(&b);
    gpt.zero_grad();
    Tensor logits = gpt.forward(Tensor::from_vector(b.tokens, {3, 16}, Device::cpu()));
    ce.forward_backward(logits, b.targets, 257, 1.0f);
    gpt.backward(logits);
    opt.step(3e-3);
  }
  const ExactMatch after = sft_exact_match(gpt, d, bytes_tok(), 0, 4, 0, true);
  ASSERT_EQ(after.predictions.size(), 3u);
  EXPECT_EQ(after.correct, 3) << after.predictions[0].output << " | " << after.predictions[1].output << " | "
                              << after.predictions[2].output;
  EXPECT_EQ(after.predictions[1].output, "zz");
  EXPECT_TRUE(after.predictions[1].stopped);
  EXPECT_DOUBLE_EQ(after.rate(), 1.0);

  // With room for fewer tokens than the answer and its EOS, nothing counts.
  const ExactMatch cut = sft_exact_match(gpt, d, bytes_tok(), 0, 2, 0, true);
  EXPECT_EQ(cut.correct, 0);
  EXPECT_FALSE(cut.predictions[0].stopped);
  EXPECT_EQ(cut.predictions[0].output, "xy");
}

}  // namespace
}  // namespace kiln
