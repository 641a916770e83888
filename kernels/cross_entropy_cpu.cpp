// CPU references for the fused softmax cross-entropy (see cross_entropy.h):
// one row at a time, logsumexp and sums in double whatever T is, rows spread
// over the CPU pool (runtime/parallel.h; a row belongs to one part, so results
// do not depend on the thread count). Float rows take kernels/cpu_math.h's
// vectorized exp (<= 1 ulp) and fixed-order lane sums, compiled per ISA;
// double keeps std::exp and running sums.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu_math.h"
#include "kernels/cross_entropy.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

void check_args(const char* op, int64_t rows, int64_t V, int64_t Vp) {
  KILN_CHECK(rows >= 0, op << ": negative row count " << rows);
  KILN_CHECK(V >= 1 && Vp >= V, op << ": need 1 <= V <= Vp, got V = " << V << ", Vp = " << Vp);
}

void check_target(const char* op, int64_t row, int32_t t, int64_t V) {
  KILN_CHECK(t >= 0 && t < V, op << ": target " << t << " of row " << row << " is outside [0, " << V
                                 << ") and is not ignore_index");
}

// max and Σ exp(x - max) over the first V logits of a row.
template <typename T>
void row_logsumexp(const T* lr, int64_t V, double* max_out, double* sum_out) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < V; ++c) m = std::fmax(m, static_cast<double>(lr[c]));
  double s = 0;
  for (int64_t c = 0; c < V; ++c) s += std::exp(static_cast<double>(lr[c]) - m);
  *max_out = m;
  *sum_out = s;
}

// Logits per part below which another thread does not pay (~10 µs).
constexpr int64_t kPerPart = int64_t{1} << 13;

int64_t rows_per_part(int64_t V) { return std::max<int64_t>(1, kPerPart / V); }

// One float row of the fused forward + backward; returns the loss. Same
// formulas as the double row below, with the exponentials in float.
KILN_CPU_CLONES double forward_backward_row_f32(float* lr, int64_t V, int64_t Vp, int32_t t, float scale, double keep,
                                                double eps_v) {
  const double xt = static_cast<double>(lr[t]);
  const float mf = cpu_math::max_lanes(lr, V);  // NaN logits ignored, as std::fmax does
  const double m = static_cast<double>(mf);
  const double sx = eps_v != 0.0 ? cpu_math::sum_lanes(lr, V) : 0.0;
  // One exp per element: the row holds exp(x - max) until the sum is known.
  for (int64_t c = 0; c < V; ++c) lr[c] = cpu_math::exp_f32(lr[c] - mf);
  const double s = cpu_math::sum_lanes(lr, V);
  const double loss = m + std::log(s) - keep * xt - eps_v * sx;
  const double k = static_cast<double>(scale) / s, shift = eps_v * static_cast<double>(scale);
  for (int64_t c = 0; c < V; ++c) lr[c] = static_cast<float>(static_cast<double>(lr[c]) * k - shift);
  // p_t - 1 cancels when p_t ≈ 1: recompute it in double rather than from the rounded row.
  lr[t] = static_cast<float>((std::exp(xt - m) / s - keep - eps_v) * static_cast<double>(scale));
  for (int64_t c = V; c < Vp; ++c) lr[c] = 0;
  return loss;
}

// Σ exp(x - max) of a float row without storing the exponentials.
KILN_CPU_CLONES double sum_exp_f32(const float* lr, int64_t V, float mf) {
  constexpr int L = cpu_math::kLanes;
  double acc[L] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + L <= V; c += L)
    for (int l = 0; l < L; ++l) acc[l] += static_cast<double>(cpu_math::exp_f32(lr[c + l] - mf));
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; c < V; ++c) s += static_cast<double>(cpu_math::exp_f32(lr[c] - mf));
  return s;
}

}  // namespace

template <typename T>
void cross_entropy_forward_backward_cpu(T* logits, T* losses, const int32_t* targets, int64_t rows, int64_t V,
                                        int64_t Vp, float scale, int32_t ignore_index, float label_smoothing) {
  check_args("cross_entropy_forward_backward_cpu", rows, V, Vp);
  const double eps = label_smoothing, keep = 1.0 - eps, eps_v = eps / static_cast<double>(V);
  // Validate every target before touching any logits: bad input must not corrupt.
  for (int64_t r = 0; r < rows; ++r)
    if (targets[r] != ignore_index) check_target("cross_entropy_forward_backward_cpu", r, targets[r], V);
  parallel_for(rows, rows_per_part(V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* lr = logits + r * Vp;  // (Vp,): logits in, dlogits out
      const int32_t t = targets[r];
      if (t == ignore_index) {
        losses[r] = 0;
        for (int64_t c = 0; c < Vp; ++c) lr[c] = 0;
        continue;
      }
      if constexpr (std::is_same_v<T, float>) {
        losses[r] = static_cast<float>(forward_backward_row_f32(lr, V, Vp, t, scale, keep, eps_v));
        continue;
      }
      // One exp per element: the row holds exp(x - max) until the sum is known.
      const double xt = static_cast<double>(lr[t]);
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < V; ++c) m = std::fmax(m, static_cast<double>(lr[c]));
      double s = 0, sx = 0;
      for (int64_t c = 0; c < V; ++c) {
        const double e = std::exp(static_cast<double>(lr[c]) - m);
        s += e;
        sx += static_cast<double>(lr[c]);
        lr[c] = static_cast<T>(e);
      }
      losses[r] = static_cast<T>(m + std::log(s) - keep * xt - eps_v * sx);
      const double k = static_cast<double>(scale) / s, shift = eps_v * static_cast<double>(scale);
      for (int64_t c = 0; c < V; ++c) lr[c] = static_cast<T>(static_cast<double>(lr[c]) * k - shift);
      // p_t - 1 cancels when p_t ≈ 1: recompute it in double rather than from the rounded row.
      lr[t] = static_cast<T>((std::exp(xt - m) / s - keep - eps_v) * static_cast<double>(scale));
      for (int64_t c = V; c < Vp; ++c) lr[c] = 0;
    }
  });
}

template <typename T>
void cross_entropy_forward_cpu(T* losses, const T* logits, const int32_t* targets, int64_t rows, int64_t V,
                               int64_t Vp, int32_t ignore_index, float label_smoothing) {
  check_args("cross_entropy_forward_cpu", rows, V, Vp);
  const double eps = label_smoothing, keep = 1.0 - eps, eps_v = eps / static_cast<double>(V);
  // Validate every target first (the error names the first bad row, and no
  // part of the loop below throws).
  for (int64_t r = 0; r < rows; ++r)
    if (targets[r] != ignore_index) check_target("cross_entropy_forward_cpu", r, targets[r], V);
  parallel_for(rows, rows_per_part(V), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* lr = logits + r * Vp;  // (Vp,)
      const int32_t t = targets[r];
      if (t == ignore_index) {
        losses[r] = 0;
        continue;
      }
      double m, s, sx = 0;
      if constexpr (std::is_same_v<T, float>) {
        const float mf = cpu_math::max_lanes(lr, V);
        m = static_cast<double>(mf);
        s = sum_exp_f32(lr, V, mf);
        if (eps != 0.0) sx = cpu_math::sum_lanes(lr, V);
      } else {
        row_logsumexp(lr, V, &m, &s);
        if (eps != 0.0)
          for (int64_t c = 0; c < V; ++c) sx += static_cast<double>(lr[c]);
      }
      losses[r] = static_cast<T>(m + std::log(s) - keep * static_cast<double>(lr[t]) - eps_v * sx);
    }
  });
}

template void cross_entropy_forward_backward_cpu<float>(float*, float*, const int32_t*, int64_t, int64_t, int64_t,
                                                        float, int32_t, float);
template void cross_entropy_forward_backward_cpu<double>(double*, double*, const int32_t*, int64_t, int64_t, int64_t,
                                                         float, int32_t, float);
template void cross_entropy_forward_cpu<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                               int32_t, float);
template void cross_entropy_forward_cpu<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                                int32_t, float);

}  // namespace kiln
