#include "trainers/cmd_data.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln data prepare [--text FILE|DIR ...] --tokenizer DIR --out DIR [--val-fraction F] [--shard-tokens N]\n"
    "  --text          corpus files (fortune files or plain text) or fortune directories;\n"
    "                  default: the fortunes corpus in /usr/share/games/fortunes\n"
    "  --tokenizer     directory with encoder.json and vocab.bpe (kiln tokenizer train, or GPT-2's)\n"
    "  --out           where train_NNNNNN.bin, val_NNNNNN.bin and prepare.json go\n"
    "  --val-fraction  share of documents held out for validation, in [0, 1) (default 0.1)\n"
    "  --shard-tokens  tokens per shard at most (default 100000000)\n";

int usage_error(std::FILE* err, const std::string& why) {
  if (!why.empty()) std::fprintf(err, "kiln data: %s\n", why.c_str());
  std::fputs(kUsage, err);
  return 2;
}

int run_prepare(int argc, char** argv, std::FILE* out, std::FILE* err) {
  const ParsedArgs a =
      parse_args(argc, argv, 1, {"--tokenizer", "--out", "--val-fraction", "--shard-tokens"}, {"--text"}, {});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--tokenizer") || !a.has("--out")) return usage_error(err, "prepare needs --tokenizer and --out");
  double val = 0.1;
  if (a.has("--val-fraction")) {
    const std::string& s = a.one("--val-fraction");
    char* end = nullptr;
    errno = 0;
    val = std::strtod(s.c_str(), &end);
    if (errno != 0 || end != s.c_str() + s.size() || !(val >= 0.0 && val < 1.0))
      return usage_error(err, "--val-fraction: expected a number in [0, 1), got '" + s + "'");
  }
  long long shard_tokens = 100000000;
  if (a.has("--shard-tokens")) {
    const std::string& s = a.one("--shard-tokens");
    char* end = nullptr;
    errno = 0;
    shard_tokens = std::strtoll(s.c_str(), &end, 10);
    if (errno != 0 || end != s.c_str() + s.size() || shard_tokens < 1 || shard_tokens > 2147483647LL)
      return usage_error(err, "--shard-tokens: expected an integer in 1..2147483647, got '" + s + "'");
  }
  const std::vector<std::string> paths =
      a.has("--text") ? a.values.at("--text") : std::vector<std::string>{kFortunesDir};
  const auto t0 = std::chrono::steady_clock::now();
  const PrepareStats st = prepare_token_data(paths, a.one("--tokenizer"), a.one("--out"), val, shard_tokens);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(out,
               "wrote %lld train tokens (%lld documents, %zu shard%s) and %lld val tokens (%lld documents, %zu "
               "shard%s) to %s in %.2f s\n",
               static_cast<long long>(st.train_tokens), static_cast<long long>(st.train_documents),
               st.train_shards.size(), st.train_shards.size() == 1 ? "" : "s", static_cast<long long>(st.val_tokens),
               static_cast<long long>(st.val_documents), st.val_shards.size(), st.val_shards.size() == 1 ? "" : "s",
               a.one("--out").c_str(), s);
  return 0;
}

}  // namespace

int cmd_data(int argc, char** argv, std::FILE* out, std::FILE* err) {
  if (argc < 1) return usage_error(err, "");
  const std::string sub = argv[0];
  if (sub == "-h" || sub == "--help") {
    std::fputs(kUsage, out);
    return 0;
  }
  try {
    if (sub == "prepare") return run_prepare(argc, argv, out, err);
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
  return usage_error(err, "unknown subcommand '" + sub + "'");
}

int cmd_data(int argc, char** argv) { return cmd_data(argc, argv, stdout, stderr); }

}  // namespace kiln
