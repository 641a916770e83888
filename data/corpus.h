// Text corpora for language-model training, and turning them into token
// shards.
//
// The default corpus is the Debian `fortunes` package: text files in
// /usr/share/games/fortunes/ (about 2.6 MB of English), one fortune after
// another separated by lines holding only "%". Each fortune is a document.
// Any other text file is accepted too (see read_documents for how it is cut
// into documents).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

/// Where Debian's `fortunes` package puts its text files.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

/// The fortunes in one fortune-format text: the pieces between lines that are
/// exactly "%" (a trailing "\r" allowed), each with its own line endings kept.
/// Pieces that are empty or only whitespace are dropped.
std::vector<std::string> split_fortunes(std::string_view text);

/// The fortune files of a directory: regular files (symbolic links and other
/// non-regular entries are skipped), except *.dat (strfile's index) and *.u8
/// (Debian's links to the same texts), sorted by name. InputError if `dir` is
/// missing or has none.
std::vector<std::string> list_fortune_files(const std::string& dir = kFortunesDir);

/// The documents of `path`:
///  - a directory: every fortune of every fortune file in it (list_fortune_files);
///  - a file with at least one "%" line: its fortunes (split_fortunes);
///  - any other file: cut at each "<|endoftext|>"; without one, the whole
///    file is one document.
/// Empty documents are dropped. InputError if `path` cannot be read.
std::vector<std::string> read_documents(const std::string& path);
/// read_documents over several paths, in order.
std::vector<std::string> read_documents(const std::vector<std::string>& paths);

/// The documents joined into one text, `separator` between them.
std::string join_documents(const std::vector<std::string>& docs, std::string_view separator = "<|endoftext|>");

struct PrepareStats {
  int64_t documents = 0;
  int64_t train_documents = 0, val_documents = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> train_shards, val_shards;
};

/// Tokenizes the documents of `text_paths` with the tokenizer in
/// `tokenizer_dir` and writes llm.c shards to `out_dir`: train_NNNNNN.bin and
/// val_NNNNNN.bin (at most `shard_tokens` tokens each), and prepare.json
/// describing them. As in llm.c, every document is preceded by
/// <|endoftext|> (which the tokenizer must have); a document's own text is
/// encoded as plain text (special-token text in it is not special).
///
/// A document goes to val when a hash of its text falls below val_fraction
/// (deterministic, independent of file order, and duplicates of a text all
/// land on the same side); with val_fraction > 0 at least one document goes to
/// val and at least one to train. A single document is instead cut at the line
/// boundary nearest the (1 - val_fraction) point of its bytes. Stale shards
/// from an earlier run in `out_dir` are removed. InputError on bad input
/// (unreadable files, no text, val_fraction outside [0, 1)).
PrepareStats prepare_token_data(const std::vector<std::string>& text_paths, const std::string& tokenizer_dir,
                                const std::string& out_dir, double val_fraction,
                                int64_t shard_tokens = 100'000'000);

}  // namespace kiln
