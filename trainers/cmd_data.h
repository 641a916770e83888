// `kiln data`: prepare token shards, build the CMU dictionary SFT splits,
// inspect an SFT config's windows.
//
//   kiln data prepare [--text FILE|DIR ...] --tokenizer DIR --out DIR
//                     [--val-fraction F] [--shard-tokens N]
//   kiln data cmudict --out DIR [--source FILE] [--seed N]
//                     [--val-fraction F] [--test-fraction F]
//   kiln data inspect CONFIG [--split train|val|test] [--windows N] [key=value ...]
//
// prepare: --text defaults to the fortunes corpus; --val-fraction to 0.1;
// shards hold at most --shard-tokens tokens (default 100M, as llm.c). See
// prepare_token_data in data/corpus.h.
// cmudict: build_cmudict_splits in data/cmudict.h (source default
// kCmudictPath, installed by tools/setup.sh).
// inspect: the config's SFT data (data and sft sections only; building the
// cmudict splits first when data.cmudict asks for it), then the first
// windows token by token: position, segment id, position id, token id, loss
// yes/no, the token's text and the target it predicts.
#pragma once

#include <cstdio>

namespace kiln {

/// argv[0] is the word after "data" (prepare, cmudict, inspect). Returns 0 on success; 2 for a
/// usage error (usage printed) or bad input ("kiln: error: ..." printed).
int cmd_data(int argc, char** argv);
/// The same with explicit streams (tests).
int cmd_data(int argc, char** argv, std::FILE* out, std::FILE* err);

}  // namespace kiln
