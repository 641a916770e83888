// `kiln sample`: text from a trained GPT checkpoint.
//
//   kiln sample DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
//                   [--seed S] [--min-tokens M] [--device cpu|cuda|auto] [--no-cache]
//
// DIR is a checkpoint directory (RUN/checkpoints/step_N) or a run directory
// (its newest valid checkpoint); the model comes from the config.yaml saved
// in the run directory and the tokenizer from its data.tokenizer. The prompt
// starts a new document: <|endoftext|> goes before it (when the vocabulary
// has one), and sampling stops at the next <|endoftext|> (not drawn before
// M tokens, default 1) or after N tokens.
// The prompt and the continuation go to stdout; timing to stderr.
#pragma once

#include <cstdio>

namespace kiln {

/// argv[0] is DIR. Returns 0 on success; 2 for a usage error or bad input
/// (message printed); other failures propagate as exceptions.
int cmd_sample(int argc, char** argv);
/// The same with explicit streams (tests).
int cmd_sample(int argc, char** argv, std::FILE* out, std::FILE* err);

}  // namespace kiln
