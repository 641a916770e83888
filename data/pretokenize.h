// GPT-2's pre-tokenizer: the regular expression that cuts text into the
// pieces BPE works on, before any merge. Shared by encoding and by BPE
// training so that a trained vocabulary sees exactly the pieces it will be
// asked to encode.
//
// The pattern is GPT-2's (openai/gpt-2 src/encoder.py):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// compiled with PCRE2 in UTF + UCP mode. One change keeps us exact: GPT-2 runs
// it with Python's `regex` module, whose \s is Unicode White_Space; PCRE2's
// UCP \s leaves out U+0085 (NEXT LINE), so every \s / \S is written with
// \x{85} added. (The npm port gpt-3-encoder uses JavaScript's \s, which
// differs from GPT-2 on U+0085 and U+FEFF; GPT-2 is the reference.)
//
// Invalid UTF-8 never matches anything (PCRE2_MATCH_INVALID_UTF makes each
// invalid sequence a barrier no match crosses, like the end of the text), and
// each maximal run of bytes no match covers becomes a piece of its own, so
// every byte of the input lands in exactly one piece, in order.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class PreTokenizer {
 public:
  /// Compiles the pattern (JIT when PCRE2 has it). Throws Error if PCRE2
  /// rejects it (never with GPT-2's pattern).
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  /// Calls fn(piece) for each piece of `text`, in order; the pieces
  /// concatenate to `text`. Thread-safe (each call uses its own match data).
  template <typename Fn>
  void split(std::string_view text, Fn&& fn) const {
    Cursor c(*this, text);
    std::string_view piece;
    while (c.next(&piece)) fn(piece);
  }

  /// The pieces as a vector (tests and small inputs).
  std::vector<std::string> split_to_vector(std::string_view text) const;

  /// The pattern as compiled.
  static const char* pattern();

 private:
  struct Impl;
  // Walks the matches of one text; the unmatched gaps (invalid UTF-8) are
  // returned as pieces of their own.
  class Cursor {
   public:
    Cursor(const PreTokenizer& p, std::string_view text);
    ~Cursor();
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;
    bool next(std::string_view* piece);

   private:
    const PreTokenizer& p_;
    std::string_view text_;
    void* match_data_ = nullptr;  // pcre2_match_data_8*
    size_t pos_ = 0;              // first byte not yet returned
    size_t match_start_ = 0;      // pending match [match_start_, match_end_)
    size_t match_end_ = 0;
    bool have_match_ = false;
    bool done_ = false;
  };
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
