// CPU references for BatchNorm over NHWC channels (see batchnorm.h). Rows are
// visited in order with one accumulator per channel in double (the inner loop
// runs over the contiguous channels, so it vectorizes); two passes for the
// variance. These are the numbers the CUDA kernels are judged against and the
// CPU backend's implementation.
#include <cmath>
#include <vector>

#include "kernels/batchnorm.h"
#include "runtime/error.h"

namespace kiln {

namespace {

void check_shape(const char* op, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, op << ": bad shape (" << rows << ", " << C << ")");
}

// y = x · scale_c + shift_c (scale = rstd · weight, shift = bias − mean · scale).
template <typename T>
void affine_rows(T* y, const T* x, const std::vector<double>& scale, const std::vector<double>& shift, int64_t rows,
                 int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;  // (C,)
    T* yr = y + r * C;
    for (int64_t c = 0; c < C; ++c)
      yr[c] = static_cast<T>(static_cast<double>(xr[c]) * scale[static_cast<size_t>(c)] + shift[static_cast<size_t>(c)]);
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train_cpu(T* y, T* mean, T* rstd, T* var_unbiased, const T* x, const T* weight, const T* bias,
                                 int64_t rows, int64_t C, float eps) {
  check_shape("batchnorm_forward_train_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  std::vector<double> m(nc, 0.0), v(nc, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) m[static_cast<size_t>(c)] += static_cast<double>(xr[c]);
  }
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  for (double& s : m) s *= inv_rows;
  // Second pass: squared deviations from the mean (exact for large means).
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const double d = static_cast<double>(xr[c]) - m[static_cast<size_t>(c)];
      v[static_cast<size_t>(c)] += d * d;
    }
  }
  std::vector<double> scale(nc), shift(nc);
  for (size_t c = 0; c < nc; ++c) {
    const double var = v[c] * inv_rows;
    const double rs = 1.0 / std::sqrt(var + static_cast<double>(eps));
    mean[c] = static_cast<T>(m[c]);
    rstd[c] = static_cast<T>(rs);
    if (var_unbiased) var_unbiased[c] = static_cast<T>(rows > 1 ? v[c] / static_cast<double>(rows - 1) : var);
    scale[c] = rs * static_cast<double>(weight[c]);
    shift[c] = static_cast<double>(bias[c]) - m[c] * scale[c];
  }
  affine_rows(y, x, scale, shift, rows, C);
}

template <typename T>
void batchnorm_forward_eval_cpu(T* y, const T* x, const T* running_mean, const T* running_var, const T* weight,
                                const T* bias, int64_t rows, int64_t C, float eps) {
  check_shape("batchnorm_forward_eval_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  std::vector<double> scale(nc), shift(nc);
  for (size_t c = 0; c < nc; ++c) {
    const double rs = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
    scale[c] = rs * static_cast<double>(weight[c]);
    shift[c] = static_cast<double>(bias[c]) - static_cast<double>(running_mean[c]) * scale[c];
  }
  affine_rows(y, x, scale, shift, rows, C);
}

template <typename T>
void batchnorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, int64_t rows, int64_t C) {
  check_shape("batchnorm_backward_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  std::vector<double> sdy(nc, 0.0), sdyx(nc, 0.0), m(nc), rs(nc);
  for (size_t c = 0; c < nc; ++c) {
    m[c] = static_cast<double>(mean[c]);
    rs[c] = static_cast<double>(rstd[c]);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;  // (C,)
    const T* xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const size_t k = static_cast<size_t>(c);
      const double g = static_cast<double>(dyr[c]);
      sdy[k] += g;
      sdyx[k] += g * (static_cast<double>(xr[c]) - m[k]) * rs[k];
    }
  }
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  // dx = a·dy + b·x + c0 per channel, with a = weight·rstd,
  // b = −a·rstd·mean(dy·xhat), c0 = −a·mean(dy) − b·mean.
  std::vector<double> a(nc), b(nc), c0(nc);
  for (size_t c = 0; c < nc; ++c) {
    a[c] = static_cast<double>(weight[c]) * rs[c];
    b[c] = -a[c] * rs[c] * sdyx[c] * inv_rows;
    c0[c] = -a[c] * sdy[c] * inv_rows - b[c] * m[c];
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    T* dxr = dx + r * C;  // written after dy[r, c] is read: dx may alias dy
    for (int64_t c = 0; c < C; ++c) {
      const size_t k = static_cast<size_t>(c);
      dxr[c] = static_cast<T>(a[k] * static_cast<double>(dyr[c]) + b[k] * static_cast<double>(xr[c]) + c0[k]);
    }
  }
  for (size_t c = 0; c < nc; ++c) {
    dweight[c] = static_cast<T>(static_cast<double>(dweight[c]) + sdyx[c]);
    dbias[c] = static_cast<T>(static_cast<double>(dbias[c]) + sdy[c]);
  }
}

template <typename T>
void batchnorm_update_running_cpu(T* running_mean, T* running_var, const T* mean_sum, const T* var_sum, int64_t C,
                                  float momentum, float scale) {
  check_shape("batchnorm_update_running_cpu", 1, C);
  const double mo = momentum, s = scale;
  for (int64_t c = 0; c < C; ++c) {
    running_mean[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_mean[c]) +
                                     mo * s * static_cast<double>(mean_sum[c]));
    running_var[c] = static_cast<T>((1.0 - mo) * static_cast<double>(running_var[c]) +
                                    mo * s * static_cast<double>(var_sum[c]));
  }
}

#define KILN_BATCHNORM_CPU(T)                                                                                     \
  template void batchnorm_forward_train_cpu<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,   \
                                               float);                                                           \
  template void batchnorm_forward_eval_cpu<T>(T*, const T*, const T*, const T*, const T*, const T*, int64_t,      \
                                              int64_t, float);                                                   \
  template void batchnorm_backward_cpu<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,  \
                                          int64_t);                                                              \
  template void batchnorm_update_running_cpu<T>(T*, T*, const T*, const T*, int64_t, float, float);
KILN_BATCHNORM_CPU(float)
KILN_BATCHNORM_CPU(double)
#undef KILN_BATCHNORM_CPU

}  // namespace kiln
