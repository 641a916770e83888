// CPU reference for kernels/cast.h: every pair of float, double, bf16, int32,
// uint16 and uint8.
#include <cmath>
#include <limits>

#include "kernels/cast.h"
#include "runtime/parallel.h"

namespace kiln {
namespace {

// Read any element as double (exact for every source type).
template <typename T> inline double load(T x) { return static_cast<double>(x); }
template <> inline double load<bf16>(bf16 x) { return static_cast<double>(bf16_to_float(x)); }

template <typename I> inline I to_int(double v) {
  if (std::isnan(v)) return 0;
  const double t = std::trunc(v);
  if (t <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (t >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return static_cast<I>(t);
}

template <typename T> struct Convert;
template <> struct Convert<float> {
  template <typename S> static float from(S x) { return static_cast<float>(load(x)); }
};
template <> struct Convert<double> {
  template <typename S> static double from(S x) { return load(x); }
};
template <> struct Convert<bf16> {
  // Through float: exact for float, bf16, u16 and u8 sources; int32 and double
  // round twice (to float, then to bf16), which the GPU does the same way.
  template <typename S> static bf16 from(S x) { return float_to_bf16(static_cast<float>(load(x))); }
};
template <> struct Convert<int32_t> {
  template <typename S> static int32_t from(S x) { return to_int<int32_t>(load(x)); }
};
template <> struct Convert<uint16_t> {
  template <typename S> static uint16_t from(S x) { return to_int<uint16_t>(load(x)); }
};
template <> struct Convert<uint8_t> {
  template <typename S> static uint8_t from(S x) { return to_int<uint8_t>(load(x)); }
};

}  // namespace

template <typename Src, typename Dst>
void cast_forward_cpu(const Src* x, Dst* y, int64_t n) {
  // Elementwise, so threading on the CPU pool cannot change a result.
  parallel_for(n, int64_t{1} << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = Convert<Dst>::from(x[i]);
  });
}

#define KILN_CAST_DST(S)                                                \
  template void cast_forward_cpu<S, float>(const S*, float*, int64_t);   \
  template void cast_forward_cpu<S, double>(const S*, double*, int64_t); \
  template void cast_forward_cpu<S, bf16>(const S*, bf16*, int64_t);     \
  template void cast_forward_cpu<S, int32_t>(const S*, int32_t*, int64_t); \
  template void cast_forward_cpu<S, uint16_t>(const S*, uint16_t*, int64_t); \
  template void cast_forward_cpu<S, uint8_t>(const S*, uint8_t*, int64_t);
KILN_CAST_DST(float)
KILN_CAST_DST(double)
KILN_CAST_DST(bf16)
KILN_CAST_DST(int32_t)
KILN_CAST_DST(uint16_t)
KILN_CAST_DST(uint8_t)
#undef KILN_CAST_DST

}  // namespace kiln
