// Batches of next-token windows from token shards, for language-model
// training: each row is T+1 consecutive tokens, x = the first T, y = the last
// T (y[t] is the token after x[t]).
//
// Windows. Shard s (n_s tokens) is cut into windows starting at
// phase + k·T, k = 0, 1, ...; windows never cross shards (a shard is usually
// a set of whole documents). Sequential order: phase 0, windows in shard and
// position order, floor((n_s - 1) / T) per shard. Random order: every epoch
// draws a new phase in [0, T) (so window edges move between epochs) and a new
// permutation of all windows (Fisher-Yates on Philox draws keyed by the seed
// and epoch, so it is the same on every platform and compiler); the count per
// shard is floor((n_s - T) / T), the same for every phase.
//
// Ranks. Each step consumes one global batch of B·world windows from the
// epoch's order; rank r takes the r-th block of B. The ranks of one step
// therefore never share a window, and world ranks with batch B read exactly
// what one rank with batch B·world reads. An epoch is floor(W / (B·world))
// steps (the W mod B·world windows left over are skipped; in random order a
// different few each epoch).
//
// Resuming. position() is (epoch, step) plus a fingerprint of what defines the
// order (shard sizes, B, T, world, seed, order); set_position() on a loader
// built the same way continues with exactly the batches the original would
// have produced next, and rejects a position from a different setup.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/token_shard.h"

namespace kiln {

struct TokenLoaderOptions {
  int64_t batch = 1;    // B: rows per rank per step
  int64_t seq_len = 0;  // T: tokens per row of x (a window is T + 1)
  bool shuffle = true;  // random windows; false: sequential
  uint64_t seed = 0;
  int rank = 0;
  int world = 1;
  /// When > 0, every shard's tokens are checked against ids 0..vocab_size-1
  /// as it is opened (TokenShard::check_ids), so a shard from another
  /// tokenizer is refused up front, by name, rather than at the step that
  /// first reads a bad id.
  int64_t vocab_size = 0;
};

/// Where a loader is; save it with a checkpoint, give it back to resume.
struct LoaderPosition {
  uint64_t epoch = 0;
  uint64_t step = 0;         // steps taken within the epoch
  uint64_t fingerprint = 0;  // of the setup (not the rank): guards against resuming a different one
};

class TokenLoader {
 public:
  /// Opens (maps) the shards. InputError if a shard is bad (or holds an id
  /// outside opt.vocab_size), if B, T, rank or world are out of range, or if
  /// the shards hold fewer windows than one global batch (B·world).
  TokenLoader(const std::vector<std::string>& shard_paths, const TokenLoaderOptions& opt);

  /// Fills x and y, each (B, T) row-major, and advances one step (rolling
  /// over to the next epoch at the end of one).
  void next(int32_t* x, int32_t* y);

  LoaderPosition position() const;
  /// InputError if `p` is from a loader set up differently (fingerprint) or
  /// its step is past the end of an epoch.
  void set_position(const LoaderPosition& p);

  int64_t batch() const { return opt_.batch; }
  int64_t seq_len() const { return opt_.seq_len; }
  /// Windows per epoch (over all shards) and steps per epoch.
  int64_t windows_per_epoch() const { return total_windows_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  /// Tokens in all shards.
  int64_t num_tokens() const { return num_tokens_; }
  uint64_t epoch() const { return epoch_; }

 private:
  void start_epoch(uint64_t epoch);
  // Shard and first token of window w of the current epoch's order.
  void locate(int64_t w, size_t* shard, int64_t* start) const;

  TokenLoaderOptions opt_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> windows_before_;  // prefix sums of windows per shard (size shards + 1)
  int64_t total_windows_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t num_tokens_ = 0;
  uint64_t fingerprint_ = 0;

  uint64_t epoch_ = 0;
  uint64_t step_ = 0;
  int64_t phase_ = 0;
  std::vector<uint32_t> order_;  // random order: the epoch's permutation of windows
};

}  // namespace kiln
