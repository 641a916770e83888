// Fused attention backward on the GPU (contract: kernels/attention.h; CPU
// reference: kernels/attention_cpu.cpp; forward: attention.cu).
//
// With s = scale · q·k, P = softmax(s) (recomputed as exp(s - LSE)), and
// delta_i = Σ_d dO_id O_id (= Σ_j P_ij dP_ij):
//   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − delta),  dQ = scale·dS K,  dK = scale·dSᵀ Q.
//
// Three kernels, no atomics, so the result is bit-reproducible:
//   1. delta: one warp per row, delta = rowsum(dO ⊙ O) in fp32 → workspace (B, H, T).
//   2. dK/dV: one block per (64-key tile, head, batch), 4 warps × 16 keys; it
//      walks the query tiles that see one of its keys (those at or after the
//      key tile when causal, within the key tile's segments when packed:
//      attention_queries_for_keys) and works in the transposed frame, keys as rows, so every
//      operand is either a register fragment or a plain/transposed ldmatrix:
//        Sᵀ = K Qᵀ,  Pᵀ = 2^(Sᵀ·scale·log2e − LSE·log2e),  dPᵀ = V dOᵀ,
//        dSᵀ = Pᵀ ⊙ (dPᵀ − delta),  dV += Pᵀ dO,  dK += dSᵀ Q.
//   3. dQ: one block per (64-query tile, head, batch), 4 warps × 16 queries;
//      it walks the key tiles its queries see (attention_keys_for_queries, as
//      the forward does):
//        S = Q Kᵀ,  P,  dP = dO Vᵀ,  dS,  dQ += dS K.
// Kernel 3 recomputes S and dP, which kernel 2 also computes: 7 matmuls
// instead of FlashAttention-2's 5, the price of a deterministic dQ without
// float atomics. Napkin math at D = 128: per block-tile pair kernel 2 does
// 4 and kernel 3 3 tensor-core products of 64×64×128; both are compute bound.
// The next steps are the same as the forward's: cp.async/TMA pipelining, wgmma.
//
// Every pass masks with attention_visible() element by element, except in
// tiles that are visible as a whole (one segment, below the diagonal, inside
// T); tiles with no visible pair are never loaded.
//
// fp32: the same three passes as one-warp-per-row scalar kernels.
#include "kernels/attention.h"
#include "kernels/attention_common.cuh"

namespace kiln {
namespace attn {
namespace {

constexpr int kKeyTile = 64;    // keys per dK/dV block (16 per warp)
constexpr int kQueryTile = 64;  // queries per dQ block (16 per warp)

// Tiles walked by the inner loops. At D = 128 the register budget (dK and dV
// accumulators, 128 floats per thread) leaves room for 32-wide inner tiles
// only; smaller heads take 64.
template <int D>
constexpr int bwd_inner_queries() {  // query tile walked by the dK/dV kernel
  return D >= 128 ? 32 : 64;
}
template <int D>
constexpr int bwd_inner_keys() {  // key tile walked by the dQ kernel
  return 64;
}

template <int D>
constexpr size_t dkdv_smem_bytes() {
  constexpr int BQ = bwd_inner_queries<D>();
  return static_cast<size_t>(2 * kKeyTile + 2 * BQ) * pitch<D>() * sizeof(bf16_t) + 2 * BQ * sizeof(float) +
         BQ * sizeof(int32_t);
}
template <int D>
constexpr size_t dq_smem_bytes() {
  constexpr int BK = bwd_inner_keys<D>();
  return static_cast<size_t>(2 * kQueryTile + 2 * BK) * pitch<D>() * sizeof(bf16_t) + BK * sizeof(int32_t);
}

// delta[b, h, i] = Σ_d dO[b, i, h, d] · O[b, i, h, d] in fp32. One warp per
// (b, i, h) row, rows in memory order; launch_1d over B·T·H·32 threads.
template <typename Tin>
__global__ void delta_kernel(float* __restrict__ delta, const Tin* __restrict__ dout, const Tin* __restrict__ out,
                             int B, int T, int H, int D) {
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(B) * T * H) return;
  const int h = static_cast<int>(w % H);
  const int i = static_cast<int>((w / H) % T);
  const int b = static_cast<int>(w / (static_cast<int64_t>(H) * T));
  const Tin* dor = dout + w * D;  // (B, T, H, D) contiguous: row w
  const Tin* orow = out + w * D;
  float acc = 0.0f;
  for (int d = lane; d < D; d += 32) acc += to_float(dor[d]) * to_float(orow[d]);
  acc = warp_sum(acc);
  if (lane == 0) delta[(static_cast<int64_t>(b) * H + h) * T + i] = acc;
}

// grid (ceil(T / 64), H, B), block 128. See the file comment (kernel 2).
template <int D, bool CAUSAL>
__global__ void __launch_bounds__(kThreads)
    dkdv_bf16_kernel(bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, const bf16_t* __restrict__ dout,
                     const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                     const float* __restrict__ lse, const float* __restrict__ delta, const int32_t* __restrict__ seg,
                     int T, int H, int64_t stride, float scale, float scale_log2) {
  constexpr int LD = pitch<D>();
  constexpr int BQ = bwd_inner_queries<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);  // (64, LD)
  bf16_t* sV = sK + kKeyTile * LD;                   // (64, LD)
  bf16_t* sQ = sV + kKeyTile * LD;                   // (BQ, LD)
  bf16_t* sdO = sQ + BQ * LD;                        // (BQ, LD)
  float* sL = reinterpret_cast<float*>(sdO + BQ * LD);  // (BQ) LSE · log2e
  float* sDelta = sL + BQ;                              // (BQ)
  int32_t* sSeg = reinterpret_cast<int32_t*>(sDelta + BQ);  // (BQ) the query tile's segment ids

  // Causal: the first key tiles see the most queries and launch first anyway.
  const int kb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int k0 = kb * kKeyTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t C = static_cast<int64_t>(H) * D;
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;   // q/k/v (b, 0, h, 0)
  const int64_t ohead = static_cast<int64_t>(b) * T * C + static_cast<int64_t>(h) * D;      // dO (b, 0, h, 0)
  const float* lse_bh = lse + (static_cast<int64_t>(b) * H + h) * T;                         // (T)
  const float* delta_bh = delta + (static_cast<int64_t>(b) * H + h) * T;                     // (T)
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;                  // (T) or none

  load_tile<D, kKeyTile>(sK, k + head, stride, k0, T);
  load_tile<D, kKeyTile>(sV, v + head, stride, k0, T);

  const int key_a = k0 + warp * 16 + g;  // this thread's key rows (c0,c1 and c2,c3)
  const int key_b = key_a + 8;
  const int32_t seg_ka = key_a < T ? seg_at(seg_b, key_a) : 0, seg_kb = key_b < T ? seg_at(seg_b, key_b) : 0;
  // The queries that see some key of this tile, and the tile's first/last ids.
  const int k_last = min(k0 + kKeyTile, T) - 1;
  const IndexRange queries = attention_queries_for_keys(seg_b, T, CAUSAL, k0, k_last);
  const int32_t sk_first = seg_at(seg_b, k0), sk_last = seg_at(seg_b, k_last);
  float dka[D / 8][4], dva[D / 8][4];  // (16 keys, D) per warp
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) {
KILN_ATTN_UNROLL
    for (int e = 0; e < 4; ++e) dka[dt][e] = dva[dt][e] = 0.0f;
  }

  // Query tiles outside [qb_begin, qb_end) see none of these keys: skipped.
  const int qb_begin = queries.begin / BQ, qb_end = static_cast<int>(ceil_div(queries.end, BQ));
  for (int qb = qb_begin; qb < qb_end; ++qb) {
    const int i0 = qb * BQ;
    __syncthreads();  // all warps are done with the previous Q/dO tiles (and K/V are loaded)
    load_tile<D, BQ>(sQ, q + head, stride, i0, T);
    load_tile<D, BQ>(sdO, dout + ohead, C, i0, T);
    for (int r = threadIdx.x; r < BQ; r += kThreads) {
      const int i = i0 + r;
      sL[r] = i < T ? lse_bh[i] * kLog2e : 0.0f;
      sDelta[r] = i < T ? delta_bh[i] : 0.0f;
    }
    load_segments<BQ>(sSeg, seg_b, i0, T);
    __syncthreads();

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: (16 keys, BQ queries) per warp, k = d.
    float st[BQ / 8][4], dpt[BQ / 8][4];
KILN_ATTN_UNROLL
    for (int nt = 0; nt < BQ / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
    }
KILN_ATTN_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      ldsm_x4(ka, a_frag_ptr(sK, LD, warp * 16, kk * 16, lane));
      ldsm_x4(va, a_frag_ptr(sV, LD, warp * 16, kk * 16, lane));
KILN_ATTN_UNROLL
      for (int np = 0; np < BQ / 16; ++np) {
        uint32_t bq[4], bo[4];
        ldsm_x4(bq, nk_frag_ptr(sQ, LD, np * 16, kk * 16, lane));
        mma_bf16(st[2 * np], ka, bq[0], bq[1]);
        mma_bf16(st[2 * np + 1], ka, bq[2], bq[3]);
        ldsm_x4(bo, nk_frag_ptr(sdO, LD, np * 16, kk * 16, lane));
        mma_bf16(dpt[2 * np], va, bo[0], bo[1]);
        mma_bf16(dpt[2 * np + 1], va, bo[2], bo[3]);
      }
    }

    // Pᵀ and dSᵀ, masked (query past T, key past T, attention_visible)
    // unless the whole tile is visible (uniform across the block).
    const int i_last = min(i0 + BQ, T) - 1;
    const bool unmasked = i0 + BQ <= T && k0 + kKeyTile <= T &&
                          attention_block_all_visible(i0, k_last, sSeg[0], sSeg[i_last - i0], sk_first, sk_last, CAUSAL);
KILN_ATTN_UNROLL
    for (int nt = 0; nt < BQ / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t4 + (e & 1);  // query within the tile
        const int key = (e < 2) ? key_a : key_b;
        const bool ok = unmasked || (i0 + col < T && key < T &&
                                     attention_visible(i0 + col, key, sSeg[col], (e < 2) ? seg_ka : seg_kb, CAUSAL));
        const float p = ok ? exp2f(st[nt][e] * scale_log2 - sL[col]) : 0.0f;
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - sDelta[col]);
      }
    }

    // dV += Pᵀ dO and dK += dSᵀ Q: k = the BQ queries, 16 at a time; n = d.
KILN_ATTN_UNROLL
    for (int kc = 0; kc < BQ / 16; ++kc) {
      const uint32_t pa[4] = {pack_bf16(st[2 * kc][0], st[2 * kc][1]), pack_bf16(st[2 * kc][2], st[2 * kc][3]),
                              pack_bf16(st[2 * kc + 1][0], st[2 * kc + 1][1]),
                              pack_bf16(st[2 * kc + 1][2], st[2 * kc + 1][3])};
      const uint32_t da[4] = {pack_bf16(dpt[2 * kc][0], dpt[2 * kc][1]), pack_bf16(dpt[2 * kc][2], dpt[2 * kc][3]),
                              pack_bf16(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]),
                              pack_bf16(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3])};
KILN_ATTN_UNROLL
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bo[4], bq[4];
        ldsm_x4_trans(bo, a_frag_ptr(sdO, LD, kc * 16, dp * 16, lane));
        mma_bf16(dva[2 * dp], pa, bo[0], bo[1]);
        mma_bf16(dva[2 * dp + 1], pa, bo[2], bo[3]);
        ldsm_x4_trans(bq, a_frag_ptr(sQ, LD, kc * 16, dp * 16, lane));
        mma_bf16(dka[2 * dp], da, bq[0], bq[1]);
        mma_bf16(dka[2 * dp + 1], da, bq[2], bq[3]);
      }
    }
  }

  // Every key sees itself, so the loop ran at least once; either way the
  // accumulators (zeros for a key no query sees) are written.
  bf16_t* dk_a = dk + head + static_cast<int64_t>(key_a) * stride + 2 * t4;
  bf16_t* dv_a = dv + head + static_cast<int64_t>(key_a) * stride + 2 * t4;
  const int64_t next8 = 8 * stride;  // key_b = key_a + 8
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) {
    if (key_a < T) {
      *reinterpret_cast<uint32_t*>(dk_a + dt * 8) = pack_bf16(dka[dt][0] * scale, dka[dt][1] * scale);
      *reinterpret_cast<uint32_t*>(dv_a + dt * 8) = pack_bf16(dva[dt][0], dva[dt][1]);
    }
    if (key_b < T) {
      *reinterpret_cast<uint32_t*>(dk_a + next8 + dt * 8) = pack_bf16(dka[dt][2] * scale, dka[dt][3] * scale);
      *reinterpret_cast<uint32_t*>(dv_a + next8 + dt * 8) = pack_bf16(dva[dt][2], dva[dt][3]);
    }
  }
}

// grid (ceil(T / 64), H, B), block 128. See the file comment (kernel 3).
template <int D, bool CAUSAL>
__global__ void __launch_bounds__(kThreads)
    dq_bf16_kernel(bf16_t* __restrict__ dq, const bf16_t* __restrict__ dout, const bf16_t* __restrict__ q,
                   const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, const float* __restrict__ lse,
                   const float* __restrict__ delta, const int32_t* __restrict__ seg, int T, int H, int64_t stride,
                   float scale, float scale_log2) {
  constexpr int LD = pitch<D>();
  constexpr int BK = bwd_inner_keys<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);  // (64, LD)
  bf16_t* sdO = sQ + kQueryTile * LD;                // (64, LD)
  bf16_t* sK = sdO + kQueryTile * LD;                // (BK, LD)
  bf16_t* sV = sK + BK * LD;                         // (BK, LD)
  int32_t* sSeg = reinterpret_cast<int32_t*>(sV + BK * LD);  // (BK) the key tile's segment ids

  // Causal: later query tiles see more keys; schedule them first.
  const int qb = CAUSAL ? static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z;
  const int i0 = qb * kQueryTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t C = static_cast<int64_t>(H) * D;
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;
  const int64_t ohead = static_cast<int64_t>(b) * T * C + static_cast<int64_t>(h) * D;
  const float* lse_bh = lse + (static_cast<int64_t>(b) * H + h) * T;
  const float* delta_bh = delta + (static_cast<int64_t>(b) * H + h) * T;
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;  // (T) or none

  load_tile<D, kQueryTile>(sQ, q + head, stride, i0, T);
  load_tile<D, kQueryTile>(sdO, dout + ohead, C, i0, T);

  const int row_a = i0 + warp * 16 + g;  // this thread's query rows
  const int row_b = row_a + 8;
  const int32_t seg_a = row_a < T ? seg_at(seg_b, row_a) : 0, seg_rb = row_b < T ? seg_at(seg_b, row_b) : 0;
  // The keys some query of this tile sees, and the tile's first/last ids.
  const int q_last = min(i0 + kQueryTile, T) - 1;
  const IndexRange keys = attention_keys_for_queries(seg_b, T, CAUSAL, i0, q_last);
  const int32_t sq_first = seg_at(seg_b, i0), sq_last = seg_at(seg_b, q_last);
  const float lse_a = row_a < T ? lse_bh[row_a] * kLog2e : 0.0f;
  const float lse_b = row_b < T ? lse_bh[row_b] * kLog2e : 0.0f;
  const float delta_a = row_a < T ? delta_bh[row_a] : 0.0f;
  const float delta_b = row_b < T ? delta_bh[row_b] : 0.0f;
  float dqa[D / 8][4];  // (16 queries, D) per warp
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) dqa[dt][0] = dqa[dt][1] = dqa[dt][2] = dqa[dt][3] = 0.0f;

  // Key tiles outside [kb_begin, kb_end) hold no visible key: skipped.
  const int kb_begin = keys.begin / BK, kb_end = static_cast<int>(ceil_div(keys.end, BK));
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    const int j0 = kb * BK;
    __syncthreads();  // all warps are done with the previous K/V tiles (and Q/dO are loaded)
    load_tile<D, BK>(sK, k + head, stride, j0, T);
    load_tile<D, BK>(sV, v + head, stride, j0, T);
    load_segments<BK>(sSeg, seg_b, j0, T);
    __syncthreads();

    // S = Q Kᵀ and dP = dO Vᵀ: (16 queries, BK keys) per warp, k = d.
    float s[BK / 8][4], dp[BK / 8][4];
KILN_ATTN_UNROLL
    for (int nt = 0; nt < BK / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
    }
KILN_ATTN_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4], oa[4];
      ldsm_x4(qa, a_frag_ptr(sQ, LD, warp * 16, kk * 16, lane));
      ldsm_x4(oa, a_frag_ptr(sdO, LD, warp * 16, kk * 16, lane));
KILN_ATTN_UNROLL
      for (int np = 0; np < BK / 16; ++np) {
        uint32_t bk[4], bv[4];
        ldsm_x4(bk, nk_frag_ptr(sK, LD, np * 16, kk * 16, lane));
        mma_bf16(s[2 * np], qa, bk[0], bk[1]);
        mma_bf16(s[2 * np + 1], qa, bk[2], bk[3]);
        ldsm_x4(bv, nk_frag_ptr(sV, LD, np * 16, kk * 16, lane));
        mma_bf16(dp[2 * np], oa, bv[0], bv[1]);
        mma_bf16(dp[2 * np + 1], oa, bv[2], bv[3]);
      }
    }

    // P and dS, masked (query past T, key past T, attention_visible) unless
    // the whole tile is visible (uniform across the block).
    const int j_last = min(j0 + BK, T) - 1;
    const bool unmasked = i0 + kQueryTile <= T && j0 + BK <= T &&
                          attention_block_all_visible(i0, j_last, sq_first, sq_last, sSeg[0], sSeg[j_last - j0], CAUSAL);
KILN_ATTN_UNROLL
    for (int nt = 0; nt < BK / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t4 + (e & 1);  // key within the tile
        const int row = (e < 2) ? row_a : row_b;
        const bool ok = unmasked || (row < T && j0 + c < T &&
                                     attention_visible(row, j0 + c, (e < 2) ? seg_a : seg_rb, sSeg[c], CAUSAL));
        const float p = ok ? exp2f(s[nt][e] * scale_log2 - (e < 2 ? lse_a : lse_b)) : 0.0f;
        dp[nt][e] = p * (dp[nt][e] - (e < 2 ? delta_a : delta_b));
      }
    }

    // dQ += dS K: k = the BK keys, 16 at a time; n = d.
KILN_ATTN_UNROLL
    for (int kc = 0; kc < BK / 16; ++kc) {
      const uint32_t da[4] = {pack_bf16(dp[2 * kc][0], dp[2 * kc][1]), pack_bf16(dp[2 * kc][2], dp[2 * kc][3]),
                              pack_bf16(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                              pack_bf16(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
KILN_ATTN_UNROLL
      for (int dt2 = 0; dt2 < D / 16; ++dt2) {
        uint32_t bk[4];
        ldsm_x4_trans(bk, a_frag_ptr(sK, LD, kc * 16, dt2 * 16, lane));
        mma_bf16(dqa[2 * dt2], da, bk[0], bk[1]);
        mma_bf16(dqa[2 * dt2 + 1], da, bk[2], bk[3]);
      }
    }
  }

  bf16_t* dq_a = dq + head + static_cast<int64_t>(row_a) * stride + 2 * t4;
  const int64_t next8 = 8 * stride;
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) {
    if (row_a < T) *reinterpret_cast<uint32_t*>(dq_a + dt * 8) = pack_bf16(dqa[dt][0] * scale, dqa[dt][1] * scale);
    if (row_b < T)
      *reinterpret_cast<uint32_t*>(dq_a + next8 + dt * 8) = pack_bf16(dqa[dt][2] * scale, dqa[dt][3] * scale);
  }
}

// fp32: dQ, one warp per query row (b, h, i), keys one at a time over the
// row's visible range.
template <int D, bool CAUSAL>
__global__ void dq_f32_kernel(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
                              const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
                              const float* __restrict__ delta, const int32_t* __restrict__ seg, int B, int T, int H,
                              int64_t stride, float scale) {
  constexpr int kPer = elems_per_lane<D>();
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(B) * H * T) return;
  const int i = static_cast<int>(w % T);
  const int h = static_cast<int>((w / T) % H);
  const int b = static_cast<int>(w / (static_cast<int64_t>(T) * H));
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;
  const int64_t orow = (static_cast<int64_t>(b) * T + i) * H * D + static_cast<int64_t>(h) * D;
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;
  const int32_t seg_i = seg_at(seg_b, i);
  const float lse_i = lse[(static_cast<int64_t>(b) * H + h) * T + i];
  const float delta_i = delta[(static_cast<int64_t>(b) * H + h) * T + i];
  float qr[kPer], dor[kPer], acc[kPer];
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r) {
    const bool has = lane_has_elem<D>(lane, r);
    qr[r] = has ? q[head + static_cast<int64_t>(i) * stride + lane + 32 * r] : 0.0f;
    dor[r] = has ? dout[orow + lane + 32 * r] : 0.0f;
    acc[r] = 0.0f;
  }
  const IndexRange keys = attention_keys_for_queries(seg_b, T, CAUSAL, i, i);
  for (int j = keys.begin; j < keys.end; ++j) {
    if (!attention_visible(i, j, seg_i, seg_at(seg_b, j), CAUSAL)) continue;  // the same j in every lane
    const float* kj = k + head + static_cast<int64_t>(j) * stride;
    const float* vj = v + head + static_cast<int64_t>(j) * stride;
    float s = 0.0f, dpv = 0.0f;
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r) {
      if (!lane_has_elem<D>(lane, r)) continue;
      s += qr[r] * kj[lane + 32 * r];
      dpv += dor[r] * vj[lane + 32 * r];
    }
    s = warp_sum(s);
    dpv = warp_sum(dpv);
    const float p = expf(s * scale - lse_i);
    const float ds = p * (dpv - delta_i);
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r)
      if (lane_has_elem<D>(lane, r)) acc[r] += ds * kj[lane + 32 * r];
  }
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r)
    if (lane_has_elem<D>(lane, r)) dq[head + static_cast<int64_t>(i) * stride + lane + 32 * r] = acc[r] * scale;
}

// fp32: dK and dV, one warp per key row (b, h, j), queries one at a time
// over the queries that see key j.
template <int D, bool CAUSAL>
__global__ void dkdv_f32_kernel(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
                                const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                const float* __restrict__ lse, const float* __restrict__ delta,
                                const int32_t* __restrict__ seg, int B, int T, int H, int64_t stride, float scale) {
  constexpr int kPer = elems_per_lane<D>();
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(B) * H * T) return;
  const int j = static_cast<int>(w % T);
  const int h = static_cast<int>((w / T) % H);
  const int b = static_cast<int>(w / (static_cast<int64_t>(T) * H));
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;
  const int64_t ohead = static_cast<int64_t>(b) * T * H * D + static_cast<int64_t>(h) * D;
  const float* lse_bh = lse + (static_cast<int64_t>(b) * H + h) * T;
  const float* delta_bh = delta + (static_cast<int64_t>(b) * H + h) * T;
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;
  const int32_t seg_j = seg_at(seg_b, j);
  float kr[kPer], vr[kPer], dka[kPer], dva[kPer];
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r) {
    const bool has = lane_has_elem<D>(lane, r);
    kr[r] = has ? k[head + static_cast<int64_t>(j) * stride + lane + 32 * r] : 0.0f;
    vr[r] = has ? v[head + static_cast<int64_t>(j) * stride + lane + 32 * r] : 0.0f;
    dka[r] = dva[r] = 0.0f;
  }
  const IndexRange queries = attention_queries_for_keys(seg_b, T, CAUSAL, j, j);
  for (int i = queries.begin; i < queries.end; ++i) {
    if (!attention_visible(i, j, seg_at(seg_b, i), seg_j, CAUSAL)) continue;  // the same i in every lane
    const float* qi = q + head + static_cast<int64_t>(i) * stride;
    const float* doi = dout + ohead + static_cast<int64_t>(i) * H * D;
    float s = 0.0f, dpv = 0.0f;
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r) {
      if (!lane_has_elem<D>(lane, r)) continue;
      s += qi[lane + 32 * r] * kr[r];
      dpv += doi[lane + 32 * r] * vr[r];
    }
    s = warp_sum(s);
    dpv = warp_sum(dpv);
    const float p = expf(s * scale - lse_bh[i]);
    const float ds = p * (dpv - delta_bh[i]);
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r) {
      if (!lane_has_elem<D>(lane, r)) continue;
      dva[r] += p * doi[lane + 32 * r];
      dka[r] += ds * qi[lane + 32 * r];
    }
  }
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r) {
    if (!lane_has_elem<D>(lane, r)) continue;
    dk[head + static_cast<int64_t>(j) * stride + lane + 32 * r] = dka[r] * scale;
    dv[head + static_cast<int64_t>(j) * stride + lane + 32 * r] = dva[r];
  }
}

template <int D, bool CAUSAL>
struct BackwardBf16 {
  static void run(bf16* dq, bf16* dk, bf16* dv, const float* delta, const bf16* dout, const bf16* q, const bf16* k,
                  const bf16* v, const float* lse, const int32_t* seg, int B, int T, int H, int64_t stride, float scale,
                  cudaStream_t stream) {
    const dim3 block(kThreads);
    {
      auto kernel = dkdv_bf16_kernel<D, CAUSAL>;
      const size_t smem = dkdv_smem_bytes<D>();
      detail::set_smem(kernel, smem);
      const dim3 grid(static_cast<unsigned>(ceil_div(T, kKeyTile)), static_cast<unsigned>(H), static_cast<unsigned>(B));
      launch(kernel, grid, block, smem, stream, dev_ptr(dk), dev_ptr(dv), dev_ptr(dout), dev_ptr(q), dev_ptr(k),
             dev_ptr(v), lse, delta, seg, T, H, stride, scale, scale * kLog2e);
    }
    {
      auto kernel = dq_bf16_kernel<D, CAUSAL>;
      const size_t smem = dq_smem_bytes<D>();
      detail::set_smem(kernel, smem);
      const dim3 grid(static_cast<unsigned>(ceil_div(T, kQueryTile)), static_cast<unsigned>(H),
                      static_cast<unsigned>(B));
      launch(kernel, grid, block, smem, stream, dev_ptr(dq), dev_ptr(dout), dev_ptr(q), dev_ptr(k), dev_ptr(v), lse,
             delta, seg, T, H, stride, scale, scale * kLog2e);
    }
  }
};

template <int D, bool CAUSAL>
struct BackwardF32 {
  static void run(float* dq, float* dk, float* dv, const float* delta, const float* dout, const float* q,
                  const float* k, const float* v, const float* lse, const int32_t* seg, int B, int T, int H,
                  int64_t stride, float scale, cudaStream_t stream) {
    const int64_t threads = static_cast<int64_t>(B) * H * T * 32;
    launch_1d(dkdv_f32_kernel<D, CAUSAL>, threads, 128, 0, stream, dk, dv, dout, q, k, v, lse, delta, seg, B, T, H,
              stride, scale);
    launch_1d(dq_f32_kernel<D, CAUSAL>, threads, 128, 0, stream, dq, dout, q, k, v, lse, delta, seg, B, T, H,
              stride, scale);
  }
};

template <template <int, bool> class Launch, typename... Args>
void dispatch_backward(int D, bool causal, Args... args) {
  switch (D) {
    case 16: causal ? Launch<16, true>::run(args...) : Launch<16, false>::run(args...); break;
    case 32: causal ? Launch<32, true>::run(args...) : Launch<32, false>::run(args...); break;
    case 64: causal ? Launch<64, true>::run(args...) : Launch<64, false>::run(args...); break;
    case 128: causal ? Launch<128, true>::run(args...) : Launch<128, false>::run(args...); break;
    default: KILN_CHECK(false, "attention_backward: head dim " << D << " is not supported (16, 32, 64 or 128)");
  }
}

template <typename Tin>
void launch_delta(float* delta, const Tin* dout, const Tin* out, int B, int T, int H, int D, cudaStream_t stream) {
  const int64_t threads = static_cast<int64_t>(B) * T * H * 32;
  launch_1d(delta_kernel<device_t<Tin>>, threads, 256, 0, stream, delta, dev_ptr(dout), dev_ptr(out), B, T, H, D);
}

}  // namespace
}  // namespace attn

void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* workspace, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T, int H, int D,
                        int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream) {
  detail::check_attention_args("attention_backward", B, T, H, D, stride);
  if (B == 0 || T == 0 || H == 0) return;
  detail::check_bf16_alignment("attention_backward", stride, {dq, dk, dv, dout, q, k, v});
  attn::launch_delta(workspace, dout, out, B, T, H, D, stream);
  attn::dispatch_backward<attn::BackwardBf16>(D, mask.causal, dq, dk, dv, static_cast<const float*>(workspace), dout,
                                              q, k, v, lse, mask.segment_ids, B, T, H, stride, scale, stream);
}

void attention_backward(float* dq, float* dk, float* dv, float* workspace, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse, int B, int T, int H,
                        int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream) {
  detail::check_attention_args("attention_backward", B, T, H, D, stride);
  if (B == 0 || T == 0 || H == 0) return;
  attn::launch_delta(workspace, dout, out, B, T, H, D, stream);
  attn::dispatch_backward<attn::BackwardF32>(D, mask.causal, dq, dk, dv, static_cast<const float*>(workspace), dout,
                                             q, k, v, lse, mask.segment_ids, B, T, H, stride, scale, stream);
}

}  // namespace kiln
