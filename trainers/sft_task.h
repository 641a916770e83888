// Supervised fine-tuning (data.type: sft): a GPT learns to answer prompts,
// with loss on the completion tokens only (data/sft_dataset.h), examples
// packed into windows (data/sft_loader.h).
//
// This file holds what turns a config into the SFT data: the paths of the
// splits, the tokenizer, the template and length options, the loader's
// options, and building the CMU dictionary splits on first use. `kiln data
// inspect` runs from these alone (no model is built).
//
// Config → data:
//   data.path / data.val_path / data.test_path   the train / val / test JSONL
//   data.tokenizer      tokenizer directory; empty: the tokenizer of the kiln
//                       run model.init_from names (its config.yaml)
//   data.cmudict        when set and the splits are missing, they are built
//                       from this dictionary (data/cmudict.h) into the
//                       directory of data.path, which must then be
//                       DIR/train.jsonl (val_path DIR/val.jsonl, test_path
//                       DIR/test.jsonl when given)
//   data.pack           first-fit packing (true) or one example per row
//   data.skip_bad_lines count and skip bad JSONL lines instead of stopping
//   data.shuffle        seeded order for training (evaluation is in file order)
//   sft.prompt_template text around each prompt ({prompt})
//   sft.max_len         window length T and the longest example, in positions
//   sft.overflow        truncate (the prompt's left) or drop longer examples
//
// The task (SftTask, data.type sft): a GPT from the model registry, built
// for windows of T = sft.max_len positions and started from model.init_from
// (a kiln run directory or a Hugging Face GPT-2 file). A step reads B x
// grad_accum rows per rank (data/sft_loader.h); with data.pack the GPT gets
// the rows' segment ids and positions (nn::Gpt::set_packing), so packed
// examples never see each other; unpacked rows run as plain sequences (an
// example starts each row and padding follows it, which causal attention
// keeps out of the example). The loss is the cross-entropy of the targets
// that carry loss (completions and their EOS), and a step's gradient is its
// mean over the step's loss tokens on all ranks (the trainer's token-
// weighted scale). Throughput counts real tokens (positions that hold an
// example, not padding); an "example" for the trainer's batch arithmetic is
// a row.
//
// Evaluation: the completion loss over the split's rows (file order; val at
// most train.eval_batches batches, during training and at its end, as the
// trainer asks for every task; test and kiln eval the whole split), and
// exact match by generation over sft.eval_examples prompts of val and test
// (split over ranks).
//
// Evaluation by generation (sft_exact_match): for each selected held-out
// prompt, greedy decoding up to EOS (or sft.max_new_tokens), and the
// decoded completion compared byte for byte with the record's answers (any
// one counts). An answer without its EOS within the limit is wrong.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/sft_dataset.h"
#include "data/sft_loader.h"
#include "nn/gpt.h"
#include "nn/loss.h"
#include "trainers/config.h"
#include "trainers/step_loader.h"
#include "trainers/task.h"

namespace kiln {

/// Template, max_len, overflow and skip_bad_lines from the config.
SftDataOptions sft_data_options(const TrainConfig& cfg);

/// The JSONL of a split ("" when the config names none).
std::string sft_split_path(const TrainConfig& cfg, Split s);

/// data.tokenizer, or else the data.tokenizer of the run directory
/// model.init_from names. InputError when neither gives one.
std::string sft_tokenizer_dir(const TrainConfig& cfg);

/// Builds the CMU dictionary splits when data.cmudict is set and they are
/// missing (see the header comment; with a communicator of several
/// processes rank 0 builds and all leave after a barrier); then checks that
/// data.path (and any val/test path) exists. InputError naming the key
/// otherwise.
void ensure_sft_data(const TrainConfig& cfg, Communicator* comm = nullptr);

/// Loader options for a split: T = sft.max_len, packing per data.pack,
/// shuffled (data.shuffle) only for training, padding with EOS.
SftLoaderOptions sft_loader_options(const TrainConfig& cfg, const SftDataset& data, Split s, int64_t batch, int rank,
                                    int world);

/// One generated answer.
struct SftPrediction {
  int64_t example = 0;   ///< index in the dataset
  std::string output;    ///< decoded completion (without the EOS)
  bool stopped = false;  ///< ended with EOS within the limit
  bool correct = false;  ///< stopped, and output is one of the record's answers
};

struct ExactMatch {
  int64_t correct = 0, total = 0;
  std::vector<SftPrediction> predictions;  ///< when asked for, in the order evaluated
  double rate() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
};

/// The examples exact match is measured on: the first example of each
/// distinct prompt (records with the same prompt share their answers), all
/// of them when there are at most `max_examples`, else a seeded sample of
/// that many (seeded_permutation(distinct, seed, 0)), in dataset order.
std::vector<int64_t> sft_exact_match_examples(const SftDataset& data, int64_t max_examples, uint64_t seed);

/// Greedy answers from `gpt` (generate() runs in eval mode, one sequence)
/// to the prompts of `examples`, compared with their answers.
ExactMatch sft_exact_match(nn::Gpt& gpt, const SftDataset& data, const Tokenizer& tok,
                           const std::vector<int64_t>& examples, int64_t max_new_tokens, bool keep_predictions = false);
/// The same over the prompts sft_exact_match_examples picks.
ExactMatch sft_exact_match(nn::Gpt& gpt, const SftDataset& data, const Tokenizer& tok, int64_t max_examples,
                           int64_t max_new_tokens, uint64_t seed, bool keep_predictions = false);

class SftTask : public Task {
 public:
  /// Builds missing data (ensure_sft_data), reads and tokenizes the splits,
  /// and builds the registry's model for model.type (a GPT) with context
  /// sft.max_len.
  SftTask(const TrainConfig& cfg, const TaskContext& ctx);

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }
  StepBatch begin_step() override;
  void train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) override;
  /// Completion loss (loss_sum / loss_count over loss tokens) and, for val
  /// and test, exact match (TaskStats::exact_match_*).
  TaskStats evaluate(Split split, int64_t max_batches) override;
  bool has_split(Split s) const override;
  /// Rows of the first epoch over all ranks (packing changes the count a
  /// little from epoch to epoch).
  int64_t train_examples() const override { return train_loader_->rows_per_epoch(); }
  bool has_accuracy() const override { return false; }
  const char* unit() const override { return "tokens"; }
  /// FLOPs per row of T positions: T · (6·N + 12·L·H·Q·T).
  double train_flops_per_example() const override { return flops_per_row_; }
  nlohmann::json data_state() const override;
  void restore_data_state(const nlohmann::json& s) override;
  /// The model's greedy answer to the first held-out prompt.
  std::string sample_text() override;
  std::string describe_data() const override;

  nn::Gpt& gpt() { return *gpt_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  /// The split's examples (null when the config has none).
  const SftDataset* dataset(Split s) const;

 private:
  StepLoader::Filled fill_step(const std::vector<void*>& host);
  nlohmann::json loader_position() const;
  void set_packing(const Tensor& segments, const Tensor& positions);

  TrainConfig cfg_;
  TaskContext ctx_;
  int64_t T_ = 0, B_ = 0, V_ = 0;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<SftDataset> train_, val_, test_;
  std::unique_ptr<SftLoader> train_loader_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Module> model_;
  nn::Gpt* gpt_ = nullptr;
  nn::CrossEntropyLoss loss_;
  double flops_per_row_ = 0;
  std::unique_ptr<StepLoader> loader_;
  const StepLoader::Step* step_ = nullptr;
};

}  // namespace kiln
