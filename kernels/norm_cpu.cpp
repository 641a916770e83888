// CPU reference for kernels/norm.h (T = float, double).
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

template float global_norm_cpu<float>(const NormTensorT<float>*, int64_t);
template double global_norm_cpu<double>(const NormTensorT<double>*, int64_t);

}  // namespace kiln
