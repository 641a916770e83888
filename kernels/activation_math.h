// Scalar activation formulas shared by the CPU references (T = float, double)
// and the CUDA kernels (T = float, fp32 math for bf16 storage), so the two
// backends cannot drift apart.
#pragma once

#include <cmath>

#if !defined(__CUDACC__)
#include "kernels/cpu_math.h"
#endif

#if defined(__CUDACC__)
#define KILN_ACT_HD __host__ __device__ __forceinline__
#else
#define KILN_ACT_HD inline
#endif

namespace kiln {

/// GELU, tanh form (as in GPT-2 and PyTorch's approximate="tanh"):
///   gelu(x) = 0.5·x·(1 + tanh(u)),  u = sqrt(2/π)·(x + 0.044715·x³).
template <typename T>
KILN_ACT_HD T gelu_value(T x) {
  const T k0 = T(0.7978845608028654);  // sqrt(2/π)
  const T k1 = T(0.044715);
  const T u = k0 * (x + k1 * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

/// d gelu / dx = 0.5·(1 + t) + 0.5·x·(1 - t²)·sqrt(2/π)·(1 + 3·0.044715·x²),
/// t = tanh(u).
template <typename T>
KILN_ACT_HD T gelu_grad(T x) {
  const T k0 = T(0.7978845608028654);
  const T k1 = T(0.044715);
  const T u = k0 * (x + k1 * x * x * x);
  const T t = std::tanh(u);
  const T du = k0 * (T(1) + T(3) * k1 * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

/// ReLU and its gradient (the subgradient at 0 is 0, as in PyTorch). NaN
/// passes through the forward, so a diverged run stays visible.
template <typename T>
KILN_ACT_HD T relu_value(T x) {
  return x < T(0) ? T(0) : x;
}
template <typename T>
KILN_ACT_HD T relu_grad_mask(T x, T dy) {
  return x > T(0) ? dy : T(0);
}

#if !defined(__CUDACC__)
// --- CPU fp32 forms (vectorizable; see kernels/cpu_math.h) -------------------
//
// The same function as gelu_value / gelu_grad, evaluated through the
// identity 0.5·(1 + tanh(u)) = 1 / (1 + e^{-2u}) = s: no cancellation in
// 1 + tanh(u) for negative x, and with e = e^{-2|u|} <= 1,
//   s = 1/(1 + e) (u >= 0) or e/(1 + e) (u < 0),   s·(1 - s) = e/(1 + e)²,
//   gelu(x)  = x·s,
//   gelu'(x) = s + 2·x·s·(1 - s)·du,  du = sqrt(2/π)·(1 + 3·0.044715·x²).
// Error (fp32, against the double tanh formula): a few ulp of |x|·s for the
// forward and of the gradient's larger term for the backward. The float CPU
// kernels use these; the double references and the CUDA kernels use the
// tanh forms above.

/// gelu_value<float>, vectorizable.
inline float gelu_value_f32(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  const float au = cpu_math::bits_float(cpu_math::float_bits(u) & 0x7fffffffu);
  const float e = cpu_math::exp_f32(-2.0f * au);
  const float s = cpu_math::select(u < 0.0f, e, 1.0f) / (1.0f + e);
  return x * s;
}

/// gelu_grad<float>, vectorizable.
inline float gelu_grad_f32(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  const float u = k0 * (x + k1 * x * x * x);
  const float au = cpu_math::bits_float(cpu_math::float_bits(u) & 0x7fffffffu);
  const float e = cpu_math::exp_f32(-2.0f * au);
  const float d = 1.0f + e;
  const float s = cpu_math::select(u < 0.0f, e, 1.0f) / d;
  const float du = k0 * (1.0f + 3.0f * k1 * x * x);
  // Saturated (e = 0): the second term is 0, also where du overflows
  // (|x| > 1.8e19 would give 0·inf); 0·x keeps x = ±inf NaN, as in double.
  const float term = cpu_math::select(e == 0.0f, 0.0f * x, 2.0f * x * (e / (d * d)) * du);
  return s + term;
}
#endif

}  // namespace kiln
