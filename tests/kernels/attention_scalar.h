// The test oracle for the CPU attention (kernels/attention_cpu.cpp): the
// scalar implementation that was the CPU reference before the CPU backend
// moved to GEMM tiles. Plain math, one query row of scores at a time, every
// (i, j) pair asked attention_visible() and invisible keys left out of the
// softmax; O(B·H·T²·D) work and O(T) scratch, no threads, no BLAS. Kept here,
// in the tests only, so the library's tiled version is checked against an
// implementation that shares none of its tiling, masking ranges or BLAS
// calls (tests/kernels/attention_test.cpp). Same signature as
// attention_forward_cpu / attention_backward_cpu (kernels/attention.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "runtime/error.h"

namespace kiln::attention_testing {

namespace scalar_detail {

inline void check_args(const char* who, int B, int T, int H, int D, int64_t stride) {
  KILN_CHECK(B >= 0 && T >= 0 && H >= 0 && D >= 1,
             who << ": bad shape B=" << B << " T=" << T << " H=" << H << " D=" << D);
  KILN_CHECK(stride >= static_cast<int64_t>(H) * D,
             who << ": row stride " << stride << " is smaller than H·D = " << static_cast<int64_t>(H) * D);
}

// a · b over n elements with 8 independent partial sums: a fixed order (so
// still deterministic) that the compiler can vectorize, ~4x faster than one
// running sum under -ffp-contract=off and strict IEEE ordering.
template <typename Real>
inline Real dot(const Real* a, const Real* b, int n) {
  Real acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int d = 0;
  for (; d + 8 <= n; d += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[d + l] * b[d + l];
  Real s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Segment id of token t of batch row b (0 for all without segment ids).
inline int32_t segment_of(const AttentionMask& mask, int b, int t, int T) {
  return mask.segment_ids ? mask.segment_ids[static_cast<int64_t>(b) * T + t] : 0;
}

}  // namespace scalar_detail

template <typename Real>
inline void attention_forward_scalar(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, int B, int T, int H,
                           int D, int64_t stride, float scale, const AttentionMask& mask) {
  scalar_detail::check_args("attention_forward_scalar", B, T, H, D, stride);
  check_attention_segments(mask.segment_ids, B, T, "attention_forward_scalar");
  const Real sc = static_cast<Real>(scale);
  const int64_t C = static_cast<int64_t>(H) * D;
  std::vector<Real> s(static_cast<size_t>(T));  // one row of scores (visible entries only)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < T; ++i) {
        const int32_t seg_i = scalar_detail::segment_of(mask, b, i, T);
        auto sees = [&](int j) { return attention_visible(i, j, seg_i, scalar_detail::segment_of(mask, b, j, T), mask.causal); };
        const Real* qi = q + (static_cast<int64_t>(b) * T + i) * stride + static_cast<int64_t>(h) * D;  // (D)
        Real m = -std::numeric_limits<Real>::infinity();
        for (int j = 0; j < T; ++j) {
          if (!sees(j)) continue;
          const Real* kj = k + (static_cast<int64_t>(b) * T + j) * stride + static_cast<int64_t>(h) * D;
          s[j] = sc * scalar_detail::dot(qi, kj, D);
          m = std::max(m, s[j]);
        }
        // Softmax with the max subtracted (a query sees at least itself, so m
        // is finite for finite inputs).
        Real l = 0;
        for (int j = 0; j < T; ++j) {
          if (!sees(j)) continue;
          s[j] = std::exp(s[j] - m);
          l += s[j];
        }
        Real* oi = out + (static_cast<int64_t>(b) * T + i) * C + static_cast<int64_t>(h) * D;  // (D)
        for (int d = 0; d < D; ++d) oi[d] = 0;
        for (int j = 0; j < T; ++j) {
          if (!sees(j)) continue;
          const Real* vj = v + (static_cast<int64_t>(b) * T + j) * stride + static_cast<int64_t>(h) * D;
          const Real p = s[j] / l;
          for (int d = 0; d < D; ++d) oi[d] += p * vj[d];
        }
        lse[(static_cast<int64_t>(b) * H + h) * T + i] = m + std::log(l);
      }
    }
  }
}

template <typename Real>
inline void attention_backward_scalar(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                            const Real* v, const Real* out, const Real* lse, int B, int T, int H, int D,
                            int64_t stride, float scale, const AttentionMask& mask) {
  scalar_detail::check_args("attention_backward_scalar", B, T, H, D, stride);
  check_attention_segments(mask.segment_ids, B, T, "attention_backward_scalar");
  const Real sc = static_cast<Real>(scale);
  const int64_t C = static_cast<int64_t>(H) * D;
  // Offsets of row (b, t, h): q/k/v/dq/dk/dv (strided) and out/dout (contiguous).
  auto row = [&](int b, int t, int h) {
    return (static_cast<int64_t>(b) * T + t) * stride + static_cast<int64_t>(h) * D;
  };
  auto orow = [&](int b, int t, int h) {
    return (static_cast<int64_t>(b) * T + t) * C + static_cast<int64_t>(h) * D;
  };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      // Overwrite only this head's elements: with a fused dQKV buffer the
      // other heads and the other two of q/k/v share the rows.
      for (int t = 0; t < T; ++t) {
        for (int d = 0; d < D; ++d) {
          dq[row(b, t, h) + d] = 0;
          dk[row(b, t, h) + d] = 0;
          dv[row(b, t, h) + d] = 0;
        }
      }
      for (int i = 0; i < T; ++i) {
        const Real* qi = q + row(b, i, h);
        const Real* doi = dout + orow(b, i, h);
        const Real* oi = out + orow(b, i, h);
        const Real delta = scalar_detail::dot(doi, oi, D);  // delta_i = dO_i · O_i = Σ_j P_ij dP_ij
        const Real lse_i = lse[(static_cast<int64_t>(b) * H + h) * T + i];
        Real* dqi = dq + row(b, i, h);
        const int32_t seg_i = scalar_detail::segment_of(mask, b, i, T);
        for (int j = 0; j < T; ++j) {
          if (!attention_visible(i, j, seg_i, scalar_detail::segment_of(mask, b, j, T), mask.causal)) continue;
          const Real* kj = k + row(b, j, h);
          const Real* vj = v + row(b, j, h);
          const Real s = scalar_detail::dot(qi, kj, D);
          const Real dp = scalar_detail::dot(doi, vj, D);
          const Real p = std::exp(sc * s - lse_i);
          const Real ds = p * (dp - delta);  // dL/d(scale·s)
          Real* dkj = dk + row(b, j, h);
          Real* dvj = dv + row(b, j, h);
          for (int d = 0; d < D; ++d) {
            dqi[d] += sc * ds * kj[d];
            dkj[d] += sc * ds * qi[d];
            dvj[d] += p * doi[d];
          }
        }
      }
    }
  }
}

}  // namespace kiln::attention_testing
