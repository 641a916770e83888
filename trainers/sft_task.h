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
// Evaluation by generation (sft_exact_match): for each selected held-out
// prompt, greedy decoding up to EOS (or sft.max_new_tokens), and the
// decoded completion compared byte for byte with the record's answers (any
// one counts). An answer without its EOS within the limit is wrong.
#pragma once

#include <string>
#include <vector>

#include "data/sft_dataset.h"
#include "data/sft_loader.h"
#include "nn/gpt.h"
#include "trainers/config.h"
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
/// missing (see the header comment; only rank 0 builds, the others wait for
/// it up to dist.timeout_s); then checks that data.path (and any val/test
/// path) exists. InputError naming the key otherwise.
void ensure_sft_data(const TrainConfig& cfg);

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

/// Greedy answers from `gpt` (eval mode; any segment ids cleared) to the
/// prompts sft_exact_match_examples picks, compared with their answers.
ExactMatch sft_exact_match(nn::Gpt& gpt, const SftDataset& data, const Tokenizer& tok, int64_t max_examples,
                           int64_t max_new_tokens, uint64_t seed, bool keep_predictions = false);

}  // namespace kiln
