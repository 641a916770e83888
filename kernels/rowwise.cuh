// Device-side building blocks shared by the row-wise kernels (LayerNorm,
// softmax, cross-entropy): 16-byte chunk loads/stores with a scalar tail,
// warp/block all-reductions, and the host-side choice between one warp per row
// (short rows) and one block per row (long rows).
//
// Row layout used by every kernel here. A row of C elements is cut into
// nchunks = ceil(C / N) chunks of N = 16 / sizeof(T) elements (4 fp32, 8 bf16).
// A "group" of threads owns a row: one warp (short rows, several rows per
// block) or the whole block (long rows). Thread `rank` of a group owns chunks
//   j = rank + (tile * KMAX + k) * group_size,   k = 0 .. KMAX-1, tile = 0 ..
// so each thread touches the same columns in every pass over the row, which
// makes its private data (register cache, per-column accumulators) need no
// synchronization. When a row fits in one tile (every thread holds at most
// KMAX chunks) it is read from memory once and kept in registers between
// passes (as floats: the conversion is done once); longer rows are streamed
// again on each pass (the "tile loop"), the re-reads mostly hitting L2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/launch.cuh"

namespace kiln::rowwise {

/// Elements per 16-byte chunk.
template <typename T> constexpr int chunk_elems() { return static_cast<int>(16 / sizeof(T)); }

/// One 16-byte chunk of a row in its storage type.
template <typename T>
struct alignas(16) Chunk {
  T e[16 / sizeof(T)];
};

/// Loads columns [c0, c0 + N) of `row`. Columns at or past `limit` are not
/// read (left as zero). `vec`: the row start is 16-byte aligned, so a whole
/// chunk is one 16-byte load; the chunk straddling `limit` takes the scalar
/// path.
template <typename T>
__device__ __forceinline__ Chunk<T> load_chunk(const T* row, int c0, int limit, bool vec) {
  constexpr int N = chunk_elems<T>();
  Chunk<T> ch;
  if (vec && c0 + N <= limit) {
    *reinterpret_cast<int4*>(&ch) = *reinterpret_cast<const int4*>(row + c0);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) ch.e[k] = (c0 + k < limit) ? row[c0 + k] : from_float<T>(0.0f);
  }
  return ch;
}

/// Stores the columns of `ch` below `limit` at row[c0 ...].
template <typename T>
__device__ __forceinline__ void store_chunk(T* row, int c0, int limit, bool vec, const Chunk<T>& ch) {
  constexpr int N = chunk_elems<T>();
  if (vec && c0 + N <= limit) {
    *reinterpret_cast<int4*>(row + c0) = *reinterpret_cast<const int4*>(&ch);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (c0 + k < limit) row[c0 + k] = ch.e[k];
  }
}

/// Chunk j's columns as floats: v[e] = row[c0 + e] for c0 + e < limit, else
/// `fill` (0 for sums, -inf for maxima).
template <typename T>
__device__ __forceinline__ void load_floats(float (&v)[16 / sizeof(T)], const T* row, int c0, int limit, bool vec,
                                            float fill = 0.0f) {
  const Chunk<T> ch = load_chunk(row, c0, limit, vec);
#pragma unroll
  for (int k = 0; k < chunk_elems<T>(); ++k) v[k] = (c0 + k < limit) ? to_float(ch.e[k]) : fill;
}

/// Rounds v to T and stores the columns below `limit`.
template <typename T>
__device__ __forceinline__ void store_floats(T* row, int c0, int limit, bool vec, const float (&v)[16 / sizeof(T)]) {
  Chunk<T> ch;
#pragma unroll
  for (int k = 0; k < chunk_elems<T>(); ++k) ch.e[k] = from_float<T>(v[k]);
  store_chunk(row, c0, limit, vec, ch);
}

/// Floats of a row each thread keeps in registers between passes (32: 8
/// fp32 chunks or 4 bf16 chunks). Chunks per thread = kCacheFloats / N.
constexpr int kCacheFloats = 32;
template <typename T> constexpr int cache_chunks() { return kCacheFloats / chunk_elems<T>(); }

// --- reductions ----------------------------------------------------------
// Butterfly (xor) reductions leave the same bits in every lane: float + and
// max are commutative, and every lane combines the same pairs.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32), the same value in every
/// thread. Every thread of the block must call it. Each warp re-reduces the
/// per-warp partials itself, in the same order, so no third barrier is needed.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  __syncthreads();  // readers of the previous call are done with `partial`
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  return warp_sum(lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  v = warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  return warp_max(lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : -INFINITY);
}

/// The threads that own one row: a warp (WARP = true) or the whole block.
template <bool WARP>
struct Group {
  __device__ __forceinline__ static int rank() { return WARP ? static_cast<int>(threadIdx.x & 31) : static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ static int size() { return WARP ? 32 : static_cast<int>(blockDim.x); }
  /// Index of this group among the block's groups.
  __device__ __forceinline__ static int index() { return WARP ? static_cast<int>(threadIdx.x >> 5) : 0; }
  __device__ __forceinline__ static int per_block() { return WARP ? static_cast<int>(blockDim.x >> 5) : 1; }
  // `if constexpr`, not `?:`: a warp group must not even reference
  // block_sum/block_max, whose static `partial[32]` would otherwise count as
  // the kernel's shared memory wherever the compiler keeps dead code (a -G
  // build), pushing a launch that plans 48 KB of dynamic shared memory over
  // the limit (layernorm backward at C = 768).
  __device__ __forceinline__ static float sum(float v) {
    if constexpr (WARP) return warp_sum(v); else return block_sum(v);
  }
  __device__ __forceinline__ static float max(float v) {
    if constexpr (WARP) return warp_max(v); else return block_max(v);
  }
};

// --- host-side launch planning --------------------------------------------

/// How a row-wise kernel is launched for rows of `nchunks` chunks.
struct RowPlan {
  bool warp = true;   ///< one warp per row (else one block per row)
  int block = 128;    ///< threads per block
  int64_t grid = 0;   ///< blocks
  int tiles = 1;      ///< passes of KMAX chunks per thread; 1 = the row stays in registers
};

/// Warp per row while a row fits in 32·kmax chunks (fp32 rows up to
/// 128·kmax elements); beyond, a block per row sized so each thread holds at
/// most kmax chunks, up to max_block threads; beyond that the row is streamed
/// in tiles. `warp_block`: threads per block in warp mode (rows per block × 32).
inline RowPlan plan_rows(int64_t rows, int64_t nchunks, int kmax, int warp_block = 128, int max_block = 1024) {
  RowPlan p;
  if (nchunks <= 32LL * kmax) {
    p.warp = true;
    p.block = warp_block;
    p.grid = ceil_div(rows, warp_block / 32);
    p.tiles = 1;
  } else {
    p.warp = false;
    const int64_t threads = ceil_div(ceil_div(nchunks, kmax), 32) * 32;
    p.block = static_cast<int>(threads < max_block ? threads : max_block);
    p.grid = rows;
    p.tiles = static_cast<int>(ceil_div(ceil_div(nchunks, p.block), kmax));
  }
  KILN_CHECK(p.grid <= INT_MAX, "row-wise kernel: " << rows << " rows exceed the grid limit");
  return p;
}

/// True when every row of `stride` elements starting at p is 16-byte aligned.
template <typename T>
inline bool rows_aligned(const T* p, int64_t stride) {
  return is_aligned(p, 16) && (stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

}  // namespace kiln::rowwise
