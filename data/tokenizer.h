// Byte-level BPE, exactly as GPT-2 encodes (openai/gpt-2 src/encoder.py):
//
//   1. Pre-tokenize with GPT-2's regex (data/pretokenize.h).
//   2. Each piece's UTF-8 bytes start as one symbol per byte.
//   3. Repeatedly merge the adjacent pair whose merge has the lowest rank
//      (its line number in vocab.bpe), every occurrence left to right, until
//      no adjacent pair has a rank.
//   4. Each final symbol's id comes from encoder.json.
//
// On disk a tokenizer is GPT-2's two files in one directory:
//   encoder.json  {"token": id, ...}; a token is its bytes written through
//                 GPT-2's byte-to-unicode map (printable bytes stand for
//                 themselves, the other 68 map to U+0100..U+0143, so a space
//                 is "Ġ"), special tokens such as "<|endoftext|>" literally.
//   vocab.bpe     "#version: 0.2", then one merge per line, "Ġ t", rank order.
//
// Special tokens are the encoder.json entries of the form "<|...|>" that no
// byte or merge produces (GPT-2 has one, "<|endoftext|>" = 50256). encode()
// with allow_special turns their literal text into their ids; without it the
// text is encoded as ordinary bytes. decode(encode(x)) == x for every byte
// string, invalid UTF-8 included: a run of bytes that is not UTF-8 becomes a
// piece of its own and is encoded through the byte tokens and merges like any
// other piece (GPT-2's Python takes only str, so this is where kiln extends
// it; on valid UTF-8 the ids are GPT-2's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

/// GPT-2's end-of-text marker.
inline constexpr const char* kEndOfText = "<|endoftext|>";

/// One merge, as the two byte strings it joins (rank = position in a list).
using BpeMerge = std::pair<std::string, std::string>;

/// GPT-2's byte-to-unicode map: the code point that stands for byte b in
/// encoder.json and vocab.bpe.
uint32_t gpt2_byte_to_codepoint(uint8_t b);
/// The id GPT-2 gives the single-byte token for b (its position in the map's
/// order: '!'..'~', '¡'..'¬', '®'..'ÿ', then the other bytes ascending).
int gpt2_byte_rank(uint8_t b);

class Tokenizer;
namespace detail {
/// Applies the merges to one pre-tokenized piece, appending its ids. Exposed
/// so tests can run both strategies (`long_word`: the O(n log n) heap used
/// for long pieces; otherwise GPT-2's O(n²) loop) and compare them.
void bpe_piece(const Tokenizer& tok, std::string_view piece, bool long_word, std::vector<int32_t>* out);
}  // namespace detail

class Tokenizer {
 public:
  /// Loads `dir`/encoder.json and `dir`/vocab.bpe. Throws InputError naming
  /// the file (and line, for vocab.bpe) when either is missing or malformed:
  /// not a JSON object of string → id, ids not exactly 0..N-1, a byte token
  /// missing, a merge whose parts or result are not in encoder.json.
  static Tokenizer load(const std::string& dir);
  static Tokenizer load_files(const std::string& encoder_json, const std::string& vocab_bpe);

  /// Builds a tokenizer from merges in rank order: ids 0..255 are the bytes
  /// (GPT-2's order), then each merge result not seen before gets the next
  /// id, then the special tokens (each must look like "<|...|>").
  static Tokenizer from_merges(const std::vector<BpeMerge>& merges,
                               const std::vector<std::string>& specials = {kEndOfText});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  /// Writes `dir`/encoder.json and `dir`/vocab.bpe (each atomically), creating
  /// `dir` if needed. load(dir) gives back a tokenizer that encodes the same.
  void save(const std::string& dir) const;

  /// Token ids of `text`. With allow_special, the literal text of a special
  /// token becomes its id; otherwise it is ordinary text.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
  /// Appends the ids of `text` to *out (no allocation of a new vector).
  void encode_append(std::string_view text, std::vector<int32_t>* out, bool allow_special = true) const;

  /// The bytes the ids stand for. An id outside [0, vocab_size()) is an
  /// InputError naming it and its position.
  std::string decode(const int32_t* ids, size_t n) const;
  std::string decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

  /// Number of ids (GPT-2: 50257).
  int32_t vocab_size() const;
  /// The bytes of one token (a special token's literal text).
  const std::string& token_bytes(int32_t id) const;
  /// Id of a special token, or -1.
  int32_t special_id(std::string_view text) const;
  /// Id of "<|endoftext|>", or -1 if this vocabulary has none.
  int32_t eot_id() const { return special_id(kEndOfText); }
  /// The merges in rank order, as byte strings.
  const std::vector<BpeMerge>& merges() const;
  /// Special tokens' texts, in id order.
  std::vector<std::string> specials() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  void encode_ordinary(std::string_view text, std::vector<int32_t>* out) const;
  std::unique_ptr<Impl> impl_;
  friend void detail::bpe_piece(const Tokenizer&, std::string_view, bool, std::vector<int32_t>*);
};

}  // namespace kiln
