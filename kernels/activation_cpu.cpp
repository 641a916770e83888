// CPU references for kernels/activation.h (T = float, double).
#include <vector>

#include "kernels/activation.h"
#include "kernels/activation_math.h"
#include "runtime/error.h"

namespace kiln {

template <typename T>
void gelu_forward_cpu(T* out, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_value<T>(x[i]);
}

template <typename T>
void gelu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad<T>(x[i]);
}

template <typename T>
void relu_forward_cpu(T* out, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = relu_value<T>(x[i]);
}

template <typename T>
void relu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = relu_grad_mask<T>(x[i], dy[i]);
}

template <typename T>
void bias_add_forward_cpu(T* out, const T* x, const T* bias, int64_t rows, int64_t cols) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_add_forward_cpu: bad shape (" << rows << ", " << cols << ")");
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;  // (cols)
    T* outr = out + r * cols;    // (cols)
    for (int64_t c = 0; c < cols; ++c) outr[c] = xr[c] + bias[c];
  }
}

template <typename T>
void bias_backward_cpu(T* dbias, const T* dy, int64_t rows, int64_t cols) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_backward_cpu: bad shape (" << rows << ", " << cols << ")");
  // Row-major walk (cache friendly); each column still sums rows in order.
  std::vector<T> acc(static_cast<size_t>(cols), T(0));  // (cols)
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    for (int64_t c = 0; c < cols; ++c) acc[c] += dyr[c];
  }
  for (int64_t c = 0; c < cols; ++c) dbias[c] += acc[c];
}

template <typename T>
void residual_add_cpu(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

#define KILN_INSTANTIATE(T)                                                              \
  template void gelu_forward_cpu<T>(T*, const T*, int64_t);                              \
  template void gelu_backward_cpu<T>(T*, const T*, const T*, int64_t);                   \
  template void relu_forward_cpu<T>(T*, const T*, int64_t);                              \
  template void relu_backward_cpu<T>(T*, const T*, const T*, int64_t);                   \
  template void bias_add_forward_cpu<T>(T*, const T*, const T*, int64_t, int64_t);       \
  template void bias_backward_cpu<T>(T*, const T*, int64_t, int64_t);                    \
  template void residual_add_cpu<T>(T*, const T*, const T*, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)
#undef KILN_INSTANTIATE

}  // namespace kiln
