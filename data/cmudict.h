// The CMU Pronouncing Dictionary as an SFT task: spelling -> ARPAbet.
//
// Source. tools/setup.sh installs the npm package cmu-pronouncing-dictionary
// 3.0.0 (ISC licence; CMUdict 0.7b, 135,155 entries of 126,046 words) as
// /usr/local/share/kiln/cmudict/index.js: an ES module whose one export is a
// JSON object {"word": "PH ON EMES", "word(2)": "...", ...}, alternates as
// "word(N)", some pronunciations followed by a comment ("... # place,
// dutch"). read_cmudict also takes that object as a plain .json file, or
// CMUdict's own text format ("WORD(2)  PH ON EMES" lines, ";;;" comments).
//
// Entries. A pronunciation is its phones with any "#" comment removed and
// runs of blanks collapsed; every phone must be one of ARPAbet's 39 (vowels
// with a stress digit 0, 1 or 2, consonants without), else the entry is
// skipped and counted. Headwords are lower-cased; repeated pronunciations of
// one word are kept once, in variant order.
//
// Splits. Headwords are sorted (bytewise), put in seeded_permutation(H, seed,
// 0) order (data/sampler.h), and the first round(H·val_fraction) go to val,
// the next round(H·test_fraction) to test, the rest to train: every
// pronunciation of a word is in the same split, and the split depends only on
// the dictionary, the seed and the fractions. Each split is written as JSONL,
// one line per (word, pronunciation), words in sorted order:
//
//   {"prompt": "word: knight\npron:", "completion": " N AY1 T",
//    "answers": [" N AY1 T"], "word": "knight"}
//
// "answers" lists every pronunciation of the word, so any of them counts as
// an exact match; completions start with a space so that BPE vocabularies
// trained on English split them into " N", " AY", "1", " T".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

/// Where tools/setup.sh installs the dictionary.
inline constexpr const char* kCmudictPath = "/usr/local/share/kiln/cmudict/index.js";

struct CmudictWord {
  std::string word;                 ///< lower case
  std::vector<std::string> prons;   ///< "N AY1 T", variant order, no repeats
};

struct CmudictReadStats {
  int64_t entries = 0;          ///< entries read (word or word(N) keys / lines)
  int64_t skipped = 0;          ///< entries with a phone outside ARPAbet, or no phones
  int64_t duplicates = 0;       ///< pronunciations repeated within a word
  std::vector<std::string> first_skipped;  ///< the first few skipped entries, for the log
};

/// True when `phone` is an ARPAbet phone as CMUdict writes it (AY1, N, ...).
bool is_arpabet_phone(const std::string& phone);

/// The dictionary's words, sorted. InputError naming the file when it cannot
/// be read or parsed, or holds no entry.
std::vector<CmudictWord> read_cmudict(const std::string& path, CmudictReadStats* stats = nullptr);

/// The prompt for a word: "word: knight\npron:".
std::string cmudict_prompt(const std::string& word);

struct CmudictSplitOptions {
  double val_fraction = 0.05;
  double test_fraction = 0.05;
  uint64_t seed = 0;
};

struct CmudictSplitStats {
  CmudictReadStats read;
  int64_t words[3] = {0, 0, 0};    ///< train, val, test
  int64_t entries[3] = {0, 0, 0};  ///< lines written to each
  std::vector<std::string> files;  ///< train.jsonl, val.jsonl, test.jsonl in out_dir
};

/// Reads `source` and writes out_dir/{train,val,test}.jsonl (atomically, each)
/// and then out_dir/cmudict.json, which records the source, options and
/// counts. InputError on bad input or fractions outside [0, 1) that leave no
/// training word.
CmudictSplitStats build_cmudict_splits(const std::string& source, const std::string& out_dir,
                                       const CmudictSplitOptions& o);

/// True when out_dir holds the three splits and the cmudict.json that
/// build_cmudict_splits writes last (so a build can be skipped); with `o`,
/// only when it was written for those options.
bool cmudict_splits_ready(const std::string& out_dir, const CmudictSplitOptions* o = nullptr);

}  // namespace kiln
