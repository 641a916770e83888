// `kiln data prepare`: tokenize text into llm.c token shards.
//
//   kiln data prepare [--text FILE|DIR ...] --tokenizer DIR --out DIR
//                     [--val-fraction F] [--shard-tokens N]
//
// --text defaults to the fortunes corpus; --val-fraction to 0.1; shards hold
// at most --shard-tokens tokens (default 100M, as llm.c). See
// prepare_token_data in data/corpus.h.
#pragma once

#include <cstdio>

namespace kiln {

/// argv[0] is the word after "data" (prepare). Returns 0 on success; 2 for a
/// usage error (usage printed) or bad input ("kiln: error: ..." printed).
int cmd_data(int argc, char** argv);
/// The same with explicit streams (tests).
int cmd_data(int argc, char** argv, std::FILE* out, std::FILE* err);

}  // namespace kiln
