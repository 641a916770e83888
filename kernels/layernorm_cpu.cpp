// CPU references for LayerNorm (see layernorm.h). Straight loops, one row at a
// time, statistics and sums in double whatever T is: these are the numbers
// the CUDA kernels are judged against, and the CPU backend's implementation.
#include <cmath>
#include <vector>

#include "kernels/layernorm.h"
#include "runtime/error.h"

namespace kiln {

namespace {

// Mean and 1/sqrt(var + eps) of one row, two-pass (exact for large means).
template <typename T>
void row_stats(const T* xr, int64_t C, float eps, double* mean, double* rstd) {
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += static_cast<double>(xr[c]);
  const double m = C > 0 ? s / static_cast<double>(C) : 0.0;
  double v = 0;
  for (int64_t c = 0; c < C; ++c) {
    const double d = static_cast<double>(xr[c]) - m;
    v += d * d;
  }
  v = C > 0 ? v / static_cast<double>(C) : 0.0;
  *mean = m;
  *rstd = 1.0 / std::sqrt(v + static_cast<double>(eps));
}

template <typename T>
void normalize_row(T* yr, const T* xr, const T* weight, const T* bias, int64_t C, double m, double r) {
  for (int64_t c = 0; c < C; ++c)
    yr[c] = static_cast<T>((static_cast<double>(xr[c]) - m) * r * static_cast<double>(weight[c]) +
                           static_cast<double>(bias[c]));
}

}  // namespace

template <typename T>
void layernorm_forward_cpu(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                           int64_t C, float eps) {
  KILN_CHECK(rows >= 0 && C >= 0, "layernorm_forward_cpu: bad shape (" << rows << ", " << C << ")");
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;  // (C,)
    double m, rs;
    row_stats(xr, C, eps, &m, &rs);
    if (mean) mean[r] = static_cast<T>(m);
    if (rstd) rstd[r] = static_cast<T>(rs);
    normalize_row(y + r * C, xr, weight, bias, C, m, rs);
  }
}

template <typename T>
void residual_layernorm_forward_cpu(T* sum, T* y, T* mean, T* rstd, const T* x, const T* residual, const T* weight,
                                    const T* bias, int64_t rows, int64_t C, float eps) {
  KILN_CHECK(rows >= 0 && C >= 0, "residual_layernorm_forward_cpu: bad shape (" << rows << ", " << C << ")");
  for (int64_t r = 0; r < rows; ++r) {
    T* sr = sum + r * C;  // (C,)
    for (int64_t c = 0; c < C; ++c) sr[c] = x[r * C + c] + residual[r * C + c];
    double m, rs;
    row_stats(sr, C, eps, &m, &rs);
    if (mean) mean[r] = static_cast<T>(m);
    if (rstd) rstd[r] = static_cast<T>(rs);
    normalize_row(y + r * C, sr, weight, bias, C, m, rs);
  }
}

template <typename T>
void layernorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, const T* dresidual, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "layernorm_backward_cpu: bad shape (" << rows << ", " << C << ")");
  std::vector<double> dw(static_cast<size_t>(C), 0.0), db(static_cast<size_t>(C), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C;  // (C,)
    const T* xr = x + r * C;
    const double m = static_cast<double>(mean[r]), rs = static_cast<double>(rstd[r]);
    double sum_g = 0, sum_gx = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double g = static_cast<double>(dyr[c]) * static_cast<double>(weight[c]);
      const double xhat = (static_cast<double>(xr[c]) - m) * rs;
      sum_g += g;
      sum_gx += g * xhat;
      dw[c] += static_cast<double>(dyr[c]) * xhat;
      db[c] += static_cast<double>(dyr[c]);
    }
    const double mean_g = C > 0 ? sum_g / static_cast<double>(C) : 0.0;
    const double mean_gx = C > 0 ? sum_gx / static_cast<double>(C) : 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double g = static_cast<double>(dyr[c]) * static_cast<double>(weight[c]);
      const double xhat = (static_cast<double>(xr[c]) - m) * rs;
      double d = rs * (g - mean_g - xhat * mean_gx);
      if (dresidual) d += static_cast<double>(dresidual[r * C + c]);
      dx[r * C + c] = static_cast<T>(d);  // after reading dy[r, c] and dresidual: dx may alias either
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    dweight[c] = static_cast<T>(static_cast<double>(dweight[c]) + dw[c]);
    dbias[c] = static_cast<T>(static_cast<double>(dbias[c]) + db[c]);
  }
}

template void layernorm_forward_cpu<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                           int64_t, float);
template void layernorm_forward_cpu<double>(double*, double*, double*, const double*, const double*, const double*,
                                            int64_t, int64_t, float);
template void residual_layernorm_forward_cpu<float>(float*, float*, float*, float*, const float*, const float*,
                                                    const float*, const float*, int64_t, int64_t, float);
template void residual_layernorm_forward_cpu<double>(double*, double*, double*, double*, const double*,
                                                     const double*, const double*, const double*, int64_t, int64_t,
                                                     float);
template void layernorm_backward_cpu<float>(float*, float*, float*, const float*, const float*, const float*,
                                            const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward_cpu<double>(double*, double*, double*, const double*, const double*, const double*,
                                             const double*, const double*, const double*, int64_t, int64_t);

}  // namespace kiln
