#include "trainers/cmd_sample.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"
#include "trainers/lm_task.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln sample DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "                       [--min-tokens M] [--device cpu|cuda|auto] [--no-cache]\n"
    "  DIR            a checkpoint directory (RUN/checkpoints/step_N) or a run directory (its newest)\n"
    "  --prompt       text to continue (default: none, a fresh document)\n"
    "  --tokens       tokens to generate at most (default 200; stops early at <|endoftext|>)\n"
    "  --temperature  softmax temperature; 0 = greedy (default 0.8)\n"
    "  --top-k        sample among the K most likely tokens; 0 = all (default 40)\n"
    "  --seed         seed of the draws (default 1)\n"
    "  --min-tokens   no <|endoftext|> before this many tokens (default 1)\n"
    "  --device       where to run (default: the run's config)\n"
    "  --no-cache     recompute the whole context for every token (slow; for comparison)\n";

int usage_error(std::FILE* err, const std::string& why) {
  if (!why.empty()) std::fprintf(err, "kiln sample: %s\n", why.c_str());
  std::fputs(kUsage, err);
  return 2;
}

// Integer options and their ranges (the range is part of the message when a
// value falls outside it).
constexpr long long kMaxTokens = 1 << 24;
constexpr long long kMaxSeed = 0x7fffffffffffffffLL;

int run(int argc, char** argv, std::FILE* out, std::FILE* err) {
  if (argc < 1 || std::string(argv[0]).rfind("--", 0) == 0) return usage_error(err, "needs a checkpoint or run directory");
  const ParsedArgs a =
      parse_args(argc, argv, 1, {"--prompt", "--tokens", "--temperature", "--top-k", "--seed", "--min-tokens", "--device"}, {},
                 {"--no-cache"});
  if (!a.error.empty()) return usage_error(err, a.error);
  nn::GenerateOptions g;
  g.max_new_tokens = 200;
  g.temperature = 0.8f;
  g.top_k = 40;
  g.seed = 1;
  g.min_new_tokens = 1;
  g.use_cache = !a.flags.count("--no-cache");
  long long v = 0;
  double d = 0;
  if (a.has("--tokens")) {
    if (!parse_integer(a.one("--tokens"), 1, kMaxTokens, &v))
      return usage_error(err, integer_range_error("--tokens", a.one("--tokens"), 1, kMaxTokens));
    g.max_new_tokens = v;
  }
  if (a.has("--temperature")) {
    if (!parse_number(a.one("--temperature"), 0.0, 100.0, &d))
      return usage_error(err, "--temperature: expected a number in [0, 100], got '" + a.one("--temperature") + "'");
    g.temperature = static_cast<float>(d);
  }
  if (a.has("--top-k")) {
    if (!parse_integer(a.one("--top-k"), 0, kMaxTokens, &v))
      return usage_error(err, integer_range_error("--top-k", a.one("--top-k"), 0, kMaxTokens));
    g.top_k = v;
  }
  if (a.has("--seed")) {
    if (!parse_integer(a.one("--seed"), 0, kMaxSeed, &v))
      return usage_error(err, integer_range_error("--seed", a.one("--seed"), 0, kMaxSeed));
    g.seed = static_cast<uint64_t>(v);
  }
  if (a.has("--min-tokens")) {
    if (!parse_integer(a.one("--min-tokens"), 0, kMaxTokens, &v))
      return usage_error(err, integer_range_error("--min-tokens", a.one("--min-tokens"), 0, kMaxTokens));
    g.min_new_tokens = v;
  }
  std::vector<std::string> overrides;
  if (a.has("--device")) overrides.push_back("device=" + a.one("--device"));

  LoadedGpt m = load_gpt_checkpoint(argv[0], overrides);
  KILN_INPUT_CHECK(!m.cfg.data.tokenizer.empty(), m.checkpoint << ": the run's config names no data.tokenizer");
  const Tokenizer tok = Tokenizer::load(m.cfg.data.tokenizer);
  const std::string prompt = a.has("--prompt") ? a.one("--prompt") : "";
  std::vector<int32_t> ids;
  const int32_t eot = tok.eot_id();
  if (eot >= 0) ids.push_back(eot);
  tok.encode_append(prompt, &ids);
  KILN_INPUT_CHECK(!ids.empty(), "--prompt: empty, and the vocabulary has no <|endoftext|> to start from");
  g.stop_token = eot;

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> gen = m.model->generate(ids, g);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t n = gen.size();
  if (!gen.empty() && gen.back() == eot) gen.pop_back();
  const std::string text = prompt + tok.decode(gen);
  std::fwrite(text.data(), 1, text.size(), out);
  std::fputc('\n', out);
  std::fprintf(err, "kiln: %zu tokens in %.2f s (%.1f tokens/s, %s) from %s on %s\n", n, s, s > 0 ? n / s : 0.0,
               g.use_cache ? "KV cache" : "no cache", m.checkpoint.c_str(), m.device.str().c_str());
  return 0;
}

}  // namespace

int cmd_sample(int argc, char** argv, std::FILE* out, std::FILE* err) {
  if (argc >= 1 && (std::string(argv[0]) == "-h" || std::string(argv[0]) == "--help")) {
    std::fputs(kUsage, out);
    return 0;
  }
  try {
    return run(argc, argv, out, err);
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
}

int cmd_sample(int argc, char** argv) { return cmd_sample(argc, argv, stdout, stderr); }

}  // namespace kiln
