// CPU reference for kernels/norm.h (T = float, double).
#include <algorithm>
#include <cmath>

#include "kernels/norm.h"
#include "runtime/error.h"

namespace kiln {

template <typename T>
T global_norm_cpu(const NormTensorT<T>* tensors, int64_t count) {
  KILN_CHECK(count >= 0 && (count == 0 || tensors != nullptr), "global_norm_cpu: bad tensor list (count " << count << ")");
  double sum = 0.0;
  for (int64_t k = 0; k < count; ++k) {
    KILN_CHECK(tensors[k].n >= 0 && (tensors[k].n == 0 || tensors[k].data != nullptr),
               "global_norm_cpu: tensor " << k << " is null or has negative size " << tensors[k].n);
    for (int64_t i = 0; i < tensors[k].n; ++i) {
      const double x = static_cast<double>(tensors[k].data[i]);
      sum += x * x;
    }
  }
  return static_cast<T>(std::sqrt(sum));
}

template <typename T>
void global_norm_clip_cpu(T* norm, T* scale, T* nonfinite, const NormTensorT<T>* tensors, int64_t count,
                          double max_norm) {
  KILN_CHECK(norm != nullptr, "global_norm_clip_cpu: null norm");
  const T r = global_norm_cpu<T>(tensors, count);
  *norm = r;
  const bool finite = std::isfinite(static_cast<double>(r));
  // In double, as the host computed it before the scale moved next to the
  // norm: the CPU backend's clipping is unchanged bit for bit.
  if (scale) *scale = max_norm > 0.0 && finite ? static_cast<T>(std::min(1.0, max_norm / (static_cast<double>(r) + 1e-6))) : T(1);
  if (nonfinite && !finite) *nonfinite = T(1);
}

template float global_norm_cpu<float>(const NormTensorT<float>*, int64_t);
template double global_norm_cpu<double>(const NormTensorT<double>*, int64_t);
template void global_norm_clip_cpu<float>(float*, float*, float*, const NormTensorT<float>*, int64_t, double);
template void global_norm_clip_cpu<double>(double*, double*, double*, const NormTensorT<double>*, int64_t, double);

}  // namespace kiln
