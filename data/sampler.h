// Seeded, rank-aware, resumable batch sampling.
//
// Every epoch has one global order of the dataset: a Fisher-Yates shuffle
// driven by Philox (runtime/philox.h) with our own unbiased bounded draw, so
// the order is the same on every platform, compiler and standard library
// (std::shuffle and std::uniform_int_distribution are implementation-defined).
//
// A global batch is `batch_size × world` consecutive entries of that order;
// rank r takes entries [r·batch_size, (r+1)·batch_size) of it. So the samples
// a step sees do not depend on how many processes share it, the ranks'
// shards are disjoint, and together they cover the epoch (all of it, or all
// but the last partial global batch with drop_last). Without drop_last the
// last global batch is split as evenly as possible, in rank order (a rank
// may get fewer samples, or none).
//
// The position is (epoch, samples of the epoch's order consumed); saving it
// and restoring it into a fresh sampler continues with exactly the batches an
// uninterrupted run would have seen.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

/// Platform-independent stream of random 64-bit words: Philox4x32-10 keyed by
/// a mix of `seed` (so it does not repeat the raw-seed streams of weight
/// init or dropout), counter = stream · 2^40 + i.
class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream);
  uint64_t next_u64();
  /// Uniform integer in [0, n) with no modulo bias (rejection), n >= 1.
  uint64_t below(uint64_t n);

 private:
  uint64_t key_;
  uint64_t counter_;
  uint32_t words_[4] = {0, 0, 0, 0};
  int used_ = 4;  // words of words_ already handed out
};

/// A Fisher-Yates permutation of [0, n) for (seed, stream); identical on
/// every platform.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream);

/// Where a sampler is: `position` samples of epoch `epoch`'s global order
/// have been handed out (over all ranks).
struct SamplerState {
  uint64_t epoch = 0;
  int64_t position = 0;
  bool operator==(const SamplerState& o) const { return epoch == o.epoch && position == o.position; }
};

struct SamplerOptions {
  int64_t size = 0;        ///< samples in the dataset
  int64_t batch_size = 1;  ///< per-rank micro-batch
  int rank = 0;
  int world = 1;
  bool shuffle = true;     ///< false: the natural order 0, 1, 2, ... every epoch
  bool drop_last = true;   ///< skip the last global batch when it is not full
  uint64_t seed = 0;
  std::string what = "dataset";  ///< names the data in error messages
};

/// One step's share of a global batch.
struct Batch {
  std::vector<int64_t> indices;  ///< this rank's samples (empty possible in a ragged last batch)
  int64_t global_size = 0;       ///< samples in this step over all ranks
  uint64_t epoch = 0;
  int64_t step = 0;  ///< index of this global batch within the epoch
};

class DistributedSampler {
 public:
  /// InputError when drop_last leaves no batch at all (dataset smaller than
  /// one global batch); kiln::Error on inconsistent options.
  explicit DistributedSampler(SamplerOptions opt);

  /// The next batch of the current epoch into `out`; false (state unchanged)
  /// when the epoch is exhausted: call set_epoch(epoch() + 1) to go on.
  bool next(Batch* out);
  /// Starts epoch `e` from its beginning.
  void set_epoch(uint64_t e);

  SamplerState state() const { return {epoch_, position_}; }
  /// Continues from a saved state (InputError if it cannot belong to this
  /// dataset: position beyond its size).
  void restore(const SamplerState& s);

  uint64_t epoch() const { return epoch_; }
  int64_t global_batch() const { return opt_.batch_size * opt_.world; }
  /// Global batches per epoch (the last one ragged when !drop_last).
  int64_t batches_per_epoch() const;
  /// The epoch's global order (all ranks).
  const std::vector<int64_t>& order() const { return order_; }
  const SamplerOptions& options() const { return opt_; }

 private:
  void build_order();

  SamplerOptions opt_;
  uint64_t epoch_ = 0;
  int64_t position_ = 0;
  std::vector<int64_t> order_;  // for epoch_
};

}  // namespace kiln
