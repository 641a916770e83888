// Supervised fine-tuning data: JSONL records, the prompt template, the
// tokenized examples with their loss masks.
//
// Records. One JSON object per line, in one of two forms:
//
//   {"prompt": "word: knight\npron:", "completion": " N AY1 T"}
//   {"messages": [{"role": "system", "content": "..."},
//                 {"role": "user", "content": "..."},
//                 {"role": "assistant", "content": "..."}, ...]}
//
// Either form may carry "answers": a non-empty array of strings, the
// completions that count as right when the model's output is compared by
// exact match (default: the completion, or the last assistant turn). Other
// fields are ignored. Lines that are empty or only whitespace are skipped; a
// UTF-8 byte-order mark at the start of the file is skipped. Anything else
// that is wrong with a line — bytes that are not UTF-8, text that is not
// JSON, not an object, both forms or neither, a field of the wrong type, an
// unknown role, no assistant turn — is an InputError naming the file and
// line ("data/x.jsonl:17: ..."), or with skip_bad_lines is counted, the
// first few messages kept for the log, and the line left out.
//
// Template. A prompt/completion record becomes
//
//   prefix | prompt | suffix | completion | EOS
//
// where prefix and suffix are the text before and after "{prompt}" in
// SftTemplate::prompt ("{prompt}" alone: the record's prompt as it is). A
// messages record becomes its turns in order, ChatML-like:
//
//   system:     "<|im_start|>system\n"    content "<|im_end|>\n"
//   user:       "<|im_start|>user\n"      content "<|im_end|>\n"
//   assistant:  "<|im_start|>assistant\n" content EOS
//
// EOS is the tokenizer's <|endoftext|> id, the token generation stops at.
// The markers are ordinary text to a GPT-2 style vocabulary (several tokens
// each); every piece is encoded on its own with special-token text treated as
// text, so a record cannot smuggle in an EOS, and a prompt encodes the same
// here as when a model is asked to continue it (SftEncoder::encode_prompt).
//
// Loss. A token carries loss (is a target) when it belongs to a completion
// or an assistant turn's content, or is the EOS that ends one; template and
// prompt tokens, system and user turns never do. In a window an example of n
// tokens uses n - 1 positions: input ids[0..n-1), target at position t =
// ids[t+1] when ids[t+1] carries loss, else kIgnoreIndex (the ignore index of
// kernels/cross_entropy.h, -100). Its last token is only ever a target.
//
// Length. An example fits when n - 1 <= max_len. One that does not is
// truncated (SftOverflow::truncate) by cutting tokens from the left of its
// prompt side — the record's prompt text for prompt/completion records (the
// template stays whole), everything before the last assistant turn for
// messages records — or, when even that is not enough or the mode is drop,
// dropped. Both are counted in SftDataStats.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace kiln {

enum class SftRole { system, user, assistant };
const char* sft_role_name(SftRole r);

struct SftMessage {
  SftRole role = SftRole::user;
  std::string content;
};

/// One JSONL line.
struct SftRecord {
  int64_t line = 0;  ///< 1-based line number in its file
  std::string prompt, completion;     ///< prompt/completion form
  std::vector<SftMessage> messages;   ///< messages form (then prompt and completion are empty)
  std::vector<std::string> answers;   ///< references for exact match; never empty after parsing
  bool is_chat() const { return !messages.empty(); }
};

struct SftParseStats {
  int64_t lines = 0;        ///< lines in the file (the last one counted even without a newline)
  int64_t blank_lines = 0;  ///< empty or whitespace-only, skipped
  int64_t bad_lines = 0;    ///< skipped with skip_bad_lines
  int64_t records = 0;      ///< parsed
  std::vector<std::string> first_errors;  ///< the first few bad-line messages ("file:line: why")
};

/// Byte offset of the first byte of `s` that is not part of well-formed UTF-8
/// (overlong forms, surrogates and code points above U+10FFFF are not), or
/// std::string_view::npos when all of it is.
size_t find_invalid_utf8(std::string_view s);

/// Parses JSONL text (see the header comment); `source` names it in errors.
/// `stats` may be null.
std::vector<SftRecord> parse_sft_jsonl(std::string_view text, const std::string& source, bool skip_bad_lines,
                                       SftParseStats* stats);
/// The same from a file (InputError if it cannot be read).
std::vector<SftRecord> read_sft_jsonl(const std::string& path, bool skip_bad_lines, SftParseStats* stats);

/// The text around prompts and turns (see the header comment).
struct SftTemplate {
  std::string prompt = "{prompt}";  ///< prompt/completion records; the first "{prompt}" is the record's prompt
  std::string system_header = "<|im_start|>system\n";
  std::string user_header = "<|im_start|>user\n";
  std::string assistant_header = "<|im_start|>assistant\n";
  std::string turn_end = "<|im_end|>\n";  ///< after system and user turns (assistant turns end with EOS)
};

/// One tokenized example, before any truncation.
struct SftTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;  ///< 1 where ids[i] carries loss
  int64_t prompt_len = 0;     ///< ids before the last completion's content (where generation starts)
  int64_t cut_begin = 0, cut_end = 0;  ///< the span truncation may cut, from its left
};

class SftEncoder {
 public:
  /// InputError when the template has no "{prompt}" or the tokenizer has no
  /// <|endoftext|>. Keeps a reference to `tok`.
  SftEncoder(const Tokenizer& tok, SftTemplate tmpl);

  SftTokens encode(const SftRecord& r) const;
  /// ids[0..prompt_len) of encode(r): what a model continues to answer `r`.
  std::vector<int32_t> encode_prompt(const SftRecord& r) const;
  int32_t eos() const { return eos_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const SftTemplate& tmpl() const { return tmpl_; }

 private:
  void add(std::string_view text, bool loss, SftTokens* t) const;

  const Tokenizer& tok_;
  SftTemplate tmpl_;
  std::string prefix_, suffix_;  // tmpl_.prompt around "{prompt}"
  int32_t eos_;
};

enum class SftOverflow { truncate, drop };

enum class SftFit { fits, truncated, dropped };
/// Applies the length rule to `t` in place (see the header comment).
SftFit fit_sft_example(SftTokens* t, int64_t max_len, SftOverflow overflow);

struct SftDataOptions {
  SftTemplate tmpl;
  int64_t max_len = 1024;  ///< positions an example may use (its tokens - 1)
  SftOverflow overflow = SftOverflow::truncate;
  bool skip_bad_lines = false;
};

struct SftDataStats {
  SftParseStats parse;
  int64_t examples = 0;     ///< kept
  int64_t truncated = 0;    ///< kept after cutting their prompt side
  int64_t dropped = 0;      ///< too long
  int64_t positions = 0;    ///< Σ window positions of the kept examples
  int64_t loss_tokens = 0;  ///< Σ targets that carry loss
  int64_t longest = 0;      ///< positions of the longest kept example
  /// "1200 examples (3 truncated, 1 dropped as longer than 128; 2 bad lines
  /// skipped), 15300 tokens, 7100 carry loss, longest 41".
  std::string summary(int64_t max_len) const;
};

/// Tokenized examples of one split, in file order.
class SftDataset {
 public:
  /// Reads, parses and tokenizes `path`.
  static SftDataset from_file(const std::string& path, const Tokenizer& tok, const SftDataOptions& o);
  /// Tokenizes parsed records; `source` names them in messages.
  static SftDataset from_records(std::vector<SftRecord> records, const std::string& source, const Tokenizer& tok,
                                 const SftDataOptions& o, const SftParseStats& parse = {});

  int64_t size() const { return static_cast<int64_t>(records_.size()); }
  /// Window positions example i uses (its tokens - 1), in [1, max_len].
  int64_t length(int64_t i) const { return offsets_[i + 1] - offsets_[i] - 1; }
  /// Positions of example i whose target carries loss.
  int64_t targets(int64_t i) const { return targets_[i]; }
  /// The length(i) + 1 ids of example i and their loss flags.
  const int32_t* ids(int64_t i) const { return ids_.data() + offsets_[i]; }
  const uint8_t* loss(int64_t i) const { return loss_.data() + offsets_[i]; }
  /// ids before the last completion (after any truncation).
  int64_t prompt_len(int64_t i) const { return prompt_len_[i]; }
  const SftRecord& record(int64_t i) const { return records_[i]; }
  const std::vector<int64_t>& lengths() const { return lengths_; }
  const SftDataStats& stats() const { return stats_; }
  const std::string& source() const { return source_; }
  int32_t eos() const { return eos_; }
  int64_t max_len() const { return max_len_; }
  /// Hash of every example's ids and loss flags (guards resumed positions).
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  std::string source_;
  std::vector<SftRecord> records_;  // kept ones only, parallel to the examples
  std::vector<int64_t> offsets_{0};
  std::vector<int32_t> ids_;
  std::vector<uint8_t> loss_;
  std::vector<int64_t> lengths_, targets_, prompt_len_;
  SftDataStats stats_;
  int32_t eos_ = -1;
  int64_t max_len_ = 0;
  uint64_t fingerprint_ = 0;
};

}  // namespace kiln
