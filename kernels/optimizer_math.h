// Per-element optimizer updates and argument checks shared by the CPU
// references (T = float, double) and the CUDA kernels (T = float), so both
// backends run the same formulas (see optimizer.h for the rules).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/optimizer.h"
#include "runtime/error.h"

#if defined(__CUDACC__)
#define KILN_OPT_HD __host__ __device__ __forceinline__
#else
#define KILN_OPT_HD inline
#endif

namespace kiln {

/// AdamW constants for one step; the bias corrections are computed once on
/// the host in double and handed to the element loop as T.
template <typename T>
struct AdamWUpdate {
  T lr, beta1, beta2, eps;
  T step_size;  ///< lr / (1 - β1^t)
  T bc2_sqrt;   ///< sqrt(1 - β2^t)

  static AdamWUpdate make(const AdamWConfig& c) {
    AdamWUpdate u{T(c.lr), T(c.beta1), T(c.beta2), T(c.eps), T(0), T(0)};
    u.set_step(c.step);
    return u;
  }

  /// Bias corrections for step t, in double (on the device too, when the
  /// step count lives there: AdamWConfig::step_counter).
  KILN_OPT_HD void set_step(int64_t t) {
    const double bc1 = 1.0 - pow(static_cast<double>(beta1), static_cast<double>(t));
    const double bc2 = 1.0 - pow(static_cast<double>(beta2), static_cast<double>(t));
    step_size = T(static_cast<double>(lr) / bc1);
    bc2_sqrt = T(sqrt(bc2));
  }

  KILN_OPT_HD void operator()(T& p, T g, T& m, T& v, T wd) const {
    p = p * (T(1) - lr * wd);
    m = m + (T(1) - beta1) * (g - m);
    v = v * beta2 + (T(1) - beta2) * g * g;
    const T denom = std::sqrt(v) / bc2_sqrt + eps;
    p = p - step_size * (m / denom);
  }
};

/// SGD constants for one step.
template <typename T>
struct SgdUpdate {
  T lr, momentum;
  bool nesterov;

  static SgdUpdate make(const SgdConfig& c) { return {T(c.lr), T(c.momentum), c.nesterov}; }
  /// SGD has no step-dependent constants.
  KILN_OPT_HD void set_step(int64_t) {}

  /// `v` is unused; `m` is the momentum buffer (ignored when momentum is 0).
  KILN_OPT_HD void operator()(T& p, T g, T& m, T& /*v*/, T wd) const {
    g = g + wd * p;
    if (momentum != T(0)) {
      m = momentum * m + g;
      g = nesterov ? g + momentum * m : m;
    }
    p = p - lr * g;
  }
};

/// The gradient multiplier: grad_scale · *grad_scale_ptr (fp32, read where
/// the pointer lives).
KILN_OPT_HD float combined_grad_scale(float grad_scale, const float* grad_scale_ptr) {
  return grad_scale_ptr ? grad_scale * *grad_scale_ptr : grad_scale;
}

/// Whether a step is skipped: the flag is set and nonzero (read where it lives).
KILN_OPT_HD bool skip_step(const float* skip) { return skip != nullptr && *skip != 0.0f; }

/// Argument checks shared by both backends; `needs_m` / `needs_v` say which
/// state buffers the update reads.
template <typename T>
inline void check_optimizer_tensors(const OptimizerTensorT<T>* tensors, int64_t count, bool needs_m, bool needs_v,
                                    const char* who) {
  KILN_CHECK(count >= 0 && (count == 0 || tensors != nullptr), who << ": bad tensor list (count " << count << ")");
  for (int64_t k = 0; k < count; ++k) {
    const OptimizerTensorT<T>& t = tensors[k];
    KILN_CHECK(t.n >= 0, who << ": tensor " << k << " has negative size " << t.n);
    if (t.n == 0) continue;
    KILN_CHECK(t.param && t.grad, who << ": tensor " << k << " has a null param or grad");
    KILN_CHECK(!needs_m || t.m, who << ": tensor " << k << " needs a first-moment/momentum buffer (m is null)");
    KILN_CHECK(!needs_v || t.v, who << ": tensor " << k << " needs a second-moment buffer (v is null)");
  }
}

inline void check_adamw_config(const AdamWConfig& c, const char* who) {
  KILN_CHECK(c.step >= 1, who << ": step must be >= 1 (got " << c.step << ")");
  KILN_CHECK(c.beta1 >= 0.0f && c.beta1 < 1.0f && c.beta2 >= 0.0f && c.beta2 < 1.0f,
             who << ": betas must be in [0, 1) (got " << c.beta1 << ", " << c.beta2 << ")");
  KILN_CHECK(c.eps > 0.0f, who << ": eps must be > 0 (got " << c.eps << ")");
}

inline void check_sgd_config(const SgdConfig& c, const char* who) {
  KILN_CHECK(c.momentum >= 0.0f, who << ": momentum must be >= 0 (got " << c.momentum << ")");
  KILN_CHECK(!c.nesterov || c.momentum > 0.0f, who << ": Nesterov needs momentum > 0");
}

}  // namespace kiln
