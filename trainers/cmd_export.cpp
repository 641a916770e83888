#include "trainers/cmd_export.h"

#include <string>

#include "nn/gpt_io.h"
#include "nn/lora.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"
#include "trainers/lm_task.h"
#include "trainers/lora_checkpoint.h"
#include "trainers/lora_export.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln export DIR --out FILE.safetensors [--merge]\n"
    "       kiln export DIR --adapter --out OUTDIR\n"
    "  DIR        a checkpoint directory (RUN/checkpoints/step_N) or a run directory (its newest)\n"
    "  --out      the Hugging Face GPT-2 safetensors file to write (fp32, Conv1D layout)\n"
    "  --merge    LoRA runs: fold the adapters into the weights, W += (alpha/r)·B·A\n"
    "  --adapter  LoRA runs: write OUTDIR/adapter_model.safetensors and adapter_config.json (PEFT)\n";

int usage_error(std::FILE* err, const std::string& why) {
  if (!why.empty()) std::fprintf(err, "kiln export: %s\n", why.c_str());
  std::fputs(kUsage, err);
  return 2;
}

}  // namespace

int cmd_export(int argc, char** argv, std::FILE* out, std::FILE* err) {
  if (argc >= 1 && (std::string(argv[0]) == "-h" || std::string(argv[0]) == "--help")) {
    std::fputs(kUsage, out);
    return 0;
  }
  if (argc < 1 || std::string(argv[0]).rfind("--", 0) == 0) return usage_error(err, "needs a checkpoint or run directory");
  const ParsedArgs a = parse_args(argc, argv, 1, {"--out"}, {}, {"--adapter", "--merge"});
  if (!a.error.empty()) return usage_error(err, a.error);
  const bool adapter = a.flags.count("--adapter") > 0, merge = a.flags.count("--merge") > 0;
  if (adapter && merge) return usage_error(err, "--adapter and --merge exclude each other");
  if (!a.has("--out")) return usage_error(err, adapter ? "needs --out OUTDIR" : "needs --out FILE.safetensors");
  try {
    // The weights are fp32 masters whatever the run trained in: read them on the CPU.
    LoadedGpt m = load_gpt_checkpoint(argv[0], {"device=cpu"});
    const size_t adapters = nn::named_adapters(*m.model).size();
    KILN_INPUT_CHECK(adapters > 0 || (!adapter && !merge),
                     (adapter ? "--adapter" : "--merge") << ": " << m.checkpoint << " is not a LoRA run's checkpoint");
    KILN_INPUT_CHECK(adapters == 0 || adapter || merge,
                     m.checkpoint << " holds LoRA adapters: export them with --adapter (PEFT) or fold them into "
                                  << "the weights with --merge");
    if (adapter) {
      const size_t n = export_peft_adapter(*m.model, adapter_checkpoint_info(load_checkpoint(m.checkpoint)),
                                           a.one("--out"));
      std::fprintf(out, "wrote %s/adapter_model.safetensors (%zu tensors, %zu adapters) and adapter_config.json "
                        "(PEFT LoRA) from %s\n",
                   a.one("--out").c_str(), n, adapters, m.checkpoint.c_str());
      return 0;
    }
    if (merge) export_merged_gpt(*m.model, a.one("--out"));
    else nn::export_gpt_safetensors(*m.model, a.one("--out"));
    const nn::GptOptions& o = m.model->options();
    std::fprintf(out, "wrote %s: GPT-2 (vocab %lld, context %lld, %lld layers, %lld heads, width %lld%s) from %s\n",
                 a.one("--out").c_str(), static_cast<long long>(o.vocab_size), static_cast<long long>(o.block_size),
                 static_cast<long long>(o.n_layer), static_cast<long long>(o.n_head),
                 static_cast<long long>(o.n_embd), merge ? ", LoRA merged" : "", m.checkpoint.c_str());
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
  return 0;
}

int cmd_export(int argc, char** argv) { return cmd_export(argc, argv, stdout, stderr); }

}  // namespace kiln
