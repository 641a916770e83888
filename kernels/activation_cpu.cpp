// CPU references for kernels/activation.h (T = float, double), threaded on
// the CPU pool (runtime/parallel.h). Every element (and every bias column) is
// computed by exactly one part, in the same order whatever the part count, so
// results do not depend on the number of threads. The float GELU runs the
// vectorizable forms of activation_math.h, compiled per ISA (KILN_CPU_CLONES);
// double keeps the tanh formula (it serves the finite-difference checks).
#include <algorithm>
#include <vector>

#include "kernels/activation.h"
#include "kernels/activation_math.h"
#include "kernels/cpu_math.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

// Items per part below which a thread is not worth waking: ~5-10 µs of work.
constexpr int64_t kCheapPerPart = int64_t{1} << 15;  // an add or a compare per element
constexpr int64_t kExpPerPart = int64_t{1} << 12;    // an exp and a divide per element

KILN_CPU_CLONES void gelu_forward_f32(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_value_f32(x[i]);
}
KILN_CPU_CLONES void gelu_backward_f32(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad_f32(x[i]);
}
KILN_CPU_CLONES void relu_forward_f32(float* out, const float* x, int64_t n) {
  // select() keeps the loop branch-free (NaN is not < 0: it passes through).
  for (int64_t i = 0; i < n; ++i) out[i] = cpu_math::select(x[i] < 0.0f, 0.0f, x[i]);
}
KILN_CPU_CLONES void relu_backward_f32(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = cpu_math::select(x[i] > 0.0f, dy[i], 0.0f);
}

}  // namespace

template <typename T>
void gelu_forward_cpu(T* out, const T* x, int64_t n) {
  parallel_for(n, kExpPerPart, [&](int64_t lo, int64_t hi) {
    if constexpr (std::is_same_v<T, float>) gelu_forward_f32(out + lo, x + lo, hi - lo);
    else
      for (int64_t i = lo; i < hi; ++i) out[i] = gelu_value<T>(x[i]);
  });
}

template <typename T>
void gelu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n) {
  parallel_for(n, kExpPerPart, [&](int64_t lo, int64_t hi) {
    if constexpr (std::is_same_v<T, float>) gelu_backward_f32(dx + lo, x + lo, dy + lo, hi - lo);
    else
      for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i] * gelu_grad<T>(x[i]);
  });
}

template <typename T>
void relu_forward_cpu(T* out, const T* x, int64_t n) {
  parallel_for(n, kCheapPerPart, [&](int64_t lo, int64_t hi) {
    if constexpr (std::is_same_v<T, float>) relu_forward_f32(out + lo, x + lo, hi - lo);
    else
      for (int64_t i = lo; i < hi; ++i) out[i] = relu_value<T>(x[i]);
  });
}

template <typename T>
void relu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n) {
  parallel_for(n, kCheapPerPart, [&](int64_t lo, int64_t hi) {
    if constexpr (std::is_same_v<T, float>) relu_backward_f32(dx + lo, x + lo, dy + lo, hi - lo);
    else
      for (int64_t i = lo; i < hi; ++i) dx[i] = relu_grad_mask<T>(x[i], dy[i]);
  });
}

template <typename T>
void bias_add_forward_cpu(T* out, const T* x, const T* bias, int64_t rows, int64_t cols) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_add_forward_cpu: bad shape (" << rows << ", " << cols << ")");
  if (cols == 0) return;
  parallel_for(rows, std::max<int64_t>(1, kCheapPerPart / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;  // (cols)
      T* outr = out + r * cols;    // (cols)
      for (int64_t c = 0; c < cols; ++c) outr[c] = xr[c] + bias[c];
    }
  });
}

template <typename T>
void bias_backward_cpu(T* dbias, const T* dy, int64_t rows, int64_t cols) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_backward_cpu: bad shape (" << rows << ", " << cols << ")");
  // Each part owns a range of columns and walks every row in order (row-major
  // within its columns): each column still sums its rows in order into a
  // fresh accumulator, whatever the part count. Column ranges are multiples
  // of 16 (one cache line of floats) so parts do not share lines of dbias.
  const int64_t tiles = (cols + 15) / 16;
  const int parts = parallel_parts(tiles * rows * 16, kCheapPerPart);
  parallel_run(std::min<int64_t>(parts, std::max<int64_t>(tiles, 1)), [&](int p, int np) {
    const int64_t c0 = std::min(cols, split_begin(tiles, np, p) * 16);
    const int64_t c1 = std::min(cols, split_begin(tiles, np, p + 1) * 16);
    if (c0 >= c1) return;
    std::vector<T> acc(static_cast<size_t>(c1 - c0), T(0));  // (c1 - c0)
    T* a = acc.data();
    for (int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * cols + c0;
      for (int64_t c = 0; c < c1 - c0; ++c) a[c] += dyr[c];
    }
    for (int64_t c = c0; c < c1; ++c) dbias[c] += a[c - c0];
  });
}

template <typename T>
void residual_add_cpu(T* out, const T* a, const T* b, int64_t n) {
  parallel_for(n, kCheapPerPart, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = a[i] + b[i];
  });
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
