// Fused attention forward on the GPU (layout and contract: kernels/attention.h;
// CPU reference: kernels/attention_cpu.cpp; backward: attention_backward.cu).
//
// bf16 kernel, one block per (64-query tile, head, batch), 4 warps, each warp
// owning 16 query rows:
//   Q tile → shared → A fragments kept in registers for the whole block;
//   the key tiles holding a key visible to one of the tile's queries are
//   found up front (attention_keys_for_queries: the diagonal when causal,
//   two binary searches over the segment ids when packed); the rest are
//   never loaded. For each of those 64-key tiles:
//     K, V tiles and their segment ids → shared (zero rows past T);
//     S = Q Kᵀ on tensor cores (fp32), scaled into log2 units and, unless the
//     whole tile is visible (one segment, below the diagonal, inside T),
//     masked element by element with attention_visible();
//     online softmax: new row max m, rescale the running O and row sum l by
//     2^(m_old - m_new), P = 2^(S - m_new);
//     O += P V with P rounded to bf16 straight from the S accumulators.
//   O / l → bf16, LSE = (m + log2 l) · ln 2.
// Napkin math: per 64×64 tile a warp does 16·64·D·2 (QKᵀ) + the same (PV)
// flops on tensor cores and reads 2·64·D·2 bytes of K/V from L2 per block,
// so at D = 128 the arithmetic intensity per block is 64 flop/byte of L2
// traffic — compute bound; what limits this version is the synchronous
// global→shared copy (no cp.async/TMA pipelining yet) and mma.sync instead of
// wgmma. Those are the next steps; correctness first.
//
// fp32 kernel: one warp per query row, keys one at a time over the row's
// visible range (warp-reduced dot product, scalar online softmax); simple and
// exact-ish, not fast.
#include "kernels/attention.h"
#include "kernels/attention_common.cuh"

namespace kiln {
namespace attn {
namespace {

constexpr int kFwdBr = 64;  // query rows per block
constexpr int kFwdBc = 64;  // keys per tile

template <int D>
constexpr size_t fwd_smem_bytes() {
  return static_cast<size_t>(kFwdBr + 2 * kFwdBc) * pitch<D>() * sizeof(bf16_t) + kFwdBc * sizeof(int32_t);
}

// grid (ceil(T / 64), H, B), block 128, dynamic smem fwd_smem_bytes<D>().
template <int D, bool CAUSAL>
__global__ void __launch_bounds__(kThreads)
    forward_bf16_kernel(bf16_t* __restrict__ out, float* __restrict__ lse, const bf16_t* __restrict__ q,
                        const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                        const int32_t* __restrict__ seg, int T, int H, int64_t stride, float scale_log2) {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  constexpr int LD = pitch<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);         // (64, LD)
  bf16_t* sK = sQ + kFwdBr * LD;                            // (64, LD)
  bf16_t* sV = sK + kFwdBc * LD;                            // (64, LD)
  int32_t* sSeg = reinterpret_cast<int32_t*>(sV + kFwdBc * LD);  // (64) the key tile's segment ids

  // Causal: later query tiles see more keys; schedule them first.
  const int qb = CAUSAL ? static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = qb * kFwdBr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;  // (b, 0, h, 0)
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;                // (T) or none

  load_tile<D, kFwdBr>(sQ, q + head, stride, q0, T);
  __syncthreads();
  uint32_t qf[D / 16][4];  // this warp's 16 query rows as A fragments, k = d
KILN_ATTN_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[kk], a_frag_ptr(sQ, LD, warp * 16, kk * 16, lane));

  const int row_a = q0 + warp * 16 + g;  // this thread's query rows (c0,c1 and c2,c3)
  const int row_b = row_a + 8;
  const int32_t seg_a = row_a < T ? seg_at(seg_b, row_a) : 0, seg_rb = row_b < T ? seg_at(seg_b, row_b) : 0;
  // The keys some query of this tile sees, and the tile's first/last ids.
  const int q_last = min(q0 + kFwdBr, T) - 1;
  const IndexRange keys = attention_keys_for_queries(seg_b, T, CAUSAL, q0, q_last);
  const int32_t sq_first = seg_at(seg_b, q0), sq_last = seg_at(seg_b, q_last);
  float o[D / 8][4];
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running row max, log2 units
  float l[2] = {0.0f, 0.0f};            // running row sum, this thread's columns only

  // Tiles outside [kb_begin, kb_end) hold no visible key: skipped, not loaded.
  const int kb_begin = keys.begin / kFwdBc, kb_end = static_cast<int>(ceil_div(keys.end, kFwdBc));
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    const int k0 = kb * kFwdBc;
    __syncthreads();  // all warps are done with the previous K/V tiles
    load_tile<D, kFwdBc>(sK, k + head, stride, k0, T);
    load_tile<D, kFwdBc>(sV, v + head, stride, k0, T);
    load_segments<kFwdBc>(sSeg, seg_b, k0, T);
    __syncthreads();

    float s[kFwdBc / 8][4];  // (16 rows, 64 keys) per warp
KILN_ATTN_UNROLL
    for (int nt = 0; nt < kFwdBc / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
KILN_ATTN_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) {
KILN_ATTN_UNROLL
      for (int np = 0; np < kFwdBc / 16; ++np) {
        uint32_t bk[4];
        ldsm_x4(bk, nk_frag_ptr(sK, LD, np * 16, kk * 16, lane));
        mma_bf16(s[2 * np], qf[kk], bk[0], bk[1]);
        mma_bf16(s[2 * np + 1], qf[kk], bk[2], bk[3]);
      }
    }

    // Scale; mask (keys past T, attention_visible) unless the whole tile is
    // visible (a uniform branch: the same for every thread of the block).
    const int k_last = min(k0 + kFwdBc, T) - 1;
    const bool unmasked = k0 + kFwdBc <= T && attention_block_all_visible(q0, k_last, sq_first, sq_last, sSeg[0],
                                                                          sSeg[k_last - k0], CAUSAL);
    float mx[2] = {-INFINITY, -INFINITY};
KILN_ATTN_UNROLL
    for (int nt = 0; nt < kFwdBc / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        s[nt][e] *= scale_log2;
        if (!unmasked) {
          const int c = nt * 8 + 2 * t4 + (e & 1);  // key within the tile
          const bool ok = k0 + c < T && attention_visible((e < 2) ? row_a : row_b, k0 + c, (e < 2) ? seg_a : seg_rb,
                                                          sSeg[c], CAUSAL);
          if (!ok) s[nt][e] = -INFINITY;
        }
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
      }
    }
    float base[2], alpha[2];
KILN_ATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(mx[r]));
      // A row with no visible key so far keeps m = -inf; use 0 as the base so
      // no (-inf) - (-inf) = NaN appears (its P and alpha are then 0).
      base[r] = (m_new == -INFINITY) ? 0.0f : m_new;
      alpha[r] = exp2f(m[r] - base[r]);
      m[r] = m_new;
    }
    float rs[2] = {0.0f, 0.0f};
KILN_ATTN_UNROLL
    for (int nt = 0; nt < kFwdBc / 8; ++nt) {
KILN_ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[nt][e] - base[e >> 1]);
        s[nt][e] = p;
        rs[e >> 1] += p;
      }
    }
KILN_ATTN_UNROLL
    for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + rs[r];
KILN_ATTN_UNROLL
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }

    // O += P V: k = the 64 keys, 16 at a time; n = d.
KILN_ATTN_UNROLL
    for (int kc = 0; kc < kFwdBc / 16; ++kc) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]), pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                              pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
KILN_ATTN_UNROLL
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bv[4];
        ldsm_x4_trans(bv, a_frag_ptr(sV, LD, kc * 16, dp * 16, lane));
        mma_bf16(o[2 * dp], pa, bv[0], bv[1]);
        mma_bf16(o[2 * dp + 1], pa, bv[2], bv[3]);
      }
    }
  }

  // Finalize: full row sums, normalize, store bf16 pairs and the LSE.
  float inv[2];
KILN_ATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    inv[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
  }
  const int64_t C = static_cast<int64_t>(H) * D;
  bf16_t* out_a = out + (static_cast<int64_t>(b) * T + row_a) * C + static_cast<int64_t>(h) * D + 2 * t4;
  bf16_t* out_b = out_a + 8 * C;
KILN_ATTN_UNROLL
  for (int dt = 0; dt < D / 8; ++dt) {
    if (row_a < T)
      *reinterpret_cast<uint32_t*>(out_a + dt * 8) = pack_bf16(o[dt][0] * inv[0], o[dt][1] * inv[0]);
    if (row_b < T)
      *reinterpret_cast<uint32_t*>(out_b + dt * 8) = pack_bf16(o[dt][2] * inv[1], o[dt][3] * inv[1]);
  }
  if (t4 == 0) {
    float* lse_bh = lse + (static_cast<int64_t>(b) * H + h) * T;
    if (row_a < T) lse_bh[row_a] = (m[0] + log2f(l[0])) * kLn2;
    if (row_b < T) lse_bh[row_b] = (m[1] + log2f(l[1])) * kLn2;
  }
}

// One warp per query row (b, h, i); launch_1d over B·H·T·32 threads.
template <int D, bool CAUSAL>
__global__ void forward_f32_kernel(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                                   const float* __restrict__ k, const float* __restrict__ v,
                                   const int32_t* __restrict__ seg, int B, int T, int H, int64_t stride, float scale) {
  constexpr int kPer = elems_per_lane<D>();  // elements of a row per lane (lanes >= D idle when D = 16)
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(B) * H * T) return;  // whole warps exit together
  const int i = static_cast<int>(w % T);
  const int h = static_cast<int>((w / T) % H);
  const int b = static_cast<int>(w / (static_cast<int64_t>(T) * H));
  const int64_t head = static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D;
  const int32_t* seg_b = seg ? seg + static_cast<int64_t>(b) * T : nullptr;
  const int32_t seg_i = seg_at(seg_b, i);
  float qr[kPer], o[kPer];
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r) {
    qr[r] = lane_has_elem<D>(lane, r) ? q[head + static_cast<int64_t>(i) * stride + lane + 32 * r] : 0.0f;
    o[r] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;  // identical in every lane (warp_sum is)
  const IndexRange keys = attention_keys_for_queries(seg_b, T, CAUSAL, i, i);
  for (int j = keys.begin; j < keys.end; ++j) {
    if (!attention_visible(i, j, seg_i, seg_at(seg_b, j), CAUSAL)) continue;  // the same j in every lane
    const float* kj = k + head + static_cast<int64_t>(j) * stride;
    const float* vj = v + head + static_cast<int64_t>(j) * stride;
    float dot = 0.0f;
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r)
      if (lane_has_elem<D>(lane, r)) dot += qr[r] * kj[lane + 32 * r];
    const float s = warp_sum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float p = expf(s - m_new);
    l = l * alpha + p;
KILN_ATTN_UNROLL
    for (int r = 0; r < kPer; ++r)
      if (lane_has_elem<D>(lane, r)) o[r] = o[r] * alpha + p * vj[lane + 32 * r];
    m = m_new;
  }
  float* oi = out + (static_cast<int64_t>(b) * T + i) * H * D + static_cast<int64_t>(h) * D;
KILN_ATTN_UNROLL
  for (int r = 0; r < kPer; ++r)
    if (lane_has_elem<D>(lane, r)) oi[lane + 32 * r] = o[r] / l;
  if (lane == 0) lse[(static_cast<int64_t>(b) * H + h) * T + i] = m + logf(l);
}

template <int D, bool CAUSAL>
void launch_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* seg, int B,
                         int T, int H, int64_t stride, float scale, cudaStream_t stream) {
  auto kernel = forward_bf16_kernel<D, CAUSAL>;
  const size_t smem = fwd_smem_bytes<D>();
  detail::set_smem(kernel, smem);
  const dim3 grid(static_cast<unsigned>(ceil_div(T, kFwdBr)), static_cast<unsigned>(H), static_cast<unsigned>(B));
  launch(kernel, grid, dim3(kThreads), smem, stream, dev_ptr(out), lse, dev_ptr(q), dev_ptr(k), dev_ptr(v), seg, T,
         H, stride, scale * kLog2e);
}

template <int D, bool CAUSAL>
void launch_forward_f32(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* seg,
                        int B, int T, int H, int64_t stride, float scale, cudaStream_t stream) {
  const int64_t threads = static_cast<int64_t>(B) * H * T * 32;
  launch_1d(forward_f32_kernel<D, CAUSAL>, threads, 128, 0, stream, out, lse, q, k, v, seg, B, T, H, stride, scale);
}

// Runtime (D, causal) → template instantiation.
template <template <int, bool> class Launch, typename... Args>
void dispatch(int D, bool causal, Args... args) {
  switch (D) {
    case 16: causal ? Launch<16, true>::run(args...) : Launch<16, false>::run(args...); break;
    case 32: causal ? Launch<32, true>::run(args...) : Launch<32, false>::run(args...); break;
    case 64: causal ? Launch<64, true>::run(args...) : Launch<64, false>::run(args...); break;
    case 128: causal ? Launch<128, true>::run(args...) : Launch<128, false>::run(args...); break;
    default: KILN_CHECK(false, "attention: head dim " << D << " is not supported (16, 32, 64 or 128)");
  }
}

template <int D, bool CAUSAL>
struct ForwardBf16 {
  template <typename... Args>
  static void run(Args... args) {
    launch_forward_bf16<D, CAUSAL>(args...);
  }
};
template <int D, bool CAUSAL>
struct ForwardF32 {
  template <typename... Args>
  static void run(Args... args) {
    launch_forward_f32<D, CAUSAL>(args...);
  }
};

}  // namespace
}  // namespace attn

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                       int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream) {
  detail::check_attention_args("attention_forward", B, T, H, D, stride);
  if (B == 0 || T == 0 || H == 0) return;
  detail::check_bf16_alignment("attention_forward", stride, {out, q, k, v});
  attn::dispatch<attn::ForwardBf16>(D, mask.causal, out, lse, q, k, v, mask.segment_ids, B, T, H, stride, scale,
                                    stream);
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T, int H,
                       int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream) {
  detail::check_attention_args("attention_forward", B, T, H, D, stride);
  if (B == 0 || T == 0 || H == 0) return;
  attn::dispatch<attn::ForwardF32>(D, mask.causal, out, lse, q, k, v, mask.segment_ids, B, T, H, stride, scale,
                                   stream);
}

}  // namespace kiln
