// CPU references for the fused softmax cross-entropy (see cross_entropy.h):
// one row at a time, logsumexp and sums in double whatever T is.
#include <cmath>
#include <limits>

#include "kernels/cross_entropy.h"
#include "runtime/error.h"

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

}  // namespace

template <typename T>
void cross_entropy_forward_backward_cpu(T* logits, T* losses, const int32_t* targets, int64_t rows, int64_t V,
                                        int64_t Vp, float scale, int32_t ignore_index, float label_smoothing) {
  check_args("cross_entropy_forward_backward_cpu", rows, V, Vp);
  const double eps = label_smoothing, keep = 1.0 - eps, eps_v = eps / static_cast<double>(V);
  // Validate every target before touching any logits: bad input must not corrupt.
  for (int64_t r = 0; r < rows; ++r)
    if (targets[r] != ignore_index) check_target("cross_entropy_forward_backward_cpu", r, targets[r], V);
  for (int64_t r = 0; r < rows; ++r) {
    T* lr = logits + r * Vp;  // (Vp,): logits in, dlogits out
    const int32_t t = targets[r];
    if (t == ignore_index) {
      losses[r] = 0;
      for (int64_t c = 0; c < Vp; ++c) lr[c] = 0;
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
}

template <typename T>
void cross_entropy_forward_cpu(T* losses, const T* logits, const int32_t* targets, int64_t rows, int64_t V,
                               int64_t Vp, int32_t ignore_index, float label_smoothing) {
  check_args("cross_entropy_forward_cpu", rows, V, Vp);
  const double eps = label_smoothing, keep = 1.0 - eps, eps_v = eps / static_cast<double>(V);
  for (int64_t r = 0; r < rows; ++r) {
    const T* lr = logits + r * Vp;  // (Vp,)
    const int32_t t = targets[r];
    if (t == ignore_index) {
      losses[r] = 0;
      continue;
    }
    check_target("cross_entropy_forward_cpu", r, t, V);
    double m, s;
    row_logsumexp(lr, V, &m, &s);
    double sx = 0;
    if (eps != 0.0)
      for (int64_t c = 0; c < V; ++c) sx += static_cast<double>(lr[c]);
    losses[r] = static_cast<T>(m + std::log(s) - keep * static_cast<double>(lr[t]) - eps_v * sx);
  }
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
