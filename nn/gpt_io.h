// GPT weights in Hugging Face GPT-2's safetensors layout, both ways, so a
// kiln model loads into PyTorch (transformers' GPT2LMHeadModel) and a user
// with GPT-2's model.safetensors can fine-tune it in kiln.
//
// What differs between kiln's parameters and the HF file:
//  - HF GPT-2 implements its projections with Conv1D, whose weight is
//    (in, out), the transpose of nn.Linear's (out, in) that kiln keeps. The
//    four per-block matrices h.N.attn.c_attn, h.N.attn.c_proj, h.N.mlp.c_fc
//    and h.N.mlp.c_proj are transposed on the way out and back in.
//  - kiln pads wte to Vp rows (a multiple of 128); the file has the V real
//    rows. Import zeroes the padding rows.
//  - The LM head is tied to wte: the file has no lm_head.weight (import
//    accepts one and checks nothing of it beyond its shape, since it is wte).
//  - Files saved from GPT2LMHeadModel name tensors "transformer.wte.weight";
//    import accepts both spellings. Older files carry the causal-mask buffers
//    h.N.attn.bias (1, 1, n_ctx, n_ctx) and h.N.attn.masked_bias; import skips
//    them (kiln's attention is causal by construction).
// Every other name is the same (wte.weight, h.0.ln_1.weight, ln_f.bias, ...).
// Export writes fp32; import reads F32, BF16, F16 or F64.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "data/safetensors.h"
#include "data/safetensors_tensor.h"
#include "nn/gpt.h"

namespace kiln::nn {

/// True for the four per-block matrices stored transposed (Conv1D) in HF files.
bool is_conv1d_weight(const std::string& name);

/// The model's weights as HF GPT-2 tensors on the host (fp32): names as in
/// the file, Conv1D weights (in, out), wte with V rows.
/// LoRA adapter tensors are left out (merge them first, nn/lora.h).
std::vector<NamedTensor> gpt_to_hf(Gpt& model);

/// Writes gpt_to_hf(model) to `path` (atomically), with metadata
/// {"format": "pt"} and the architecture (vocab_size, n_positions, n_embd,
/// n_layer, n_head) so import can check it.
void export_gpt_safetensors(Gpt& model, const std::string& path);

/// Loads HF GPT-2 weights into `model` (any device; bf16 copies refreshed).
/// Every parameter must be in the file with the shape the model's config
/// gives it; a tensor the model has no place for is an error too (a file of
/// another architecture). InputError naming the file and tensor otherwise.
void import_gpt_safetensors(Gpt& model, const SafetensorsFile& file);
void import_gpt_safetensors(Gpt& model, const std::string& path);

/// The architecture a HF GPT-2 file implies: vocab_size and block_size from
/// wte/wpe, n_embd, n_layer from the h.N blocks, n_head from the metadata
/// kiln writes (else head dim 64, GPT-2's), bias from the presence of
/// ln_f.bias. InputError if the file is not a GPT-2.
GptOptions gpt_options_from_hf(const SafetensorsFile& file);

}  // namespace kiln::nn
