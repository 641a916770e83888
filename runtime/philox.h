// Philox4x32-10 counter-based RNG (Salmon et al., SC'11), usable from host and
// device code. A (seed, counter) pair maps to 4 random 32-bit words with no
// state, so element i of a tensor filled with (seed, offset) is the same
// number on the CPU and the GPU, whatever the launch shape.
//
// Element i uses counter = offset + i / 4 and word i % 4.
// uniform: (word >> 8) * 2^-24, in [0, 1).
// normal: Box-Muller on two uniforms drawn from counter (offset + i/2) words
//         (2·(i%2), 2·(i%2)+1), with log and sincos computed by kiln's own
//         fmaf-only polynomials so host and device round identically.
// A fill of n elements consumes ceil(n/4) counters (uniform) or ceil(n/2)
// (normal); the next draw starts at offset + that many.
#pragma once

#include <cmath>
#include <cstdint>

// Fast-math would replace the IEEE division and sqrt below with approximations
// on the device only, and CPU and GPU streams would drift apart.
#if defined(__CUDACC__) && defined(__USE_FAST_MATH__)
#error "runtime/philox.h must not be compiled with --use_fast_math"
#endif

#if defined(__CUDACC__)
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif

namespace kiln {

struct Philox4 {
  uint32_t v[4];
};

KILN_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

/// The full Philox4x32-10 bijection: a 128-bit counter and a 64-bit key to
/// 128 random bits (Random123's philox4x32_10; its known-answer vectors are
/// checked in tests/runtime/rng_test.cpp).
KILN_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;  // the key bump after the last round is unused, as in Random123
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

/// The 4 words for (seed, counter): counter in the low 64 bits, seed as key.
KILN_HD Philox4 philox4x32(uint64_t seed, uint64_t counter) {
  Philox4 ctr{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

/// One random word to a uniform in [0, 1): the top 24 bits times 2^-24, an
/// exact conversion on every device.
KILN_HD float philox_word_to_uniform(uint32_t w) {
  return static_cast<float>(w >> 8) * (1.0f / 16777216.0f);
}

/// Uniform in [0, 1) with 24 random bits (exactly representable, so the same
/// on every device).
KILN_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32(seed, offset + i / 4);
  return philox_word_to_uniform(r.v[i % 4]);
}

// --- deterministic math for Box-Muller ----------------------------------
// Only fmaf and single operations whose results feed no add are used, so no
// compiler can contract differently on host and device (the host is built with
// -ffp-contract=off; on the device every product-plus-sum here is an explicit
// fmaf).

/// ln(x) for x in (0, 1]: x = m·2^e with m in [sqrt(1/2), sqrt(2)), then
/// log(m) = 2·atanh(s), s = (m-1)/(m+1), as an odd series to s^13.
KILN_HD float kiln_logf(float x) {
  int e;
  float m = std::frexp(x, &e);  // m in [0.5, 1)
  if (m < 0.70710678f) { m = m * 2.0f; e -= 1; }
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 2.0f / 13.0f;
  p = fmaf(p, s2, 2.0f / 11.0f);
  p = fmaf(p, s2, 2.0f / 9.0f);
  p = fmaf(p, s2, 2.0f / 7.0f);
  p = fmaf(p, s2, 2.0f / 5.0f);
  p = fmaf(p, s2, 2.0f / 3.0f);
  p = fmaf(p, s2, 2.0f);
  const float logm = p * s;
  return fmaf(static_cast<float>(e), 0.69314718056f, logm);
}

/// sin and cos of 2π·u for u in [0, 1): reduce to a quarter turn, then
/// Taylor polynomials on [-π/4, π/4].
KILN_HD void kiln_sincos_2pi(float u, float* s, float* c) {
  // q = nearest quarter turn, r in [-1/8, 1/8] turns. u·4 is exact, so the
  // fmaf rounds once, as a separate multiply and add would.
  const float q = std::floor(fmaf(u, 4.0f, 0.5f));
  const float r = fmaf(q, -0.25f, u);
  const float x = r * 6.28318530718f;
  const float x2 = x * x;
  float sp = -1.0f / 39916800.0f;
  sp = fmaf(sp, x2, 1.0f / 362880.0f);
  sp = fmaf(sp, x2, -1.0f / 5040.0f);
  sp = fmaf(sp, x2, 1.0f / 120.0f);
  sp = fmaf(sp, x2, -1.0f / 6.0f);
  sp = fmaf(sp, x2, 1.0f);
  const float sr = sp * x;
  float cp = 1.0f / 479001600.0f;
  cp = fmaf(cp, x2, -1.0f / 3628800.0f);
  cp = fmaf(cp, x2, 1.0f / 40320.0f);
  cp = fmaf(cp, x2, -1.0f / 720.0f);
  cp = fmaf(cp, x2, 1.0f / 24.0f);
  cp = fmaf(cp, x2, -0.5f);
  const float cr = fmaf(cp, x2, 1.0f);
  switch (static_cast<int>(q) & 3) {
    case 0: *s = sr; *c = cr; break;
    case 1: *s = cr; *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
  }
}

/// Box-Muller on two random words: sqrt(-2 ln u1) · cos(2π u2), u1 in (0, 1]
/// (never log(0)), u2 in [0, 1). Only the cosine branch is used, so a
/// counter's 4 words give 2 normals.
KILN_HD float philox_words_to_normal(uint32_t w1, uint32_t w2) {
  const float u1 = static_cast<float>((w1 >> 8) + 1u) * (1.0f / 16777216.0f);
  const float u2 = philox_word_to_uniform(w2);
  const float rad = std::sqrt(-2.0f * kiln_logf(u1));
  float s, c;
  kiln_sincos_2pi(u2, &s, &c);
  return rad * c;
}

/// Standard normal sample for element i of the stream (seed, offset).
KILN_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32(seed, offset + i / 2);
  const int w = static_cast<int>(i % 2) * 2;
  return philox_words_to_normal(r.v[w], r.v[w + 1]);
}

}  // namespace kiln
