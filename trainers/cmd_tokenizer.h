// `kiln tokenizer`: train a byte-level BPE, encode text to ids, decode ids.
//
//   kiln tokenizer train [--text FILE|DIR ...] --vocab N --out DIR
//   kiln tokenizer encode --tokenizer DIR [--no-special]   (text on stdin, ids on stdout)
//   kiln tokenizer decode --tokenizer DIR                  (ids on stdin, bytes on stdout)
//
// --text defaults to the fortunes corpus (/usr/share/games/fortunes); a
// directory is read as fortune files, a file per data/corpus.h. Documents are
// joined with <|endoftext|>, which training never merges across.
#pragma once

#include <cstdio>

namespace kiln {

/// argv[0] is the word after "tokenizer" (train, encode, decode). Returns 0 on
/// success; 2 for a usage error (usage printed) or bad input ("kiln: error:
/// ..." printed); other failures propagate as exceptions.
int cmd_tokenizer(int argc, char** argv);
/// The same with explicit streams (tests).
int cmd_tokenizer(int argc, char** argv, std::FILE* in, std::FILE* out, std::FILE* err);

}  // namespace kiln
