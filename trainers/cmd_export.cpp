#include "trainers/cmd_export.h"

#include <string>

#include "nn/gpt_io.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"
#include "trainers/lm_task.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln export DIR --out FILE.safetensors\n"
    "  DIR    a checkpoint directory (RUN/checkpoints/step_N) or a run directory (its newest)\n"
    "  --out  the Hugging Face GPT-2 safetensors file to write (fp32, Conv1D layout)\n";

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
  const ParsedArgs a = parse_args(argc, argv, 1, {"--out"}, {}, {});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--out")) return usage_error(err, "needs --out FILE.safetensors");
  try {
    // The weights are fp32 masters whatever the run trained in: read them on the CPU.
    LoadedGpt m = load_gpt_checkpoint(argv[0], {"device=cpu"});
    nn::export_gpt_safetensors(*m.model, a.one("--out"));
    const nn::GptOptions& o = m.model->options();
    std::fprintf(out, "wrote %s: GPT-2 (vocab %lld, context %lld, %lld layers, %lld heads, width %lld) from %s\n",
                 a.one("--out").c_str(), static_cast<long long>(o.vocab_size), static_cast<long long>(o.block_size),
                 static_cast<long long>(o.n_layer), static_cast<long long>(o.n_head),
                 static_cast<long long>(o.n_embd), m.checkpoint.c_str());
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
  return 0;
}

int cmd_export(int argc, char** argv) { return cmd_export(argc, argv, stdout, stderr); }

}  // namespace kiln
