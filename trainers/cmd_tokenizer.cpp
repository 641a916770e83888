#include "trainers/cmd_tokenizer.h"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/bpe_train.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "runtime/error.h"
#include "trainers/cmd_args.h"

namespace kiln {

namespace {

const char* kUsage =
    "usage: kiln tokenizer train [--text FILE|DIR ...] --vocab N --out DIR\n"
    "       kiln tokenizer encode --tokenizer DIR [--no-special]   < text   > ids\n"
    "       kiln tokenizer decode --tokenizer DIR                  < ids    > text\n"
    "  --text     corpus files (fortune files or plain text) or fortune directories;\n"
    "             default: the fortunes corpus in /usr/share/games/fortunes\n"
    "  --vocab    vocabulary size, 257..65536 (256 bytes + merges + <|endoftext|>)\n"
    "  --no-special  encode \"<|endoftext|>\" in the text as plain text, not as its id\n";

int usage_error(std::FILE* err, const std::string& why) {
  if (!why.empty()) std::fprintf(err, "kiln tokenizer: %s\n", why.c_str());
  std::fputs(kUsage, err);
  return 2;
}

std::string read_all(std::FILE* in) {
  std::string s;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), in)) > 0) s.append(buf, n);
  KILN_INPUT_CHECK(!std::ferror(in), "stdin: read error");
  return s;
}

// Whole-string integer parse; false on anything else.
bool parse_int(const std::string& s, long long* v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  *v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run_train(int argc, char** argv, std::FILE* out, std::FILE* err) {
  const ParsedArgs a = parse_args(argc, argv, 1, {"--vocab", "--out"}, {"--text"}, {});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--vocab") || !a.has("--out")) return usage_error(err, "train needs --vocab and --out");
  long long vocab = 0;
  if (!parse_int(a.one("--vocab"), &vocab) || vocab < 257 || vocab > 65536)
    return usage_error(err, "--vocab: expected an integer in 257..65536 (token shards store uint16), got '" +
                                a.one("--vocab") + "'");
  const std::vector<std::string> paths =
      a.has("--text") ? a.values.at("--text") : std::vector<std::string>{kFortunesDir};

  const auto t0 = std::chrono::steady_clock::now();
  const std::string text = join_documents(read_documents(paths));
  KILN_INPUT_CHECK(!text.empty(), "no text in " << paths.front() << (paths.size() > 1 ? " and the others" : ""));
  BpeTrainStats st;
  const Tokenizer tok = train_bpe(text, static_cast<int>(vocab), {kEndOfText}, &st);
  tok.save(a.one("--out"));
  std::fprintf(out, "trained a %d-token BPE on %zu bytes (%lld pieces, %lld distinct) in %.2f s: %s/encoder.json, %s/vocab.bpe\n",
               tok.vocab_size(), text.size(), static_cast<long long>(st.pieces),
               static_cast<long long>(st.unique_pieces), seconds_since(t0), a.one("--out").c_str(),
               a.one("--out").c_str());
  if (st.ran_out)
    std::fprintf(err, "kiln tokenizer: warning: the corpus ran out of pairs to merge; the vocabulary has %d tokens, not %lld\n",
                 tok.vocab_size(), vocab);
  return 0;
}

int run_encode(int argc, char** argv, std::FILE* in, std::FILE* out, std::FILE* err) {
  const ParsedArgs a = parse_args(argc, argv, 1, {"--tokenizer"}, {}, {"--no-special"});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--tokenizer")) return usage_error(err, "encode needs --tokenizer DIR");
  const Tokenizer tok = Tokenizer::load(a.one("--tokenizer"));
  const std::vector<int32_t> ids = tok.encode(read_all(in), !a.flags.count("--no-special"));
  std::string line;
  line.reserve(ids.size() * 6 + 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line.push_back(' ');
    line += std::to_string(ids[i]);
  }
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), out);
  return 0;
}

int run_decode(int argc, char** argv, std::FILE* in, std::FILE* out, std::FILE* err) {
  const ParsedArgs a = parse_args(argc, argv, 1, {"--tokenizer"}, {}, {});
  if (!a.error.empty()) return usage_error(err, a.error);
  if (!a.has("--tokenizer")) return usage_error(err, "decode needs --tokenizer DIR");
  const Tokenizer tok = Tokenizer::load(a.one("--tokenizer"));
  const std::string text = read_all(in);
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (true) {
    pos = text.find_first_not_of(" \t\r\n\v\f", pos);
    if (pos == std::string::npos) break;
    size_t end = text.find_first_of(" \t\r\n\v\f", pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    long long v = -1;
    KILN_INPUT_CHECK(parse_int(item, &v) && v >= 0 && v < tok.vocab_size(),
                     "stdin: item " << ids.size() + 1 << " is '" << item.substr(0, 40) << "', expected a token id in [0, "
                                    << tok.vocab_size() << ")");
    ids.push_back(static_cast<int32_t>(v));
    pos = end;
  }
  const std::string bytes = tok.decode(ids);
  std::fwrite(bytes.data(), 1, bytes.size(), out);
  return 0;
}

}  // namespace

int cmd_tokenizer(int argc, char** argv, std::FILE* in, std::FILE* out, std::FILE* err) {
  if (argc < 1) return usage_error(err, "");
  const std::string sub = argv[0];
  if (sub == "-h" || sub == "--help") {
    std::fputs(kUsage, out);
    return 0;
  }
  try {
    if (sub == "train") return run_train(argc, argv, out, err);
    if (sub == "encode") return run_encode(argc, argv, in, out, err);
    if (sub == "decode") return run_decode(argc, argv, in, out, err);
  } catch (const InputError& e) {
    std::fprintf(err, "kiln: error: %s\n", e.what());
    return 2;
  }
  return usage_error(err, "unknown subcommand '" + sub + "'");
}

int cmd_tokenizer(int argc, char** argv) { return cmd_tokenizer(argc, argv, stdin, stdout, stderr); }

}  // namespace kiln
