// CPU references for pooling over NHWC images (see pool.h). Loops run with
// the channel innermost (contiguous), so each window step is a vector
// operation over C. Sums are in T and in the CUDA kernels' order (window
// order forward, output order backward), so fp32 results equal the GPU's bit
// for bit; T = double serves the finite-difference checks.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/pool.h"
#include "kernels/pool_math.h"
#include "runtime/error.h"

namespace kiln {

void check_pool_shape(const PoolShape& s, const char* op) {
  KILN_CHECK(s.n >= 0 && s.h >= 0 && s.w >= 0 && s.c >= 0,
             op << ": input (N, H, W, C) = (" << s.n << ", " << s.h << ", " << s.w << ", " << s.c
                << ") has a negative size");
  KILN_CHECK(s.kh >= 1 && s.kw >= 1, op << ": window " << s.kh << "x" << s.kw << " must be at least 1x1");
  KILN_CHECK(s.sh >= 1 && s.sw >= 1, op << ": stride " << s.sh << "x" << s.sw << " must be >= 1");
  KILN_CHECK(s.ph >= 0 && s.pw >= 0 && 2 * s.ph <= s.kh && 2 * s.pw <= s.kw,
             op << ": padding " << s.ph << "x" << s.pw << " must be between 0 and half the " << s.kh << "x" << s.kw
                << " window");
  KILN_CHECK(s.out_h() >= 1 && s.out_w() >= 1 && s.h + 2 * s.ph >= s.kh && s.w + 2 * s.pw >= s.kw,
             op << ": the " << s.kh << "x" << s.kw << " window does not fit the " << s.h << "x" << s.w
                << " image padded by " << s.ph << "x" << s.pw);
  KILN_CHECK(s.h * s.w <= std::numeric_limits<int32_t>::max(),
             op << ": " << s.h << "x" << s.w << " pixels exceed the int32 argmax");
}

template <typename T>
void maxpool2d_forward_cpu(T* y, int32_t* argmax, const T* x, const PoolShape& s) {
  check_pool_shape(s, "maxpool2d_forward_cpu");
  const int64_t P = s.out_h(), Q = s.out_w(), C = s.c;
  std::vector<int32_t> arg_buf(argmax ? 0 : static_cast<size_t>(C));
  for (int64_t n = 0; n < s.n; ++n) {
    const T* xn = x + n * s.h * s.w * C;  // (H, W, C)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t o = ((n * P + p) * Q + q) * C;
        T* __restrict best = y + o;
        int32_t* __restrict arg = argmax ? argmax + o : arg_buf.data();
        bool first = true;
        for (int64_t r = 0; r < s.kh; ++r) {
          const int64_t ih = p * s.sh - s.ph + r;
          if (ih < 0 || ih >= s.h) continue;
          for (int64_t t = 0; t < s.kw; ++t) {
            const int64_t iw = q * s.sw - s.pw + t;
            if (iw < 0 || iw >= s.w) continue;
            const T* __restrict px = xn + (ih * s.w + iw) * C;
            const int32_t idx = static_cast<int32_t>(ih * s.w + iw);
            if (first) {  // the window's first pixel seeds the max
              for (int64_t c = 0; c < C; ++c) {
                best[c] = px[c];
                arg[c] = idx;
              }
              first = false;
              continue;
            }
            // Later pixels win when larger or NaN (PyTorch's rule: v != v is NaN).
            for (int64_t c = 0; c < C; ++c) {
              const T v = px[c];
              const bool take = v > best[c] || v != v;
              best[c] = take ? v : best[c];
              arg[c] = take ? idx : arg[c];
            }
          }
        }
      }
  }
}

// The backwards scatter each output's gradient into its window in output
// order (p, q): every dx element then receives its terms in the same order
// as the CUDA gather, starting from 0, so float results match it bit for bit.
template <typename T>
void maxpool2d_backward_cpu(T* dx, const T* dy, const int32_t* argmax, const PoolShape& s) {
  check_pool_shape(s, "maxpool2d_backward_cpu");
  const int64_t P = s.out_h(), Q = s.out_w(), C = s.c, plane = s.h * s.w * C;
  std::fill(dx, dx + s.x_numel(), T(0));
  for (int64_t n = 0; n < s.n; ++n) {
    T* __restrict dxn = dx + n * plane;
    for (int64_t pq = 0; pq < P * Q; ++pq) {
      const int64_t o = (n * P * Q + pq) * C;
      const int32_t* __restrict arg = argmax + o;
      const T* __restrict g = dy + o;
      for (int64_t c = 0; c < C; ++c) dxn[arg[c] * C + c] += g[c];
    }
  }
}

template <typename T>
void avgpool2d_forward_cpu(T* y, const T* x, const PoolShape& s, bool count_include_pad) {
  check_pool_shape(s, "avgpool2d_forward_cpu");
  const int64_t P = s.out_h(), Q = s.out_w(), C = s.c;
  for (int64_t n = 0; n < s.n; ++n) {
    const T* xn = x + n * s.h * s.w * C;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) {
        T* __restrict acc = y + ((n * P + p) * Q + q) * C;
        std::fill(acc, acc + C, T(0));
        for (int64_t r = 0; r < s.kh; ++r) {
          const int64_t ih = p * s.sh - s.ph + r;
          if (ih < 0 || ih >= s.h) continue;
          for (int64_t t = 0; t < s.kw; ++t) {
            const int64_t iw = q * s.sw - s.pw + t;
            if (iw < 0 || iw >= s.w) continue;
            const T* __restrict px = xn + (ih * s.w + iw) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += px[c];
          }
        }
        const T div = static_cast<T>(
            pool::avg_divisor(p, q, s.h, s.w, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, count_include_pad));
        for (int64_t c = 0; c < C; ++c) acc[c] = acc[c] / div;
      }
  }
}

template <typename T>
void avgpool2d_backward_cpu(T* dx, const T* dy, const PoolShape& s, bool count_include_pad) {
  check_pool_shape(s, "avgpool2d_backward_cpu");
  const int64_t P = s.out_h(), Q = s.out_w(), C = s.c;
  std::fill(dx, dx + s.x_numel(), T(0));
  for (int64_t n = 0; n < s.n; ++n) {
    T* dxn = dx + n * s.h * s.w * C;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) {
        const T div = static_cast<T>(
            pool::avg_divisor(p, q, s.h, s.w, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, count_include_pad));
        const T* __restrict g = dy + ((n * P + p) * Q + q) * C;
        for (int64_t r = 0; r < s.kh; ++r) {
          const int64_t ih = p * s.sh - s.ph + r;
          if (ih < 0 || ih >= s.h) continue;
          for (int64_t t = 0; t < s.kw; ++t) {
            const int64_t iw = q * s.sw - s.pw + t;
            if (iw < 0 || iw >= s.w) continue;
            T* __restrict d = dxn + (ih * s.w + iw) * C;
            for (int64_t c = 0; c < C; ++c) d[c] += g[c] / div;
          }
        }
      }
  }
}

template <typename T>
void global_avgpool_forward_cpu(T* y, const T* x, int64_t n, int64_t hw, int64_t c) {
  KILN_CHECK(n >= 0 && hw >= 1 && c >= 0, "global_avgpool_forward_cpu: bad shape (" << n << ", " << hw << ", " << c << ")");
  const T div = static_cast<T>(hw);
  for (int64_t i = 0; i < n; ++i) {
    T* __restrict acc = y + i * c;
    std::fill(acc, acc + c, T(0));
    for (int64_t p = 0; p < hw; ++p) {
      const T* __restrict px = x + (i * hw + p) * c;
      for (int64_t k = 0; k < c; ++k) acc[k] += px[k];
    }
    for (int64_t k = 0; k < c; ++k) acc[k] = acc[k] / div;
  }
}

template <typename T>
void global_avgpool_backward_cpu(T* dx, const T* dy, int64_t n, int64_t hw, int64_t c) {
  KILN_CHECK(n >= 0 && hw >= 1 && c >= 0, "global_avgpool_backward_cpu: bad shape (" << n << ", " << hw << ", " << c << ")");
  const T div = static_cast<T>(hw);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t k = 0; k < c; ++k) dx[(i * hw + p) * c + k] = dy[i * c + k] / div;
}

#define KILN_POOL_CPU(T)                                                                            \
  template void maxpool2d_forward_cpu<T>(T*, int32_t*, const T*, const PoolShape&);                \
  template void maxpool2d_backward_cpu<T>(T*, const T*, const int32_t*, const PoolShape&);         \
  template void avgpool2d_forward_cpu<T>(T*, const T*, const PoolShape&, bool);                    \
  template void avgpool2d_backward_cpu<T>(T*, const T*, const PoolShape&, bool);                   \
  template void global_avgpool_forward_cpu<T>(T*, const T*, int64_t, int64_t, int64_t);           \
  template void global_avgpool_backward_cpu<T>(T*, const T*, int64_t, int64_t, int64_t);
KILN_POOL_CPU(float)
KILN_POOL_CPU(double)
#undef KILN_POOL_CPU

}  // namespace kiln
