// Language-model pretraining (data.type: tokens, model.type: gpt): next-token
// prediction on llm.c token shards with a GPT, cross-entropy over every
// position.
//
// An "example" is one sequence of T = model.gpt.block_size tokens (a window
// of T + 1 tokens from the shards: x = the first T, y = the last T). The
// trainer's batch_size counts sequences; TaskStats.samples counts sequences
// and TaskStats.tokens counts B·T tokens; the loss is the mean over tokens.
//
// Data on a fresh checkout: when data.tokenizer has no encoder.json, or
// data.train_shards / data.val_shards match no file, and data.text_files is
// set (e.g. [/usr/share/games/fortunes]), the task first builds what is
// missing and leaves it where the config points, so the next run starts at
// once:
//   - a byte-level BPE of model.gpt.vocab_size tokens trained on the text
//     (data/bpe_train.h), saved as data.tokenizer/{encoder.json,vocab.bpe};
//   - token shards (data/corpus.h's prepare_token_data, val_fraction =
//     data.val_fraction) in the directory of data.train_shards, named
//     train_NNNNNN.bin and val_NNNNNN.bin (the globs must match those names).
// A new tokenizer always rebuilds the shards (old ones used other ids). Only
// rank 0 builds; other ranks wait for its prepare.json.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/token_loader.h"
#include "data/tokenizer.h"
#include "nn/gpt.h"
#include "nn/loss.h"
#include "trainers/config.h"
#include "trainers/task.h"

namespace kiln {

/// The GPT a config describes (seed = the config's seed).
nn::GptOptions gpt_options(const TrainConfig& cfg);

/// Files matching a glob pattern, sorted; empty when none (or pattern empty).
std::vector<std::string> glob_files(const std::string& pattern);

/// Builds the tokenizer and shards `cfg` names if they are missing (see the
/// header comment); a no-op when everything exists. InputError when
/// something is missing and cannot be built (no data.text_files, globs that
/// would not match the built names).
void ensure_token_data(const TrainConfig& cfg);

class LanguageModelTask : public Task {
 public:
  /// Builds missing data (ensure_token_data), opens the shards and the
  /// tokenizer, builds the GPT (loading model.init_from, a Hugging Face
  /// GPT-2 safetensors file, when set).
  LanguageModelTask(const TrainConfig& cfg, Device device);

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }
  TaskStats train_micro_batch(float loss_scale) override;
  /// Mean token loss over the split's sequential windows (at most
  /// max_batches batches; 0 = all). Splits: train and val.
  TaskStats evaluate(Split split, int64_t max_batches) override;
  bool has_split(Split s) const override;
  /// Sequences per epoch over all ranks (an epoch is whole optimizer steps).
  int64_t train_examples() const override { return train_->windows_per_epoch(); }
  bool is_classifier() const override { return false; }
  const char* unit() const override { return "tokens"; }
  /// FLOPs per sequence: T · (6·N + 12·L·H·Q·T) (nn::Gpt::train_flops_per_token).
  double train_flops_per_example() const override { return flops_per_sequence_; }
  nlohmann::json data_state() const override;
  void restore_data_state(const nlohmann::json& s) override;
  /// 96 tokens continuing <|endoftext|> (temperature 0.8, top-k 40, seeded
  /// by the config's seed; document ends show as "<|endoftext|>"); "" without
  /// a tokenizer.
  std::string sample_text() override;
  std::string describe_data() const override;

  nn::Gpt& gpt() { return *model_; }
  /// The tokenizer (null when the config names none).
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }

 private:
  Tensor upload(const std::vector<int32_t>& ids, int64_t B) const;  // (B, T) on the device
  void check_ids(const std::vector<int32_t>& ids, const char* what) const;

  TrainConfig cfg_;
  Device device_;
  int64_t T_, B_, V_;
  std::vector<std::string> train_paths_, val_paths_;
  std::unique_ptr<TokenLoader> train_;
  int64_t val_windows_ = 0;  // sequential windows in the val shards
  std::unique_ptr<Tokenizer> tokenizer_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Gpt> model_;
  nn::CrossEntropyLoss loss_;
  double flops_per_sequence_ = 0;
  int64_t accum_ = 1;           // micro-batches per step (trainer's plan_batch)
  int64_t micro_ = 0;           // next micro-batch within the step
  std::vector<int32_t> x_, y_;  // host buffers of a step's windows (B·accum, T)
};

/// A trained GPT loaded from a checkpoint directory, or a run directory (its
/// newest valid checkpoint), with the config.yaml saved in the run directory.
struct LoadedGpt {
  TrainConfig cfg;
  std::string checkpoint;  ///< the checkpoint directory read
  Device device;
  std::shared_ptr<nn::RngStream> rng;
  std::unique_ptr<nn::Gpt> model;  ///< on `device`, eval mode
};

/// `overrides` apply to the saved config (e.g. "device=cpu"). InputError
/// when the directory holds no valid checkpoint, config.yaml is missing or
/// the config is not a GPT.
LoadedGpt load_gpt_checkpoint(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace kiln
