// Attention masks: which keys each query of a fused self-attention may see.
//
// A mask is described, never materialized: causal or bidirectional, plus
// optional per-token segment ids for packed sequences (several examples
// concatenated in one row of T tokens, each attending only to itself). One
// predicate, attention_visible(), is the rule; the CUDA kernels (forward, both
// backward passes, bf16 and fp32), their host emulation and the CPU reference
// all call it, so the backends cannot disagree about the mask.
//
// Segment ids: int32, (B, T), row b at segment_ids + b·T. They must be
// non-decreasing along each row: a packed example is a contiguous run of
// tokens and later examples get larger ids (ids need not start at 0 or be
// consecutive; padding at the end of a row should get an id of its own,
// larger than the last example's). With that, the keys any run of queries
// can see form one contiguous range that a binary search finds, so the CUDA
// kernels loop over exactly the key (or query) tiles that hold a visible
// pair and skip the rest without loading them. Non-decreasing ids are a
// precondition: check_attention_segments() checks it on the host and the CPU
// references call it; the CUDA launchers read the ids on the device and do
// not (a decreasing id there makes the kernels skip tiles they should not).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KILN_MASK_HD __host__ __device__ __forceinline__
#else
#define KILN_MASK_HD inline
#endif

namespace kiln {

/// Which keys each query may attend to (see the file comment).
struct AttentionMask {
  /// Key j is visible to query i only if j <= i (decoder self-attention).
  bool causal = true;
  /// nullptr: every row is one sequence. Otherwise (B, T) int32 ids,
  /// non-decreasing along each row; query i sees key j only if their ids are
  /// equal. A host pointer for the CPU references, a device pointer for the
  /// CUDA launchers.
  const int32_t* segment_ids = nullptr;
};

/// Causal (GPT) mask, optionally restricted to segments.
inline AttentionMask causal_mask(const int32_t* segment_ids = nullptr) { return AttentionMask{true, segment_ids}; }
/// Bidirectional (ViT, encoder) mask, optionally restricted to segments.
inline AttentionMask bidirectional_mask(const int32_t* segment_ids = nullptr) {
  return AttentionMask{false, segment_ids};
}

/// The mask rule: key k is visible to query q iff both lie in the same
/// segment and, when causal, k is not after q. (Without segment ids both ids
/// are 0.) A query always sees itself, so no row is ever fully masked.
KILN_MASK_HD bool attention_visible(int q, int k, int32_t seg_q, int32_t seg_k, bool causal) {
  return seg_q == seg_k && (!causal || k <= q);
}

// --- ranges and tiles (the kernels' tile skipping; exact for non-decreasing ids) ---

/// First p in [lo, hi) with seg[p] >= x (hi if none); seg non-decreasing on [lo, hi).
KILN_MASK_HD int segment_lower_bound(const int32_t* seg, int lo, int hi, int32_t x) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (seg[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}
/// First p in [lo, hi) with seg[p] > x (hi if none); seg non-decreasing on [lo, hi).
KILN_MASK_HD int segment_upper_bound(const int32_t* seg, int lo, int hi, int32_t x) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (seg[mid] <= x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/// Half-open index range [begin, end).
struct IndexRange {
  int begin, end;
};

/// The keys visible to at least one of the queries q_first..q_last (0 <=
/// q_first <= q_last < T) of one batch row whose ids are `seg_row` (T of
/// them, or nullptr). Exact for non-decreasing ids: every key in the range
/// is visible to one of those queries, no key outside it is. Costs two
/// binary searches (O(log T) loads).
KILN_MASK_HD IndexRange attention_keys_for_queries(const int32_t* seg_row, int T, bool causal, int q_first,
                                                   int q_last) {
  if (seg_row == nullptr) return IndexRange{0, causal ? q_last + 1 : T};
  // Keys before q_first are visible only if they share q_first's segment;
  // keys after q_last only (bidirectional) if they share q_last's.
  const int begin = segment_lower_bound(seg_row, 0, q_first, seg_row[q_first]);
  const int end = causal ? q_last + 1 : segment_upper_bound(seg_row, q_last + 1, T, seg_row[q_last]);
  return IndexRange{begin, end};
}

/// The queries that see at least one of the keys k_first..k_last (the
/// transpose of attention_keys_for_queries, for the dK/dV pass). Exact for
/// non-decreasing ids.
KILN_MASK_HD IndexRange attention_queries_for_keys(const int32_t* seg_row, int T, bool causal, int k_first,
                                                   int k_last) {
  if (seg_row == nullptr) return IndexRange{causal ? k_first : 0, T};
  const int begin = causal ? k_first : segment_lower_bound(seg_row, 0, k_first, seg_row[k_first]);
  const int end = segment_upper_bound(seg_row, k_last + 1, T, seg_row[k_last]);
  return IndexRange{begin, end};
}

/// True if every (query, key) pair of a block of queries q_first.. × keys
/// ..k_last is visible, given the ids of the block's first and last query
/// and key (all four equal means one segment, for non-decreasing ids): the
/// kernels then skip the per-element mask.
KILN_MASK_HD bool attention_block_all_visible(int q_first, int k_last, int32_t sq_first, int32_t sq_last,
                                              int32_t sk_first, int32_t sk_last, bool causal) {
  return sq_first == sq_last && sk_first == sk_last && sq_first == sk_first && (!causal || k_last <= q_first);
}

/// Checks host segment ids (B, T) against the precondition above; throws
/// kiln::InputError naming `who`, the row and the position of the first
/// decrease. nullptr passes.
void check_attention_segments(const int32_t* segment_ids, int B, int T, const char* who);

}  // namespace kiln
