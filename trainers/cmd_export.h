// `kiln export`: a GPT checkpoint as a Hugging Face GPT-2 safetensors file.
//
//   kiln export DIR --out FILE.safetensors
//   kiln export LORA_RUN --out FILE.safetensors --merge   (W += (alpha/r)·B·A)
//   kiln export LORA_RUN --adapter --out OUTDIR           (PEFT adapter files)
//
// A LoRA run (lora.enabled) has adapter-only checkpoints: it exports either
// merged into a plain GPT-2 file or as PEFT's adapter_model.safetensors +
// adapter_config.json (trainers/lora_export.h); a plain export of one is an
// error saying so.
//
// DIR is a checkpoint or run directory (as for kiln sample). The file holds
// the weights under Hugging Face GPT-2's names and layout (nn/gpt_io.h), so
//   GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=C,
//                              n_layer=L, n_head=H)).transformer
//       .load_state_dict(safetensors.torch.load_file(FILE), strict=False)
// loads it (strict=False only for the causal-mask buffers older
// transformers versions keep in the state dict); the architecture is in the
// file's metadata.
#pragma once

#include <cstdio>

namespace kiln {

/// argv[0] is DIR. Returns 0 on success; 2 for a usage error or bad input.
int cmd_export(int argc, char** argv);
int cmd_export(int argc, char** argv, std::FILE* out, std::FILE* err);

}  // namespace kiln
