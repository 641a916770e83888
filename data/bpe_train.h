// Training a byte-level BPE vocabulary on a corpus, for models too small for
// GPT-2's 50257 tokens. The result encodes with the same rules as GPT-2 (same
// pre-tokenizer, same merge-by-rank loop) and saves in GPT-2's two files.
//
// Algorithm: cut the text at "<|endoftext|>" (documents never merge across
// it), pre-tokenize each part with GPT-2's regex, count each distinct piece.
// Every piece starts as its bytes; then repeatedly merge the most frequent
// adjacent pair (counted over pieces × their frequency). Pair counts are kept
// up to date incrementally: a merge only touches the pieces that contain the
// pair (an index from pair to pieces), and the best pair comes from a lazy
// max-heap, so a merge costs what it changes, not the corpus size.
//
// Ties are broken deterministically, independent of hash order: the higher
// count wins, then the pair whose (left bytes, right bytes) is smaller as
// unsigned bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace kiln {

struct BpeTrainStats {
  int64_t pieces = 0;         // pre-tokenized pieces in the corpus
  int64_t unique_pieces = 0;  // distinct ones (what the merges run over)
  int64_t merges = 0;         // merges learned
  bool ran_out = false;       // the corpus had no pair left before vocab_size
};

/// Learns merges on `text` until the vocabulary (256 bytes + distinct merge
/// results + `specials`) has `vocab_size` entries, or no adjacent pair is left
/// (then it is smaller; stats->ran_out says so). vocab_size must be at least
/// 256 + specials.size() (InputError otherwise).
Tokenizer train_bpe(std::string_view text, int vocab_size, const std::vector<std::string>& specials = {kEndOfText},
                    BpeTrainStats* stats = nullptr);

/// The merges alone (rank order), as train_bpe learns them.
std::vector<BpeMerge> learn_bpe_merges(std::string_view text, int vocab_size,
                                       const std::vector<std::string>& specials = {kEndOfText},
                                       BpeTrainStats* stats = nullptr);

}  // namespace kiln
