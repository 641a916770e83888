#include "trainers/cmd_data.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "data/cmudict.h"
#include "data/corpus.h"
#include "data/sft_dataset.h"
#include "data/sft_loader.h"
#include "data/tokenizer.h"
#include "kernels/cross_entropy.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"
#include "trainers/config.h"
#include "trainers/sft_task.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln data prepare [--text FILE|DIR ...] --tokenizer DIR --out DIR [--val-fraction F] [--shard-tokens N]\n"
    "       kiln data cmudict --out DIR [--source FILE] [--seed N] [--val-fraction F] [--test-fraction F]\n"
    "       kiln data inspect CONFIG [--split train|val|test] [--windows N] [key.sub=value ...]\n"
    "prepare: tokenize text into llm.c token shards\n"
    "  --text          corpus files (fortune files or plain text) or fortune directories;\n"
    "                  default: the fortunes corpus in /usr/share/games/fortunes\n"
    "  --tokenizer     directory with encoder.json and vocab.bpe (kiln tokenizer train, or GPT-2's)\n"
    "  --out           where train_NNNNNN.bin, val_NNNNNN.bin and prepare.json go\n"
    "  --val-fraction  share of documents held out for validation, in [0, 1) (default 0.1)\n"
    "  --shard-tokens  tokens per shard at most (default 100000000)\n"
    "cmudict: the CMU Pronouncing Dictionary as SFT JSONL, split by headword\n"
    "  --out           where train.jsonl, val.jsonl, test.jsonl and cmudict.json go\n"
    "  --source        the dictionary: npm cmu-pronouncing-dictionary's index.js, its object as JSON, or\n"
    "                  cmudict text (default /usr/local/share/kiln/cmudict/index.js, from tools/setup.sh)\n"
    "  --seed          split seed (default 0)\n"
    "  --val-fraction  share of words for val, --test-fraction for test (default 0.05 each)\n"
    "inspect: the first windows of an SFT config's data, token by token (text, id, segment, position,\n"
    "         whether it carries loss); reads only the config's data and sft sections\n"
    "  --split         which split's windows (default train)\n"
    "  --windows       how many windows (rows) to print (default 2)\n";

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


int run_cmudict(int argc, char** argv, std::FILE* out, std::FILE* err) {
  const ParsedArgs a =
      parse_args(argc, argv, 1, {"--out", "--source", "--seed", "--val-fraction", "--test-fraction"}, {}, {});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--out")) return usage_error(err, "cmudict needs --out");
  CmudictSplitOptions o;
  if (a.has("--seed")) {
    long long v = 0;
    if (!parse_integer(a.one("--seed"), 0, 9223372036854775807LL, &v))
      return usage_error(err, integer_range_error("--seed", a.one("--seed"), 0, 9223372036854775807LL));
    o.seed = static_cast<uint64_t>(v);
  }
  for (const char* name : {"--val-fraction", "--test-fraction"}) {
    if (!a.has(name)) continue;
    double v = 0;
    if (!parse_number(a.one(name), 0.0, 0.999999, &v) || !(v < 1.0))
      return usage_error(err, std::string(name) + ": expected a number in [0, 1), got '" + a.one(name) + "'");
    (std::strcmp(name, "--val-fraction") == 0 ? o.val_fraction : o.test_fraction) = v;
  }
  const std::string source = a.has("--source") ? a.one("--source") : std::string(kCmudictPath);
  const auto t0 = std::chrono::steady_clock::now();
  const CmudictSplitStats st = build_cmudict_splits(source, a.one("--out"), o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(out, "read %lld entries from %s (%lld skipped, %lld repeated pronunciations)\n",
               static_cast<long long>(st.read.entries), source.c_str(), static_cast<long long>(st.read.skipped),
               static_cast<long long>(st.read.duplicates));
  for (const std::string& e : st.read.first_skipped) std::fprintf(out, "  skipped: %s\n", e.c_str());
  const char* names[3] = {"train", "val", "test"};
  for (int i = 0; i < 3; ++i)
    std::fprintf(out, "  %-5s %7lld words %7lld entries  %s\n", names[i], static_cast<long long>(st.words[i]),
                 static_cast<long long>(st.entries[i]), st.files[static_cast<size_t>(i)].c_str());
  std::fprintf(out, "wrote the splits (seed %llu) in %.2f s\n", static_cast<unsigned long long>(o.seed), s);
  return 0;
}

// A token's bytes, quoted, with newlines, tabs and non-ASCII bytes escaped.
std::string show_token(const std::string& bytes) {
  std::string o = "'";
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c == '\r') o += "\\r";
    else if (c == '\'' || c == '\\') (o += '\\') += static_cast<char>(c);
    else if (c < 0x20 || c >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      o += buf;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "'";
}

int run_inspect(int argc, char** argv, std::FILE* out, std::FILE* err) {
  if (argc < 2 || std::strncmp(argv[1], "--", 2) == 0) return usage_error(err, "inspect needs a CONFIG");
  const std::string config = argv[1];
  std::vector<std::string> overrides;
  Split split = Split::train;
  long long windows = 2;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0) {
      if (eq != std::string::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return usage_error(err, arg + " needs a value");
      }
      if (name == "--split") {
        if (value == "train") split = Split::train;
        else if (value == "val") split = Split::val;
        else if (value == "test") split = Split::test;
        else return usage_error(err, "--split: expected train, val or test, got '" + value + "'");
      } else if (name == "--windows") {
        if (!parse_integer(value, 1, 1000000, &windows))
          return usage_error(err, integer_range_error("--windows", value, 1, 1000000));
      } else {
        return usage_error(err, "unknown option " + name);
      }
    } else if (eq != std::string::npos) {
      overrides.push_back(arg);
    } else {
      return usage_error(err, "unexpected argument " + arg);
    }
  }
  const TrainConfig cfg = load_config(config, overrides);
  KILN_INPUT_CHECK(cfg.data.type == DatasetType::sft,
                   config << ": data.type is not sft; kiln data inspect shows SFT windows");
  ensure_sft_data(cfg);
  const std::string path = sft_split_path(cfg, split);
  KILN_INPUT_CHECK(!path.empty(), config << ": no " << split_name(split) << " split (data."
                                         << (split == Split::val ? "val_path" : "test_path") << " is not set)");
  const std::string tok_dir = sft_tokenizer_dir(cfg);
  const Tokenizer tok = Tokenizer::load(tok_dir);
  const SftDataOptions dopt = sft_data_options(cfg);
  const SftDataset data = SftDataset::from_file(path, tok, dopt);
  for (const std::string& e : data.stats().parse.first_errors) std::fprintf(out, "skipped: %s\n", e.c_str());
  std::fprintf(out, "%s: %s\n", path.c_str(), data.stats().summary(dopt.max_len).c_str());
  std::fprintf(out, "tokenizer %s (%d tokens, EOS %d); template %s\n", tok_dir.c_str(), tok.vocab_size(), data.eos(),
               show_token(dopt.tmpl.prompt).c_str());
  // One rank's view is the whole view here: rows in the order rank 0, 1, ...
  // would take them, a step at a time.
  const int64_t B = cfg.train.batch_size;
  SftLoader loader(data, sft_loader_options(cfg, data, split, B, 0, 1));
  const int64_t T = cfg.sft.max_len;
  std::fprintf(out, "windows of %lld positions, %s%s: %lld rows (%.1f %% of positions hold tokens), batch %lld: %lld "
               "steps per epoch\n",
               static_cast<long long>(T), cfg.data.pack ? "packed first-fit" : "one example per row",
               loader.options().shuffle ? ", seeded order" : ", file order",
               static_cast<long long>(loader.rows_per_epoch()),
               100.0 * static_cast<double>(data.stats().positions) /
                   static_cast<double>(std::max<int64_t>(1, loader.rows_per_epoch() * T)),
               static_cast<long long>(B), static_cast<long long>(loader.steps_per_epoch(true)));
  std::fprintf(out, "(each position: its token and, when the prediction there carries loss, the target it is "
                    "trained to predict: the next token of its example)\n");
  SftBatch b;
  int64_t shown = 0;
  for (int64_t step = 0; step < loader.steps_per_epoch(true) && shown < windows; ++step) {
    loader.read_step(step, &b);
    for (int64_t r = 0; r < B && shown < windows; ++r, ++shown) {
      const auto& exs = b.row_examples[static_cast<size_t>(r)];
      int64_t used = 0, targets = 0;
      for (const int64_t e : exs) used += data.length(e), targets += data.targets(e);
      std::fprintf(out, "\nwindow %lld (step %lld, row %lld): %zu example%s, %lld of %lld positions hold tokens, %lld "
                   "carry loss\n",
                   static_cast<long long>(shown), static_cast<long long>(step), static_cast<long long>(r), exs.size(),
                   exs.size() == 1 ? "" : "s", static_cast<long long>(used), static_cast<long long>(T),
                   static_cast<long long>(targets));
      std::fprintf(out, "  %5s %4s %5s %7s  %-24s %-24s %s\n", "t", "seg", "pos", "id", "token", "target", "loss");
      int64_t t = 0;
      for (size_t k = 0; k <= exs.size() && t < T; ++k) {
        if (k < exs.size()) {
          const SftRecord& rec = data.record(exs[k]);
          std::fprintf(out, "  -- segment %zu: line %lld of %s (%lld positions, %lld carry loss)\n", k,
                       static_cast<long long>(rec.line), path.c_str(), static_cast<long long>(data.length(exs[k])),
                       static_cast<long long>(data.targets(exs[k])));
        } else {
          std::fprintf(out, "  -- segment %zu: padding (%lld positions, no loss)\n", k,
                       static_cast<long long>(T - t));
        }
        const int64_t end = k < exs.size() ? t + data.length(exs[k]) : T;
        for (int64_t shown_pad = 0; t < end; ++t) {
          const size_t i = static_cast<size_t>(r * T + t);
          if (k == exs.size() && ++shown_pad > 2) {  // padding is all alike: two lines of it
            std::fprintf(out, "  ... %lld more positions of padding\n", static_cast<long long>(end - t));
            t = end;
            break;
          }
          const bool loss = b.targets[i] != kIgnoreIndex;
          std::fprintf(out, "  %5lld %4d %5d %7d  %-24s %-24s %s\n", static_cast<long long>(t), b.segments[i],
                       b.positions[i], b.tokens[i], show_token(tok.token_bytes(b.tokens[i])).c_str(),
                       loss ? show_token(tok.token_bytes(b.targets[i])).c_str() : "-", loss ? "yes" : "no");
        }
      }
    }
  }
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
    if (sub == "cmudict") return run_cmudict(argc, argv, out, err);
    if (sub == "inspect") return run_inspect(argc, argv, out, err);
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
  return usage_error(err, "unknown subcommand '" + sub + "'");
}

int cmd_data(int argc, char** argv) { return cmd_data(argc, argv, stdout, stderr); }

}  // namespace kiln
