// Scalar activation formulas shared by the CPU references (T = float, double)
// and the CUDA kernels (T = float, fp32 math for bf16 storage), so the two
// backends cannot drift apart.
#pragma once

#include <cmath>

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

}  // namespace kiln
