// Device helpers shared by the attention forward and backward kernels:
// tensor-core fragments (mma.sync m16n8k16 bf16 → fp32, ldmatrix), tile loads
// into padded shared memory, warp reductions and argument checks.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16" for .bf16), with lane = 0..31,
// g = lane / 4 (row group) and t = lane % 4 (thread in group):
//   A (16×16, row-major), 4 × b32, each two bf16 (lower column in the low half):
//     a0: (g,   2t..2t+1)   a1: (g+8, 2t..2t+1)
//     a2: (g,   2t+8..+9)   a3: (g+8, 2t+8..+9)
//   B (16×8, "col": element (k, n)), 2 × b32:
//     b0: (k = 2t..2t+1, n = g)   b1: (k = 2t+8..+9, n = g)
//   C/D (16×8 fp32), 4 floats: c0, c1: (g, 2t..2t+1)   c2, c3: (g+8, 2t..2t+1)
// So a C fragment pair covering columns 16c..16c+15 of a score tile is, after
// rounding to bf16, exactly the A fragment of those columns as the k range of
// the next product (P·V): no shared-memory round trip.
//
// ldmatrix.x4: lanes 8m..8m+7 give the row addresses of 8×8 matrix m; each
// lane receives, in register m, the two elements (row g, cols 2t..2t+1) of
// matrix m, or with .trans the two elements (rows 2t..2t+1, col g).
#pragma once

// KILN_ATTENTION_EMULATION: tests/kernels/cuda_host_emulation.h runs these
// kernels' source on the host (no GPU); it supplies the CUDA types, the launch
// helpers and the warp-collective instructions (ldmatrix, mma, shuffles) itself.
#if !defined(KILN_ATTENTION_EMULATION)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstring>
#include <initializer_list>

#if !defined(KILN_ATTENTION_EMULATION)
#include "kernels/launch.cuh"
#endif

// `#pragma unroll` spelled as a macro so the host emulation (where the host
// compiler would warn about an unknown pragma) can drop it.
#if !defined(KILN_ATTENTION_EMULATION)
#define KILN_ATTN_UNROLL _Pragma("unroll")
#else
#define KILN_ATTN_UNROLL
#endif

namespace kiln {
namespace attn {

using bf16_t = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarps = 4;             // warps per block in every bf16 kernel
constexpr int kThreads = 32 * kWarps;  // each warp owns 16 rows of the block's row tile

/// Shared-memory row pitch (elements) of a D-wide bf16 tile. The +8 (16 bytes)
/// shifts consecutive rows by one 16-byte bank group, so the 8 row addresses
/// of one ldmatrix phase hit 8 distinct groups (no bank conflicts), and rows
/// stay 16-byte aligned as ldmatrix requires.
template <int D>
constexpr int pitch() {
  return D + 8;
}

#if !defined(KILN_ATTENTION_EMULATION)
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// "memory" clobbers keep the compiler from moving these shared-memory reads
// across the __syncthreads() that guard the tiles.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}

/// c += a · b for one m16n8k16 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif  // !KILN_ATTENTION_EMULATION

/// Two floats as one b32 of bf16 (lo in the low half = the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo, .y = hi
  uint32_t r;
  memcpy(&r, &v, sizeof(r));  // a register move; no type punning through pointers
  return r;
}

// Lane addresses for ldmatrix.x4 on a row-major shared tile with pitch `ld`
// (elements). Both return a pointer for this lane.
//
// a_frag_ptr(r0, c0): the 16×16 block at (r0, c0) as an A fragment (rows =
// m, cols = k): matrices (r0, c0), (r0+8, c0), (r0, c0+8), (r0+8, c0+8) land
// in a0..a3. With .trans the same addresses give B fragments of a [k][n]
// tile (rows = k, cols = n): r0/r1 = b0/b1 of n-tile c0, r2/r3 = b0/b1 of
// n-tile c0 + 8.
__device__ __forceinline__ const bf16_t* a_frag_ptr(const bf16_t* tile, int ld, int r0, int c0, int lane) {
  return tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + c0 + (lane >> 4) * 8;
}
// nk_frag_ptr(n0, k0): B fragments from an [n][k] tile (rows = n, cols = k;
// e.g. K when computing Q·Kᵀ), without .trans: r0/r1 = b0/b1 of n-tile n0,
// r2/r3 = b0/b1 of n-tile n0 + 8, for k = k0..k0+15.
__device__ __forceinline__ const bf16_t* nk_frag_ptr(const bf16_t* tile, int ld, int n0, int k0, int lane) {
  return tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8;
}

/// Copies rows [row0, row0 + ROWS) of a (T, D) bf16 matrix with row stride
/// `stride` (elements) into a (ROWS, pitch<D>) shared tile, 16 bytes per
/// thread per step; rows at or past T become zeros (they are masked later,
/// zeros keep them finite). Needs `g` 16-byte aligned and stride % 8 == 0.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(bf16_t* s, const bf16_t* g, int64_t stride, int row0, int T) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < T) val = *reinterpret_cast<const uint4*>(g + static_cast<int64_t>(row0 + r) * stride + c);
    *reinterpret_cast<uint4*>(s + r * pitch<D>() + c) = val;
  }
}

/// The scalar fp32 kernels spread a D-wide row over a warp: lane l holds
/// elements l, l + 32, ...; with D = 16 lanes 16..31 hold none.
template <int D>
constexpr int elems_per_lane() {
  return (D + 31) / 32;
}
template <int D>
__device__ __forceinline__ bool lane_has_elem(int lane, int r) {
  return D % 32 == 0 || lane + 32 * r < D;
}

/// Segment id of token t of a row's ids `seg_row` (nullptr: every token 0).
__device__ __forceinline__ int32_t seg_at(const int32_t* seg_row, int t) { return seg_row ? seg_row[t] : 0; }

/// Copies the ids of rows [row0, row0 + ROWS) into shared memory (0 past T
/// or without ids; rows past T are masked by their index anyway).
template <int ROWS>
__device__ __forceinline__ void load_segments(int32_t* s, const int32_t* seg_row, int row0, int T) {
  for (int r = threadIdx.x; r < ROWS; r += kThreads) s[r] = (seg_row && row0 + r < T) ? seg_row[row0 + r] : 0;
}

/// Sum over the 32 lanes; every lane gets the same bits (xor butterflies add
/// the same pairs in the same order, and float addition is commutative).
__device__ __forceinline__ float warp_sum(float x) {
KILN_ATTN_UNROLL
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

/// Reductions over the 4 lanes of a row group (lanes 4g..4g+3 share rows g, g+8).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace attn

namespace detail {

/// Launcher-side checks shared by forward and backward.
inline void check_attention_args(const char* who, int B, int T, int H, int D, int64_t stride) {
  KILN_CHECK(D == 16 || D == 32 || D == 64 || D == 128,
             who << ": head dim " << D << " is not supported (16, 32, 64 or 128)");
  KILN_CHECK(B >= 0 && T >= 0 && H >= 0, who << ": bad shape B=" << B << " T=" << T << " H=" << H);
  KILN_CHECK(B <= 65535 && H <= 65535, who << ": B=" << B << " and H=" << H << " must be at most 65535 (grid)");
  KILN_CHECK(stride >= static_cast<int64_t>(H) * D,
             who << ": row stride " << stride << " is smaller than H·D = " << static_cast<int64_t>(H) * D);
}

/// The bf16 kernels move 16-byte vectors: pointers 16-byte aligned, stride a
/// multiple of 8 elements.
inline void check_bf16_alignment(const char* who, int64_t stride, std::initializer_list<const void*> ptrs) {
  KILN_CHECK(stride % 8 == 0, who << ": bf16 row stride " << stride << " must be a multiple of 8");
  for (const void* p : ptrs)
    KILN_CHECK(is_aligned(p, 16), who << ": bf16 pointer " << p << " is not 16-byte aligned");
}

/// Allows `kernel` more than 48 KB of dynamic shared memory when it needs it.
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace detail
}  // namespace kiln
