// Batches of SFT examples in fixed (B, T) windows: packed first-fit, or one
// example per row; seeded, rank-aware and resumable.
//
// Rows. With packing, every epoch takes the examples in a seeded order
// (seeded_permutation(n, seed, 2·epoch) from data/sampler.h; natural order
// without shuffle) and puts each into the first row, in the order rows were
// opened, that still has room for it, opening a new row when none has
// (first-fit, O(n log n) with a max-tree over rows). The rows are then put in
// a seeded order of their own (seeded_permutation(rows, seed, 2·epoch + 1)),
// so the sparse rows first-fit leaves at the end do not all land in an
// epoch's last steps. Unpacked, each example is a row of its own, in the
// seeded order. Row contents and counts differ from epoch to epoch; both are
// a pure function of (dataset, T, seed, epoch).
//
// A row of T positions. Example k of the row (k = 0, 1, ...) occupies the next
// length(k) positions: tokens are its ids but the last, targets the next id
// where that carries loss (kIgnoreIndex elsewhere), segment id k, and
// positions 0, 1, ..., length - 1 (restarting in each example). The positions
// after the last example are padding: token pad_id, target kIgnoreIndex,
// positions restarting at 0, and a segment of their own (id = the row's
// example count), so segment ids are non-decreasing and each segment is one
// contiguous run, as the segment-masked attention expects; with masks that
// keep segments apart, padding is never seen by an example and an example
// never sees another. A row with no example is all padding, segment 0.
//
// Ranks and steps. A step is one global batch of B·world consecutive rows of
// the epoch's order; rank r takes rows [r·B, (r+1)·B) of it (so a step's
// rows do not depend on how ranks and micro-batches split it). Training
// epochs are floor(rows / (B·world)) steps; the rows left over are skipped (a
// different few each epoch when shuffled). read_step() serves evaluation:
// any step up to the ragged last one, rows beyond the end are padding.
//
// Resuming. position() is (epoch, step) and a fingerprint of the setup (the
// dataset's fingerprint, B, T, world, seed, pack, shuffle); set_position() on
// a loader built the same way continues with exactly the batches the
// original would have produced.
#pragma once

#include <cstdint>
#include <vector>

#include "data/sft_dataset.h"
#include "data/token_loader.h"  // LoaderPosition

namespace kiln {

/// Rows as lists of example indices: row r holds examples[row_offsets[r] ..
/// row_offsets[r + 1]), in window order.
struct SftPacking {
  std::vector<int64_t> row_offsets{0};
  std::vector<int64_t> examples;
  int64_t rows() const { return static_cast<int64_t>(row_offsets.size()) - 1; }
};

/// First-fit of `lengths[order[i]]`, i = 0, 1, ..., into rows of `capacity`
/// positions. Every length must be in [1, capacity] (Error otherwise).
SftPacking pack_first_fit(const std::vector<int64_t>& lengths, const std::vector<int64_t>& order, int64_t capacity);
/// One example per row, in `order`.
SftPacking pack_one_per_row(const std::vector<int64_t>& order);

struct SftLoaderOptions {
  int64_t batch = 1;     ///< B: rows per rank per step
  int64_t seq_len = 0;   ///< T: positions per row; every example's length must be <= T
  bool pack = true;      ///< first-fit packing; false: one example per row
  bool shuffle = true;   ///< seeded orders; false: file order, rows in the order packed
  uint64_t seed = 0;
  int rank = 0;
  int world = 1;
  int32_t pad_id = 0;    ///< token id of padding positions (any valid id: they carry no loss)
};

/// One rank's rows of one step; every array is (rows, T) row-major.
struct SftBatch {
  int64_t rows = 0, seq_len = 0;
  std::vector<int32_t> tokens, targets, segments, positions;
  std::vector<std::vector<int64_t>> row_examples;  ///< dataset indices in each row, in window order
  int64_t loss_tokens = 0;         ///< targets that carry loss in these rows
  int64_t global_loss_tokens = 0;  ///< the same over every rank's rows of this step
  int64_t examples = 0, global_examples = 0;
  int64_t real_tokens = 0;         ///< positions holding an example (not padding), these rows
  int64_t global_real_tokens = 0;
};

class SftLoader {
 public:
  /// Keeps a reference to `data` (it must outlive the loader). InputError on
  /// options out of range, no examples, or an example longer than T.
  SftLoader(const SftDataset& data, const SftLoaderOptions& opt);

  /// InputError when the current epoch has fewer rows than one global batch
  /// (training needs one; evaluation and inspection do not).
  void check_trainable() const;
  /// This rank's rows of the next training step; advances, starting the next
  /// epoch after the last full step of one. check_trainable() first.
  void next(SftBatch* out);
  /// Rows of step `step` of the current epoch, for this rank, without moving;
  /// rows past the epoch's end are padding. step < steps_per_epoch(true).
  void read_step(int64_t step, SftBatch* out) const;

  /// Rows of the current epoch, and its steps (ragged: counting a last
  /// partial global batch).
  int64_t rows_per_epoch() const { return plan_.rows(); }
  int64_t steps_per_epoch(bool ragged = false) const;
  uint64_t epoch() const { return epoch_; }
  int64_t step() const { return step_; }
  const SftLoaderOptions& options() const { return opt_; }
  const SftPacking& packing() const { return plan_; }

  LoaderPosition position() const;
  /// InputError if `p` is from a loader set up differently (fingerprint) or
  /// its step is past the end of its epoch.
  void set_position(const LoaderPosition& p);

 private:
  void start_epoch(uint64_t e);
  void fill_row(int64_t row, int32_t* tok, int32_t* tgt, int32_t* seg, int32_t* pos,
                std::vector<int64_t>* exs) const;

  const SftDataset& data_;
  SftLoaderOptions opt_;
  uint64_t fingerprint_ = 0;
  uint64_t epoch_ = 0;
  int64_t step_ = 0;
  SftPacking plan_;
  std::vector<int64_t> row_targets_;  // loss tokens per row of plan_
  std::vector<int64_t> row_real_;     // positions used per row of plan_
};

}  // namespace kiln
