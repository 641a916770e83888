// CPU references for LayerNorm (see layernorm.h). One row at a time,
// statistics and sums in double whatever T is: these are the numbers the
// CUDA kernels are judged against, and the CPU backend's implementation.
//
// Threads (runtime/parallel.h): the forward and the dx part of the backward
// give each row to one part; dweight/dbias are summed per column over every
// row in order, the columns split among the parts. So no result depends on
// the thread count, and dweight/dbias add their rows in order exactly as a
// single loop would. Row sums use fixed-order lanes (kernels/cpu_math.h) so
// they vectorize; the loops are compiled per ISA (KILN_CPU_CLONES).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu_math.h"
#include "kernels/layernorm.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

// Elements per part below which another thread does not pay (~10 µs).
constexpr int64_t kPerPart = int64_t{1} << 14;

int64_t rows_per_part(int64_t C) { return std::max<int64_t>(1, kPerPart / std::max<int64_t>(C, 1)); }

// Mean and 1/sqrt(var + eps) of one row, two-pass (exact for large means).
template <typename T>
inline void row_stats(const T* xr, int64_t C, float eps, double* mean, double* rstd) {
  const double m = C > 0 ? cpu_math::sum_lanes(xr, C) / static_cast<double>(C) : 0.0;
  constexpr int L = cpu_math::kLanes;
  double acc[L] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + L <= C; c += L)
    for (int l = 0; l < L; ++l) {
      const double d = static_cast<double>(xr[c + l]) - m;
      acc[l] += d * d;
    }
  double v = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; c < C; ++c) {
    const double d = static_cast<double>(xr[c]) - m;
    v += d * d;
  }
  v = C > 0 ? v / static_cast<double>(C) : 0.0;
  *mean = m;
  *rstd = 1.0 / std::sqrt(v + static_cast<double>(eps));
}

template <typename T>
inline void normalize_row(T* yr, const T* xr, const T* weight, const T* bias, int64_t C, double m, double r) {
  for (int64_t c = 0; c < C; ++c)
    yr[c] = static_cast<T>((static_cast<double>(xr[c]) - m) * r * static_cast<double>(weight[c]) +
                           static_cast<double>(bias[c]));
}

// Rows [r0, r1): sum = x + residual (when residual is given; `src` is then
// sum), statistics, y.
template <typename T>
KILN_CPU_CLONES void forward_rows(T* sum, T* y, T* mean, T* rstd, const T* x, const T* residual, const T* weight,
                                  const T* bias, int64_t r0, int64_t r1, int64_t C, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* src = x + r * C;  // (C,)
    if (residual) {
      T* sr = sum + r * C;
      for (int64_t c = 0; c < C; ++c) sr[c] = x[r * C + c] + residual[r * C + c];
      src = sr;
    }
    double m, rs;
    row_stats(src, C, eps, &m, &rs);
    if (mean) mean[r] = static_cast<T>(m);
    if (rstd) rstd[r] = static_cast<T>(rs);
    normalize_row(y + r * C, src, weight, bias, C, m, rs);
  }
}

// dx for rows [r0, r1).
template <typename T>
KILN_CPU_CLONES void backward_dx_rows(T* dx, const T* dy, const T* x, const T* weight, const T* mean, const T* rstd,
                                      const T* dresidual, int64_t r0, int64_t r1, int64_t C) {
  constexpr int L = cpu_math::kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = dy + r * C;  // (C,)
    const T* xr = x + r * C;
    const double m = static_cast<double>(mean[r]), rs = static_cast<double>(rstd[r]);
    double ag[L] = {0, 0, 0, 0, 0, 0, 0, 0}, agx[L] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + L <= C; c += L)
      for (int l = 0; l < L; ++l) {
        const double g = static_cast<double>(dyr[c + l]) * static_cast<double>(weight[c + l]);
        const double xhat = (static_cast<double>(xr[c + l]) - m) * rs;
        ag[l] += g;
        agx[l] += g * xhat;
      }
    double sum_g = ((ag[0] + ag[1]) + (ag[2] + ag[3])) + ((ag[4] + ag[5]) + (ag[6] + ag[7]));
    double sum_gx = ((agx[0] + agx[1]) + (agx[2] + agx[3])) + ((agx[4] + agx[5]) + (agx[6] + agx[7]));
    for (; c < C; ++c) {
      const double g = static_cast<double>(dyr[c]) * static_cast<double>(weight[c]);
      const double xhat = (static_cast<double>(xr[c]) - m) * rs;
      sum_g += g;
      sum_gx += g * xhat;
    }
    const double mean_g = C > 0 ? sum_g / static_cast<double>(C) : 0.0;
    const double mean_gx = C > 0 ? sum_gx / static_cast<double>(C) : 0.0;
    T* dxr = dx + r * C;
    const T* drr = dresidual ? dresidual + r * C : nullptr;
    for (c = 0; c < C; ++c) {
      const double g = static_cast<double>(dyr[c]) * static_cast<double>(weight[c]);
      const double xhat = (static_cast<double>(xr[c]) - m) * rs;
      double d = rs * (g - mean_g - xhat * mean_gx);
      if (drr) d += static_cast<double>(drr[c]);
      dxr[c] = static_cast<T>(d);  // after reading dy[r, c] and dresidual: dx may alias either
    }
  }
}

// dw[c - c0] = Σ_r dy·xhat, db[c - c0] = Σ_r dy over all rows in order, for
// columns [c0, c1).
template <typename T>
KILN_CPU_CLONES void backward_dw_cols(double* dw, double* db, const T* dy, const T* x, const T* mean, const T* rstd,
                                      int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * C + c0;
    const T* xr = x + r * C + c0;
    const double m = static_cast<double>(mean[r]), rs = static_cast<double>(rstd[r]);
    for (int64_t c = 0; c < c1 - c0; ++c) {
      const double xhat = (static_cast<double>(xr[c]) - m) * rs;
      dw[c] += static_cast<double>(dyr[c]) * xhat;
      db[c] += static_cast<double>(dyr[c]);
    }
  }
}

}  // namespace

template <typename T>
void layernorm_forward_cpu(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                           int64_t C, float eps) {
  KILN_CHECK(rows >= 0 && C >= 0, "layernorm_forward_cpu: bad shape (" << rows << ", " << C << ")");
  parallel_for(rows, rows_per_part(C), [&](int64_t r0, int64_t r1) {
    forward_rows<T>(nullptr, y, mean, rstd, x, nullptr, weight, bias, r0, r1, C, eps);
  });
}

template <typename T>
void residual_layernorm_forward_cpu(T* sum, T* y, T* mean, T* rstd, const T* x, const T* residual, const T* weight,
                                    const T* bias, int64_t rows, int64_t C, float eps) {
  KILN_CHECK(rows >= 0 && C >= 0, "residual_layernorm_forward_cpu: bad shape (" << rows << ", " << C << ")");
  parallel_for(rows, rows_per_part(C), [&](int64_t r0, int64_t r1) {
    forward_rows<T>(sum, y, mean, rstd, x, residual, weight, bias, r0, r1, C, eps);
  });
}

template <typename T>
void layernorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, const T* dresidual, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, "layernorm_backward_cpu: bad shape (" << rows << ", " << C << ")");
  // dweight/dbias first: they read dy, which dx may overwrite.
  const int64_t tiles = (C + 15) / 16;  // column ranges in whole cache lines of floats
  const int parts = static_cast<int>(std::min<int64_t>(std::max<int64_t>(tiles, 1), parallel_parts(rows * C, kPerPart)));
  parallel_run(parts, [&](int p, int np) {
    const int64_t c0 = std::min(C, split_begin(tiles, np, p) * 16), c1 = std::min(C, split_begin(tiles, np, p + 1) * 16);
    if (c0 >= c1) return;
    std::vector<double> dw(static_cast<size_t>(c1 - c0), 0.0), db(static_cast<size_t>(c1 - c0), 0.0);
    backward_dw_cols<T>(dw.data(), db.data(), dy, x, mean, rstd, rows, C, c0, c1);
    for (int64_t c = c0; c < c1; ++c) {
      dweight[c] = static_cast<T>(static_cast<double>(dweight[c]) + dw[static_cast<size_t>(c - c0)]);
      dbias[c] = static_cast<T>(static_cast<double>(dbias[c]) + db[static_cast<size_t>(c - c0)]);
    }
  });
  parallel_for(rows, rows_per_part(C), [&](int64_t r0, int64_t r1) {
    backward_dx_rows<T>(dx, dy, x, weight, mean, rstd, dresidual, r0, r1, C);
  });
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
