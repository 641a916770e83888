// Array forms of kernels/cpu_math.h, one clone per ISA (KILN_CPU_CLONES).
#include "kernels/cpu_math.h"

namespace kiln::cpu_math {

KILN_CPU_CLONES void exp_f32_array(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = exp_f32(x[i]);
}

KILN_CPU_CLONES void tanh_f32_array(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = tanh_f32(x[i]);
}

KILN_CPU_CLONES void logistic_f32_array(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = logistic_f32(x[i]);
}

}  // namespace kiln::cpu_math
