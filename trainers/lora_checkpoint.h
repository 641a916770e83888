// LoRA runs (lora.enabled): attaching the adapters the config asks for, and
// adapter-only checkpoints.
//
// A LoRA run trains adapters on a frozen base that model.init_from names, so
// its checkpoints hold only what the run changes:
//
//   model.safetensors      the adapter tensors (h.0.attn.c_attn.lora_A.weight,
//                          ...), metadata {"kiln_lora": "adapter"}
//   optimizer.safetensors  their optimizer state (nothing else has any)
//   state.json             the usual trainer state plus "lora":
//                            {rank, alpha, dropout, targets, adapted,
//                             base: {init_from, path, model_type, hash}}
//
// The base's identity is the path it was loaded from (model.init_from as
// given, and the exact checkpoint directory or file it resolved to, made
// absolute) and a 64-bit FNV-1a hash of its weights (every non-adapter
// parameter: name, shape and fp32 bytes, in the model's order). Loading an
// adapter checkpoint (load_model_state's hook, so resume, kiln eval, sample
// and export all take it):
//   - a model without adapters (eval, sample, export): the base is loaded
//     from the recorded path, its hash checked, the adapters attached with
//     the recorded settings, then the adapter tensors loaded;
//   - a model with adapters already (the trainer's resume: the base came
//     from model.init_from before the adapters were attached): the current
//     base's hash is checked, then the adapter tensors loaded.
// A hash that differs is an InputError naming both paths and both hashes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/lora.h"
#include "nn/module.h"
#include "nn/rng.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"

namespace kiln {

/// What identifies the base of a LoRA run.
struct LoraBase {
  std::string init_from;   ///< model.init_from as configured
  std::string path;        ///< the checkpoint directory or weights file it resolved to (absolute)
  std::string model_type;  ///< model.type (the loader a weights file needs)
  std::string hash;        ///< lora_base_hash of the weights loaded
};

/// A LoRA run's adapters and base.
struct LoraRun {
  nn::LoraOptions options;
  double alpha = 0, dropout = 0;     ///< as configured (lora.alpha, lora.dropout) for state.json
  std::vector<std::string> targets;  ///< the config's patterns
  nn::LoraAttachment attachment;
  LoraBase base;
};

/// nn::LoraOptions from cfg.lora.
nn::LoraOptions lora_options(const TrainConfig& cfg);

/// Hex FNV-1a 64 over the model's non-adapter parameters (name, shape, fp32
/// values, in parameters() order): the identity of a base.
std::string lora_base_hash(nn::Module& model);

/// For a model whose base weights are loaded (after apply_init_from):
/// records the base (path, hash), then attaches cfg.lora's adapters (the base
/// frozen). `rng` is the model's random stream (adapter dropout draws from
/// it); A draws from (cfg.seed, its own counters). InputError naming
/// lora.targets for a pattern that matches nothing.
std::unique_ptr<LoraRun> setup_lora(const TrainConfig& cfg, nn::Module& model, nn::RngStream& rng);

/// The start-up line: adapters, trainable share, and the optimizer state
/// bytes (`state_bytes` for the adapters) beside what full fine-tuning of
/// every parameter would hold.
std::string describe_lora(const LoraRun& run, nn::Module& model, int64_t state_bytes);

/// Writes an adapter-only checkpoint (see the header comment); `state` gets
/// the "lora" entry. Returns the directory, as save_checkpoint does.
std::string save_adapter_checkpoint(const std::string& run_dir, int64_t step, nn::Module& model, const LoraRun& run,
                                    const std::vector<NamedTensor>& optimizer_state, nlohmann::json state);

/// True when a checkpoint is adapter-only.
bool is_adapter_checkpoint(const Checkpoint& ck);

/// Loads an adapter-only checkpoint into `model` (see the header comment).
void load_adapter_checkpoint(const Checkpoint& ck, nn::Module& model);

/// The "lora" entry of an adapter checkpoint's state.json (settings and base).
const nlohmann::json& adapter_checkpoint_info(const Checkpoint& ck);

}  // namespace kiln
