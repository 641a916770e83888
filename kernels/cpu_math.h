// Vectorizable float exp, tanh and logistic for the CPU backend's kernels.
//
// glibc's expf/tanhf are scalar calls (about 30% of a GPT training step on
// the CPU went there); these are branch-free inline functions — range
// reduction, a polynomial, exponent bits and selects — so a loop calling
// them over an array is vectorized by GCC for whatever ISA the loop is
// compiled for (SSE2 by default, AVX2 and AVX-512 in the KILN_CPU_CLONES
// versions below) without -ffast-math.
//
// Every operation is a plain IEEE add, multiply or divide in a fixed order,
// with no fused multiply-add (the build has -ffp-contract=off, and no fma()
// is called), so the scalar, SSE2, AVX2 and AVX-512 evaluations of one input
// are bit-identical: a result does not depend on the machine's vector ISA
// (tests/kernels/cpu_math_test.cpp checks it).
//
// Error bounds against double-precision exp/tanh, over every float input
// (checked exhaustively over all 2^32 bit patterns once, and on a dense
// sample in the unit test):
//   exp_f32:      <= 2 ulp for results >= FLT_MIN (normal range); subnormal
//                 results (x < -87.34) within 1 ulp of the subnormal
//                 spacing 2^-149 plus 2 ulp relative. exp(x) = +inf for
//                 x > 88.7228 (the float overflow threshold), 0 for
//                 x < -103.9721 (rounds to 0), exp(-inf) = 0, exp(+inf) = +inf,
//                 NaN in gives NaN out. exp_f32(0) = 1 exactly.
//   tanh_f32:     <= 2 ulp everywhere; tanh(±0) = ±0, tanh(±inf) = ±1,
//                 odd (tanh(-x) = -tanh(x) bit for bit), NaN gives NaN.
//   logistic_f32: 1 / (1 + exp_f32(-x)), <= 3 ulp; 0 for x < -88.72 (where
//                 exp(-x) overflows; the true value is below 3e-39), 1 for
//                 large x, NaN gives NaN.
// (The unit test asserts exp <= 2 ulp, tanh <= 2 ulp, logistic <= 3 ulp.)
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

// Function multiversioning: a CPU kernel loop marked KILN_CPU_CLONES is
// compiled three times (AVX-512F, AVX2, baseline x86-64) and the dynamic
// loader picks the best one the machine supports, so the library runs on any
// x86-64 and uses wide vectors where they exist. The clones compute the same
// bits (see above). Elsewhere (other compilers, other architectures) it is
// empty and the baseline build is used.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    defined(__linux__)
#define KILN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KILN_CPU_CLONES
#endif

namespace kiln::cpu_math {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// c ? a : b through a bit mask, so loops stay branch-free for the
/// vectorizer (under the default -ftrapping-math GCC will not if-convert a
/// float ?: into a vector blend, but it vectorizes this).
inline float select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_float((float_bits(a) & m) | (float_bits(b) & ~m));
}

/// exp(x) in float (error bounds above). Branch-free.
inline float exp_f32(float x) {
  // x = n·ln2 + r, |r| <= ln2/2 (slightly more: n comes from a rounded
  // product), exp(x) = 2^n · exp(r). Clamping keeps n in [-150, 129]; the
  // out-of-range results are selected at the end.
  const float xc = select(x < -104.0f, -104.0f, select(x > 89.0f, 89.0f, x));
  // n = round(x / ln2) by the 1.5·2^23 shifter: j's low mantissa bits hold n.
  const float shifter = 12582912.0f;  // 0x1.8p23
  const float j = xc * 1.44269502f + shifter;
  const float n = j - shifter;
  const int32_t ni = static_cast<int32_t>(float_bits(j) - float_bits(shifter));
  // Cody–Waite: ln2 = ln2_hi + ln2_lo with ln2_hi's 16 leading bits only, so
  // n·ln2_hi is exact for |n| <= 256 and x - n·ln2_hi is exact.
  const float r = (xc - n * 0.693145752f) - n * 1.42860677e-6f;
  // exp(r) = 1 + r + r²·P(r), P a degree-4 fit to (exp(r) - 1 - r)/r² on
  // [-0.348, 0.348] (near-minimax relative error 3e-9 before rounding).
  float p = 1.38141273e-3f;
  p = p * r + 8.36891681e-3f;
  p = p * r + 4.16684076e-2f;
  p = p * r + 1.66665196e-1f;
  p = p * r + 4.99999940e-1f;
  const float y = 1.0f + (r + (r * r) * p);
  // 2^n as two factors 2^n1 · 2^n2 (n1 = floor(n/2)), each a normal float
  // for n in [-150, 129], so results down to the subnormals round once.
  const int32_t n1 = ((ni + 256) >> 1) - 128, n2 = ni - n1;
  const float s1 = bits_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  float out = (y * s1) * s2;
  out = select(x > 88.7228394f, std::numeric_limits<float>::infinity(), out);
  out = select(x < -103.972084f, 0.0f, out);
  return select(x != x, x + x, out);  // NaN stays NaN (quiet)
}

/// tanh(x) in float (error bound above). Branch-free.
inline float tanh_f32(float x) {
  const uint32_t sign = float_bits(x) & 0x80000000u;
  const float ax = bits_float(float_bits(x) & 0x7fffffffu);
  // |x| < 0.625: tanh(x) = x + x³·Q(x²), Q a degree-4 fit in x² (relative
  // error 4e-9 before rounding).
  const float x2 = ax * ax;
  float q = -5.70496824e-3f;
  q = q * x2 + 2.06390731e-2f;
  q = q * x2 + -5.37397116e-2f;
  q = q * x2 + 1.33314416e-1f;
  q = q * x2 + -3.33332807e-1f;
  const float small = ax + ax * (x2 * q);
  // |x| >= 0.625: tanh = 1 - 2/(e^{2|x|} + 1). From 0.625 up the result is
  // >= 0.55, so the subtraction loses at most a bit. Past 9.02 tanh rounds
  // to 1 in float; clamping keeps e finite.
  const float e = exp_f32(2.0f * select(ax > 10.0f, 10.0f, ax));
  const float big = 1.0f - 2.0f / (e + 1.0f);
  const float t = select(ax < 0.625f, small, big);
  const float out = bits_float(float_bits(t) | sign);
  return select(x != x, x + x, out);
}

/// 1 / (1 + e^{-x}) in float (error bound above). Branch-free.
inline float logistic_f32(float x) {
  // e = e^{-|x|} <= 1 never overflows: 1/(1 + e) for x >= 0, e/(1 + e) below,
  // which keeps full relative accuracy as the result goes subnormal.
  const float ax = bits_float(float_bits(x) & 0x7fffffffu);
  const float e = exp_f32(-ax);
  const float d = 1.0f + e;
  const float out = select(x < 0.0f, e, 1.0f) / d;
  return select(x != x, x + x, out);
}

// --- Fixed-order reductions ---------------------------------------------------
//
// Strict IEEE order forbids the compiler from vectorizing a running sum. These
// keep kLanes partial sums (element i goes to lane i mod kLanes, the tail to
// the total), combined in a fixed tree: an order that depends on n alone, so
// the result is the same on every ISA clone and every thread count, and the
// lane loop vectorizes.

constexpr int kLanes = 8;

/// Σ x[i] in double.
template <typename T>
inline double sum_lanes(const T* x, int64_t n) {
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[i + l]);
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += static_cast<double>(x[i]);
  return s;
}

/// Σ a[i]·b[i] in double.
template <typename T>
inline double dot_lanes(const T* a, const T* b, int64_t n) {
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(a[i + l]) * static_cast<double>(b[i + l]);
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

/// max_i x[i] ignoring NaN (as std::fmax does); -inf for n == 0 or all NaN.
/// *any_nan (optional) is set when some x[i] is NaN.
inline float max_lanes(const float* x, int64_t n, bool* any_nan = nullptr) {
  constexpr int L = 16;
  float m[L];
  uint32_t nan[L];
  for (int l = 0; l < L; ++l) {
    m[l] = -std::numeric_limits<float>::infinity();
    nan[l] = 0;
  }
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) {
      const float v = x[i + l];
      m[l] = select(v > m[l], v, m[l]);
      nan[l] |= static_cast<uint32_t>(v != v);
    }
  float r = -std::numeric_limits<float>::infinity();
  uint32_t any = 0;
  for (int l = 0; l < L; ++l) {
    r = select(m[l] > r, m[l], r);
    any |= nan[l];
  }
  for (; i < n; ++i) {
    r = select(x[i] > r, x[i], r);
    any |= static_cast<uint32_t>(x[i] != x[i]);
  }
  if (any_nan) *any_nan = any != 0;
  return r;
}

/// out[i] = exp_f32(x[i]), i in [0, n) (out may alias x).
void exp_f32_array(float* out, const float* x, int64_t n);
/// out[i] = tanh_f32(x[i]).
void tanh_f32_array(float* out, const float* x, int64_t n);
/// out[i] = logistic_f32(x[i]).
void logistic_f32_array(float* out, const float* x, int64_t n);

}  // namespace kiln::cpu_math
