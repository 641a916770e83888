// CPU references for softmax (see softmax.h): one row at a time, sums in
// double whatever T is.
#include <cmath>
#include <limits>

#include "kernels/softmax.h"
#include "runtime/error.h"

namespace kiln {

template <typename T>
void softmax_forward_cpu(T* y, const T* x, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "softmax_forward_cpu: bad shape (" << rows << ", " << C << ")");
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;  // (C,)
    T* yr = y + r * C;
    double m = -std::numeric_limits<double>::infinity();
    bool nan = false;
    for (int64_t c = 0; c < C; ++c) {
      const double v = static_cast<double>(xr[c]);
      nan = nan || std::isnan(v);
      if (v > m) m = v;
    }
    if (nan) {
      for (int64_t c = 0; c < C; ++c) yr[c] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    // A fully masked row (all -inf) has no mass: y = 0, not exp(-inf + inf) = NaN.
    const double shift = std::isinf(m) && m < 0 ? 0.0 : m;
    // One exp per element: y holds exp(x - max) until the sum is known (y may alias x).
    double s = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double e = std::exp(static_cast<double>(xr[c]) - shift);
      s += e;
      yr[c] = static_cast<T>(e);
    }
    const double inv = s != 0 ? 1.0 / s : 0.0;  // s is NaN for a row holding +inf: stays NaN
    for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<T>(static_cast<double>(yr[c]) * inv);
  }
}

template <typename T>
void softmax_backward_cpu(T* dx, const T* dy, const T* y, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "softmax_backward_cpu: bad shape (" << rows << ", " << C << ")");
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;  // (C,)
    const T* yr = y + r * C;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * static_cast<double>(yr[c]);
    for (int64_t c = 0; c < C; ++c)
      dx[r * C + c] = static_cast<T>(static_cast<double>(yr[c]) * (static_cast<double>(dyr[c]) - dot));
  }
}

template void softmax_forward_cpu<float>(float*, const float*, int64_t, int64_t);
template void softmax_forward_cpu<double>(double*, const double*, int64_t, int64_t);
template void softmax_backward_cpu<float>(float*, const float*, const float*, int64_t, int64_t);
template void softmax_backward_cpu<double>(double*, const double*, const double*, int64_t, int64_t);

}  // namespace kiln
