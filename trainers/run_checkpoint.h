// Reading a trained model back: the one checkpoint loader that `kiln eval`,
// `kiln sample`, `kiln export` and the trainer's resume share.
//
//   CheckpointSource src = resolve_checkpoint(path, overrides);  // dir + config.yaml
//   ... build the model from src.cfg (the registry) ...
//   load_model_state(load_checkpoint(src.checkpoint), model);    // weights + buffers
#pragma once

#include <string>
#include <vector>

#include "nn/module.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"

namespace kiln {

/// A checkpoint directory and the config of the run that wrote it.
struct CheckpointSource {
  std::string checkpoint;  ///< RUN/checkpoints/step_N
  std::string run_dir;     ///< RUN
  TrainConfig cfg;         ///< RUN/config.yaml with the overrides applied
};

/// `path` is a checkpoint directory or a run directory (then its newest
/// valid checkpoint); `overrides` apply to the saved config.yaml
/// ("device=cpu"). InputError when the path is not a directory, holds no
/// valid checkpoint, or config.yaml is missing.
CheckpointSource resolve_checkpoint(const std::string& path, const std::vector<std::string>& overrides = {});

/// Copies a checkpoint's model.safetensors into `model`: every parameter
/// (trainable or frozen) and every buffer by its full name, shapes checked,
/// then the bf16 copies refreshed. InputError naming the file and tensor when
/// one is missing or mis-shaped, or when the file holds a tensor the model
/// has no place for (a checkpoint of another model). An adapter-only
/// checkpoint of a LoRA run loads its base and then its adapters
/// (trainers/lora_checkpoint.h).
void load_model_state(const Checkpoint& ck, nn::Module& model);

/// The tensors model.safetensors holds for `model`: its parameters' master
/// weights and its buffers, by full name.
std::vector<NamedTensor> model_state(nn::Module& model);

}  // namespace kiln
