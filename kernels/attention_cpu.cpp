// CPU attention (see kernels/attention.h for the layout, kernels/attention_mask.h
// for the mask): the CPU backend's attention and the ground truth of the CUDA
// tests (double for the finite-difference checks).
//
// Per (batch, head) pair, per run of equal segment ids (the whole row without
// ids), per tile of kQueryTile queries, with the keys that tile can see
// (attention_keys_for_queries: for causal masks the keys up to the tile's
// last query, never the other segments):
//
//   forward    S (m, n) = scale · Q_tile (m, D) · K_keysᵀ (D, n)      sgemm
//              P = softmax of each row over its visible keys (full rows:
//                  exact max and sum, no online rescaling; 0 elsewhere)
//              O_tile (m, D) = P (m, n) · V_keys (n, D)                  sgemm
//              LSE_i = max_i + log Σ_j exp(S_ij - max_i)
//   backward   P = exp(scale · Q Kᵀ - LSE) on visible pairs, 0 elsewhere
//              dP (m, n) = dO_tile · V_keysᵀ;  delta_i = dO_i · O_i
//              dS = P ⊙ (dP - delta)
//              dQ_tile = scale · dS · K_keys                             sgemm
//              dK_keys += scale · dSᵀ · Q_tile;  dV_keys += Pᵀ · dO_tile  sgemm
//
// so the score matrix of a tile is m × n (64 × T at most), never T × T, and
// no product touches a pair the mask hides except inside a tile that holds
// visible pairs too (the causal diagonal tiles: scores computed, then
// zeroed). Tiles start at the run's first token, so a packed example is
// computed exactly as it would be alone (same products on the same operands:
// bit for bit, tests/kernels/attention_test.cpp checks it).
//
// Threads: the (batch, head) pairs are split over the CPU pool
// (runtime/parallel.h), each pair computed whole by one part with
// single-threaded BLAS calls (kernels/cpu_blas.h), so the results do not
// depend on the thread count. dK/dV of a pair accumulate over its query tiles
// in tile order.
//
// Napkin math (configs/gpt_fortunes.yaml: B 8, H 6, T 128, D 32, causal):
// 2 tiles of 64 queries see 64 and 128 keys, 12K scores per pair against
// 8.3K visible ones (16K for full T × T rows); forward 2 products, backward 5,
// ≈ 7 · 12K · 32 · 2 ≈ 5.5 MFLOP per pair, 1 GFLOP per training step over 4
// layers and 48 pairs: ~10 ms at OpenBLAS's small-matrix rate on one core.
//
// The scalar implementation this replaced (one dot product per pair) lives on
// as the test oracle in tests/kernels/attention_scalar.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu_blas.h"
#include "kernels/cpu_math.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

/// Queries per tile: the score block of a tile is kQueryTile × (visible key
/// range) Reals. 64 keeps the causal waste (the scores above the diagonal of
/// the last tile) at m²/2 per tile and the blocks large enough for sgemm.
constexpr int kQueryTile = 64;

void check_args(const char* who, int B, int T, int H, int D, int64_t stride) {
  KILN_CHECK(B >= 0 && T >= 0 && H >= 0 && D >= 1,
             who << ": bad shape B=" << B << " T=" << T << " H=" << H << " D=" << D);
  KILN_CHECK(stride >= static_cast<int64_t>(H) * D,
             who << ": row stride " << stride << " is smaller than H·D = " << static_cast<int64_t>(H) * D);
}

/// Runs fn(s0, s1) over the runs of equal segment ids of one batch row
/// (seg_row, T ids, non-decreasing), or once over [0, T) without ids.
template <typename Fn>
void for_each_run(const int32_t* seg_row, int T, Fn&& fn) {
  if (seg_row == nullptr) {
    fn(0, T);
    return;
  }
  for (int s0 = 0; s0 < T;) {
    const int s1 = segment_upper_bound(seg_row, s0, T, seg_row[s0]);
    fn(s0, s1);
    s0 = s1;
  }
}

/// (batch, head) pairs per part: at least ~2^19 multiply-adds of forward work
/// per part (T² · D per pair, full rows), so tiny problems stay on one thread.
int64_t pairs_per_part(int T, int D) {
  const double work = static_cast<double>(T) * T * D;
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(int64_t{1} << 19) / std::max(work, 1.0)));
}

// --- one row of scores ----------------------------------------------------------
//
// s (n) holds scale·q·k for the tile's key range; [lo, hi) are the keys this
// row sees. The rest of the row is zeroed so the following products can
// multiply whole rows.

/// Forward: s[lo, hi) ← softmax, the rest 0; returns the row's LSE.
KILN_CPU_CLONES float softmax_row_f32(float* s, int lo, int hi, int n) {
  const float m = cpu_math::max_lanes(s + lo, hi - lo);
  for (int j = lo; j < hi; ++j) s[j] = cpu_math::exp_f32(s[j] - m);
  const double l = cpu_math::sum_lanes(s + lo, hi - lo);
  const double inv = 1.0 / l;
  for (int j = lo; j < hi; ++j) s[j] = static_cast<float>(static_cast<double>(s[j]) * inv);
  for (int j = 0; j < lo; ++j) s[j] = 0.0f;
  for (int j = hi; j < n; ++j) s[j] = 0.0f;
  return m + static_cast<float>(std::log(l));
}

double softmax_row_f64(double* s, int lo, int hi, int n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int j = lo; j < hi; ++j) m = std::max(m, s[j]);
  double l = 0;
  for (int j = lo; j < hi; ++j) {
    s[j] = std::exp(s[j] - m);
    l += s[j];
  }
  for (int j = lo; j < hi; ++j) s[j] = s[j] / l;
  for (int j = 0; j < lo; ++j) s[j] = 0.0;
  for (int j = hi; j < n; ++j) s[j] = 0.0;
  return m + std::log(l);
}

/// Backward: s (scores) ← P = exp(s - lse), dp (dO·V) ← dS = P ⊙ (dp - delta)
/// on [lo, hi), both 0 elsewhere.
KILN_CPU_CLONES void softmax_grad_row_f32(float* s, float* dp, int lo, int hi, int n, float lse, float delta) {
  for (int j = lo; j < hi; ++j) {
    const float p = cpu_math::exp_f32(s[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
  for (int j = 0; j < lo; ++j) s[j] = dp[j] = 0.0f;
  for (int j = hi; j < n; ++j) s[j] = dp[j] = 0.0f;
}

void softmax_grad_row_f64(double* s, double* dp, int lo, int hi, int n, double lse, double delta) {
  for (int j = lo; j < hi; ++j) {
    const double p = std::exp(s[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
  for (int j = 0; j < lo; ++j) s[j] = dp[j] = 0.0;
  for (int j = hi; j < n; ++j) s[j] = dp[j] = 0.0;
}

template <typename Real>
Real dot(const Real* a, const Real* b, int n) {
  if constexpr (std::is_same_v<Real, float>) return static_cast<float>(cpu_math::dot_lanes(a, b, n));
  else {
    Real s = 0;
    for (int d = 0; d < n; ++d) s += a[d] * b[d];
    return s;
  }
}

// --- one (batch, head) pair ----------------------------------------------------

/// The pair's views: row t of q/k/v (and dq/dk/dv) at base + t·stride, of
/// out/dout at base + t·C.
template <typename Real>
struct Head {
  int T, D;
  int64_t stride, C;
  const int32_t* seg;  // (T) ids of this batch row, or nullptr
  bool causal;
  Real scale;
};

template <typename Real>
void forward_pair(const Head<Real>& h, Real* out, Real* lse, const Real* q, const Real* k, const Real* v, Real* s) {
  for_each_run(h.seg, h.T, [&](int s0, int s1) {
    for (int i0 = s0; i0 < s1; i0 += kQueryTile) {
      const int i1 = std::min(i0 + kQueryTile, s1), m = i1 - i0;
      const IndexRange keys = attention_keys_for_queries(h.seg, h.T, h.causal, i0, i1 - 1);
      const int n = keys.end - keys.begin;
      // S (m, n) = scale · Q[i0:i1] · K[keys]ᵀ
      cpu_blas::gemm(false, true, m, n, h.D, h.scale, q + i0 * h.stride, h.stride, k + keys.begin * h.stride,
                     h.stride, Real(0), s, n);
      for (int r = 0; r < m; ++r) {
        const IndexRange vis = attention_keys_for_queries(h.seg, h.T, h.causal, i0 + r, i0 + r);
        const int lo = vis.begin - keys.begin, hi = vis.end - keys.begin;
        if constexpr (std::is_same_v<Real, float>) lse[i0 + r] = softmax_row_f32(s + r * n, lo, hi, n);
        else lse[i0 + r] = softmax_row_f64(s + r * n, lo, hi, n);
      }
      // O[i0:i1] (m, D) = P (m, n) · V[keys] (n, D)
      cpu_blas::gemm(false, false, m, h.D, n, Real(1), s, n, v + keys.begin * h.stride, h.stride, Real(0),
                     out + i0 * h.C, h.C);
    }
  });
}

template <typename Real>
void backward_pair(const Head<Real>& h, Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q,
                   const Real* k, const Real* v, const Real* out, const Real* lse, Real* s, Real* dp) {
  // Only this head's elements of dk/dv are written (the fused dQKV buffer
  // shares its rows with the other heads and with dq).
  for (int t = 0; t < h.T; ++t)
    for (int d = 0; d < h.D; ++d) dk[t * h.stride + d] = dv[t * h.stride + d] = Real(0);
  for_each_run(h.seg, h.T, [&](int s0, int s1) {
    for (int i0 = s0; i0 < s1; i0 += kQueryTile) {
      const int i1 = std::min(i0 + kQueryTile, s1), m = i1 - i0;
      const IndexRange keys = attention_keys_for_queries(h.seg, h.T, h.causal, i0, i1 - 1);
      const int n = keys.end - keys.begin;
      const Real* qt = q + i0 * h.stride;          // (m, D)
      const Real* gout = dout + i0 * h.C;          // (m, D)
      const Real* kk = k + keys.begin * h.stride;  // (n, D)
      const Real* vk = v + keys.begin * h.stride;  // (n, D)
      // S (m, n) = scale · Q Kᵀ;  dP (m, n) = dO Vᵀ
      cpu_blas::gemm(false, true, m, n, h.D, h.scale, qt, h.stride, kk, h.stride, Real(0), s, n);
      cpu_blas::gemm(false, true, m, n, h.D, Real(1), gout, h.C, vk, h.stride, Real(0), dp, n);
      for (int r = 0; r < m; ++r) {
        const int i = i0 + r;
        const IndexRange vis = attention_keys_for_queries(h.seg, h.T, h.causal, i, i);
        const int lo = vis.begin - keys.begin, hi = vis.end - keys.begin;
        const Real delta = dot(dout + i * h.C, out + i * h.C, h.D);  // Σ_j P_ij dP_ij
        if constexpr (std::is_same_v<Real, float>)
          softmax_grad_row_f32(s + r * n, dp + r * n, lo, hi, n, lse[i], delta);
        else
          softmax_grad_row_f64(s + r * n, dp + r * n, lo, hi, n, lse[i], delta);
      }
      // dQ[i0:i1] (m, D) = scale · dS (m, n) · K (n, D)
      cpu_blas::gemm(false, false, m, h.D, n, h.scale, dp, n, kk, h.stride, Real(0), dq + i0 * h.stride, h.stride);
      // dK[keys] (n, D) += scale · dSᵀ (n, m) · Q (m, D);  dV[keys] += Pᵀ · dO
      cpu_blas::gemm(true, false, n, h.D, m, h.scale, dp, n, qt, h.stride, Real(1), dk + keys.begin * h.stride,
                     h.stride);
      cpu_blas::gemm(true, false, n, h.D, m, Real(1), s, n, gout, h.C, Real(1), dv + keys.begin * h.stride,
                     h.stride);
    }
  });
}

template <typename Real>
Head<Real> head_of(const AttentionMask& mask, int b, int T, int D, int64_t stride, int64_t C, float scale) {
  const int32_t* seg = mask.segment_ids ? mask.segment_ids + static_cast<int64_t>(b) * T : nullptr;
  return Head<Real>{T, D, stride, C, seg, mask.causal, static_cast<Real>(scale)};
}

// Longest run of one segment in the batch (the widest score row a tile needs).
int longest_run(const AttentionMask& mask, int B, int T) {
  if (mask.segment_ids == nullptr) return T;
  int longest = 0;
  for (int b = 0; b < B; ++b)
    for_each_run(mask.segment_ids + static_cast<int64_t>(b) * T, T,
                 [&](int s0, int s1) { longest = std::max(longest, s1 - s0); });
  return longest;
}

}  // namespace

template <typename Real>
void attention_forward_cpu(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, int B, int T, int H,
                           int D, int64_t stride, float scale, const AttentionMask& mask) {
  check_args("attention_forward_cpu", B, T, H, D, stride);
  check_attention_segments(mask.segment_ids, B, T, "attention_forward_cpu");
  if (B == 0 || T == 0 || H == 0) return;
  cpu_blas::single_threaded();
  const int64_t C = static_cast<int64_t>(H) * D;
  const size_t scratch = static_cast<size_t>(std::min(kQueryTile, T)) * static_cast<size_t>(longest_run(mask, B, T));
  parallel_for(static_cast<int64_t>(B) * H, pairs_per_part(T, D), [&](int64_t lo, int64_t hi) {
    std::vector<Real> s(scratch);  // (kQueryTile, keys) scores of one tile
    for (int64_t p = lo; p < hi; ++p) {
      const int b = static_cast<int>(p / H), hh = static_cast<int>(p % H);
      const Head<Real> head = head_of<Real>(mask, b, T, D, stride, C, scale);
      const int64_t row0 = static_cast<int64_t>(b) * T;
      const int64_t in = row0 * stride + static_cast<int64_t>(hh) * D;
      forward_pair(head, out + row0 * C + static_cast<int64_t>(hh) * D, lse + p * T, q + in, k + in, v + in,
                   s.data());
    }
  });
}

template <typename Real>
void attention_backward_cpu(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                            const Real* v, const Real* out, const Real* lse, int B, int T, int H, int D,
                            int64_t stride, float scale, const AttentionMask& mask) {
  check_args("attention_backward_cpu", B, T, H, D, stride);
  check_attention_segments(mask.segment_ids, B, T, "attention_backward_cpu");
  if (B == 0 || T == 0 || H == 0) return;
  cpu_blas::single_threaded();
  const int64_t C = static_cast<int64_t>(H) * D;
  const size_t scratch = static_cast<size_t>(std::min(kQueryTile, T)) * static_cast<size_t>(longest_run(mask, B, T));
  // Backward is ~2.5x the forward's work per pair.
  const int64_t per_part = std::max<int64_t>(1, pairs_per_part(T, D) / 2);
  parallel_for(static_cast<int64_t>(B) * H, per_part, [&](int64_t lo, int64_t hi) {
    std::vector<Real> s(scratch), dp(scratch);  // P and dP/dS of one tile
    for (int64_t p = lo; p < hi; ++p) {
      const int b = static_cast<int>(p / H), hh = static_cast<int>(p % H);
      const Head<Real> head = head_of<Real>(mask, b, T, D, stride, C, scale);
      const int64_t row0 = static_cast<int64_t>(b) * T;
      const int64_t in = row0 * stride + static_cast<int64_t>(hh) * D;
      const int64_t o = row0 * C + static_cast<int64_t>(hh) * D;
      backward_pair(head, dq + in, dk + in, dv + in, dout + o, q + in, k + in, v + in, out + o, lse + p * T,
                    s.data(), dp.data());
    }
  });
}

template void attention_forward_cpu<float>(float*, float*, const float*, const float*, const float*, int, int, int,
                                           int, int64_t, float, const AttentionMask&);
template void attention_forward_cpu<double>(double*, double*, const double*, const double*, const double*, int, int,
                                            int, int, int64_t, float, const AttentionMask&);
template void attention_backward_cpu<float>(float*, float*, float*, const float*, const float*, const float*,
                                            const float*, const float*, const float*, int, int, int, int, int64_t,
                                            float, const AttentionMask&);
template void attention_backward_cpu<double>(double*, double*, double*, const double*, const double*, const double*,
                                             const double*, const double*, const double*, int, int, int, int,
                                             int64_t, float, const AttentionMask&);

}  // namespace kiln
