// CPU references for softmax (see softmax.h): one row at a time, sums in
// double whatever T is, rows spread over the CPU pool (runtime/parallel.h;
// a row belongs to one part, so results do not depend on the thread count).
// The float rows take kernels/cpu_math.h's vectorized exp and fixed-order
// lane sums, compiled per ISA; double keeps std::exp and running sums.
#include <cmath>
#include <limits>

#include "kernels/cpu_math.h"
#include "kernels/softmax.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

// Elements per part below which another thread does not pay (~10 µs).
constexpr int64_t kPerPart = int64_t{1} << 13;

int64_t rows_per_part(int64_t C) { return std::max<int64_t>(1, kPerPart / std::max<int64_t>(C, 1)); }

KILN_CPU_CLONES void softmax_rows_f32(float* y, const float* x, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;  // (C,)
    float* yr = y + r * C;
    bool nan = false;
    const float m = cpu_math::max_lanes(xr, C, &nan);
    if (nan) {
      for (int64_t c = 0; c < C; ++c) yr[c] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    // A fully masked row (all -inf) has no mass: y = 0, not exp(-inf + inf) = NaN.
    const float shift = m == -std::numeric_limits<float>::infinity() ? 0.0f : m;
    // y holds exp(x - max) until the sum is known (y may alias x).
    for (int64_t c = 0; c < C; ++c) yr[c] = cpu_math::exp_f32(xr[c] - shift);
    const double s = cpu_math::sum_lanes(yr, C);
    const double inv = s != 0 ? 1.0 / s : 0.0;  // s is NaN for a row holding +inf: stays NaN
    for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>(static_cast<double>(yr[c]) * inv);
  }
}

KILN_CPU_CLONES void softmax_backward_rows_f32(float* dx, const float* dy, const float* y, int64_t r0, int64_t r1,
                                               int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* dyr = dy + r * C;  // (C,)
    const float* yr = y + r * C;
    const double dot = cpu_math::dot_lanes(dyr, yr, C);
    float* dxr = dx + r * C;
    for (int64_t c = 0; c < C; ++c)
      dxr[c] = static_cast<float>(static_cast<double>(yr[c]) * (static_cast<double>(dyr[c]) - dot));
  }
}

void softmax_rows_f64(double* y, const double* x, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const double* xr = x + r * C;  // (C,)
    double* yr = y + r * C;
    double m = -std::numeric_limits<double>::infinity();
    bool nan = false;
    for (int64_t c = 0; c < C; ++c) {
      nan = nan || std::isnan(xr[c]);
      if (xr[c] > m) m = xr[c];
    }
    if (nan) {
      for (int64_t c = 0; c < C; ++c) yr[c] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    const double shift = std::isinf(m) && m < 0 ? 0.0 : m;
    double s = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double e = std::exp(xr[c] - shift);
      s += e;
      yr[c] = e;
    }
    const double inv = s != 0 ? 1.0 / s : 0.0;
    for (int64_t c = 0; c < C; ++c) yr[c] = yr[c] * inv;
  }
}

void softmax_backward_rows_f64(double* dx, const double* dy, const double* y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const double* dyr = dy + r * C;  // (C,)
    const double* yr = y + r * C;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += dyr[c] * yr[c];
    for (int64_t c = 0; c < C; ++c) dx[r * C + c] = yr[c] * (dyr[c] - dot);
  }
}

}  // namespace

template <typename T>
void softmax_forward_cpu(T* y, const T* x, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "softmax_forward_cpu: bad shape (" << rows << ", " << C << ")");
  parallel_for(rows, rows_per_part(C), [&](int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<T, float>) softmax_rows_f32(y, x, r0, r1, C);
    else softmax_rows_f64(y, x, r0, r1, C);
  });
}

template <typename T>
void softmax_backward_cpu(T* dx, const T* dy, const T* y, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "softmax_backward_cpu: bad shape (" << rows << ", " << C << ")");
  parallel_for(rows, rows_per_part(C), [&](int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<T, float>) softmax_backward_rows_f32(dx, dy, y, r0, r1, C);
    else softmax_backward_rows_f64(dx, dy, y, r0, r1, C);
  });
}

template void softmax_forward_cpu<float>(float*, const float*, int64_t, int64_t);
template void softmax_forward_cpu<double>(double*, const double*, int64_t, int64_t);
template void softmax_backward_cpu<float>(float*, const float*, const float*, int64_t, int64_t);
template void softmax_backward_cpu<double>(double*, const double*, const double*, int64_t, int64_t);

}  // namespace kiln
