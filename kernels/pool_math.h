// Index arithmetic shared by the pooling kernels and their CPU references
// (kernels/pool.h), host and device, so both backends visit the same windows
// in the same order.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KILN_POOL_HD __host__ __device__ __forceinline__
#else
#define KILN_POOL_HD inline
#endif

namespace kiln::pool {

/// Output rows [*lo, *hi] whose window (start p·stride − pad, length k)
/// contains input row i, for `out` output rows. Empty when *lo > *hi.
KILN_POOL_HD void windows_containing(int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t out, int64_t* lo,
                                     int64_t* hi) {
  const int64_t a = i + pad;  // position in the padded image
  *lo = a < k ? 0 : (a - k) / stride + 1;
  int64_t h = a / stride;
  *hi = h < out - 1 ? h : out - 1;
}

/// Divisor of average-pool window (p, q), as PyTorch computes it: the window
/// clipped to the padded image (count_include_pad) or to the image.
KILN_POOL_HD int64_t avg_divisor(int64_t p, int64_t q, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                                 int64_t sw, int64_t ph, int64_t pw, bool count_include_pad) {
  int64_t h0 = p * sh - ph, w0 = q * sw - pw;
  int64_t h1 = h0 + kh < h + ph ? h0 + kh : h + ph;
  int64_t w1 = w0 + kw < w + pw ? w0 + kw : w + pw;
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < h ? h1 : h;
  w1 = w1 < w ? w1 : w;
  return (h1 - h0) * (w1 - w0);
}

}  // namespace kiln::pool

#undef KILN_POOL_HD
