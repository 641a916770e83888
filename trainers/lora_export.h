// A LoRA run's adapters in PEFT's format, and a merged GPT-2 (kiln export
// --adapter / --merge).
//
// PEFT (huggingface/peft, checked in src/peft/tuners/lora/layer.py and its
// saved adapters) stores, for GPT2LMHeadModel wrapped in a PeftModel:
//   adapter_model.safetensors
//     base_model.model.transformer.h.N.attn.c_attn.lora_A.weight  (r, in)
//     base_model.model.transformer.h.N.attn.c_attn.lora_B.weight  (out, r)
//   (lora_A is nn.Linear(in, r), lora_B nn.Linear(r, out) whatever the base
//   layer; for GPT-2's Conv1D, in and out are its weight's (in, out) shape,
//   and the delta is merged as (B·A)ᵀ since fan_in_fan_out is true), and
//   adapter_config.json
//     {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r", "lora_alpha",
//      "lora_dropout", "target_modules", "fan_in_fan_out": true,
//      "bias": "none", "base_model_name_or_path", "inference_mode": true, ...}
// with scaling lora_alpha / r. kiln's A and B are those same matrices
// (its Linear keeps (out, in) and does the transposing on export), so they
// are written as they are.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/safetensors_tensor.h"
#include "nn/gpt.h"

namespace kiln {

/// PEFT's name for an adapter tensor of kiln's ("h.0.attn.c_attn.lora_A.weight").
std::string peft_tensor_name(const std::string& kiln_name);

/// The adapter tensors of `model` under PEFT's names (fp32, host).
std::vector<NamedTensor> peft_adapter_tensors(nn::Gpt& model);

/// adapter_config.json for `model`'s adapters; `lora_info` is the "lora"
/// entry of the run's checkpoint (trainers/lora_checkpoint.h). The target
/// modules are the adapted layers' last two name parts (attn.c_attn, ...)
/// when those match exactly the adapted layers, else their full names.
nlohmann::json peft_adapter_config(nn::Gpt& model, const nlohmann::json& lora_info);

/// Writes DIR/adapter_model.safetensors and DIR/adapter_config.json
/// (creating DIR). Returns the number of tensors written.
size_t export_peft_adapter(nn::Gpt& model, const nlohmann::json& lora_info, const std::string& dir);

/// Folds every adapter into its weight (W += (alpha/r)·B·A) and writes the
/// plain Hugging Face GPT-2 safetensors file (nn/gpt_io.h) to `path`.
void export_merged_gpt(nn::Gpt& model, const std::string& path);

}  // namespace kiln
