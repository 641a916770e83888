// Language-model pretraining (data.type: tokens): next-token prediction on
// llm.c token shards with the language model the registry builds for
// model.type (a GPT), cross-entropy over every position.
//
// An "example" is one sequence of T tokens (the model's context; a window of
// T + 1 tokens from the shards: x = the first T, y = the last T). The
// trainer's batch_size counts sequences; a step's StepBatch counts sequences
// (examples) and B·T tokens (units, loss_tokens); the loss is the mean over
// tokens. Batches come from a StepLoader (read a step ahead, uploaded from
// pinned memory).
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
// rank 0 builds; the others wait for it at a barrier of the communicator.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/token_loader.h"
#include "data/tokenizer.h"
#include "nn/gpt.h"
#include "nn/loss.h"
#include "trainers/config.h"
#include "trainers/step_loader.h"
#include "trainers/task.h"

namespace kiln {

/// Files matching a glob pattern, sorted; empty when none (or pattern empty).
std::vector<std::string> glob_files(const std::string& pattern);

/// Builds the tokenizer and shards `cfg` names if they are missing (see the
/// header comment); a no-op when everything exists. InputError when
/// something is missing and cannot be built (no data.text_files, globs that
/// would not match the built names). With a communicator of more than one
/// process, rank 0 builds and every rank leaves after a barrier (so the
/// others never poll the file system; a failure on rank 0 ends the job).
void ensure_token_data(const TrainConfig& cfg, Communicator* comm = nullptr);

/// A token loader's position as a checkpoint's state.json holds it
/// ({epoch, step, fingerprint, micro: 0}; checkpoints fall on step
/// boundaries), and back: InputError naming `what` when a field is missing or
/// the position is inside a step. Shared by the token tasks (LM, SFT).
nlohmann::json loader_position_json(const LoaderPosition& p);
LoaderPosition loader_position_from_json(const nlohmann::json& j, const std::string& what);

class LanguageModelTask : public Task {
 public:
  /// Builds missing data (ensure_token_data over ctx's communicator), opens
  /// the shards and the tokenizer, and builds the registry's model for
  /// model.type (a GPT).
  LanguageModelTask(const TrainConfig& cfg, const TaskContext& ctx);

  nn::Module& model() override { return *model_; }
  nn::RngStream& rng() override { return *rng_; }
  StepBatch begin_step() override;
  void train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) override;
  /// Mean token loss over the split's sequential windows (at most
  /// max_batches batches; 0 = all). Splits: train and val.
  TaskStats evaluate(Split split, int64_t max_batches) override;
  bool has_split(Split s) const override;
  /// Sequences per epoch over all ranks (an epoch is whole optimizer steps).
  int64_t train_examples() const override { return train_->windows_per_epoch(); }
  bool has_accuracy() const override { return false; }
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

  nn::Gpt& gpt() { return *gpt_; }
  /// The tokenizer (null when the config names none).
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }

 private:
  StepLoader::Filled fill_step(int32_t* x, int32_t* y);
  nlohmann::json loader_position() const;

  TrainConfig cfg_;
  TaskContext ctx_;
  int64_t T_ = 0, B_ = 0, V_ = 0;
  std::vector<std::string> train_paths_, val_paths_;
  std::unique_ptr<TokenLoader> train_;
  int64_t val_windows_ = 0;  // sequential windows in the val shards
  std::unique_ptr<Tokenizer> tokenizer_;
  std::shared_ptr<nn::RngStream> rng_;
  std::unique_ptr<nn::Module> model_;
  nn::Gpt* gpt_ = nullptr;  // model_ as a GPT (sampling)
  nn::CrossEntropyLoss loss_;
  double flops_per_sequence_ = 0;
  std::unique_ptr<StepLoader> loader_;
  const StepLoader::Step* step_ = nullptr;  // the current step's tokens on the device
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
