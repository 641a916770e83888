// CPU references for BatchNorm over NHWC channels (see batchnorm.h): the
// numbers the CUDA kernels are judged against and the CPU backend's
// implementation. Channel sums run per block of rows in T (the inner loop
// over the contiguous channels vectorizes) and the block sums add up in
// double in block order; two passes for the variance.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/batchnorm.h"
#include "runtime/error.h"

namespace kiln {

namespace {

// Rows per reduction block: per-channel sums are taken per block (in T,
// vectorized over the contiguous channels) and the block sums added in
// block order in double. The blocks depend on the shape only.
constexpr int64_t kBlockRows = 256;

void check_shape(const char* op, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, op << ": bad shape (" << rows << ", " << C << ")");
}

int64_t blocks_for(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// totals (sums, C) = Σ over rows of what f(r, acc) adds into acc (sums, C),
// accumulated per block of rows in T and over blocks in double.
template <typename T, typename F>
void block_sums(int64_t rows, int64_t C, int sums, std::vector<double>& totals, F f) {
  totals.assign(static_cast<size_t>(sums * C), 0.0);
  std::vector<T> acc(static_cast<size_t>(sums * C));
  for (int64_t b = 0; b < blocks_for(rows); ++b) {
    std::fill(acc.begin(), acc.end(), T(0));
    const int64_t r1 = std::min(rows, (b + 1) * kBlockRows);
    for (int64_t r = b * kBlockRows; r < r1; ++r) f(r, acc.data());
    for (size_t i = 0; i < acc.size(); ++i) totals[i] += static_cast<double>(acc[i]);
  }
}

// Mean and Σ (x − mean)² of every channel, one pass over memory: each block
// (in cache) gets its own two-pass mean and squared deviations, and the
// blocks merge in order with Chan's formula in double.
template <typename T>
void channel_stats(const T* x, int64_t rows, int64_t C, std::vector<double>& mean, std::vector<double>& m2) {
  const size_t nc = static_cast<size_t>(C);
  mean.assign(nc, 0.0);
  m2.assign(nc, 0.0);
  std::vector<T> bm(nc), bq(nc);
  double n = 0;
  for (int64_t b = 0; b < blocks_for(rows); ++b) {
    const int64_t r0 = b * kBlockRows, r1 = std::min(rows, r0 + kBlockRows);
    const T inv = T(1) / static_cast<T>(r1 - r0);
    T* __restrict s = bm.data();
    T* __restrict q = bq.data();
    std::fill(bm.begin(), bm.end(), T(0));
    std::fill(bq.begin(), bq.end(), T(0));
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict xr = x + r * C;
      for (int64_t c = 0; c < C; ++c) s[c] += xr[c];
    }
    for (int64_t c = 0; c < C; ++c) s[c] *= inv;
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict xr = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const T d = xr[c] - s[c];
        q[c] += d * d;
      }
    }
    const double nb = static_cast<double>(r1 - r0), tot = n + nb;
    for (size_t c = 0; c < nc; ++c) {
      const double delta = static_cast<double>(bm[c]) - mean[c];
      mean[c] += delta * nb / tot;
      m2[c] += static_cast<double>(bq[c]) + delta * delta * n * nb / tot;
    }
    n = tot;
  }
}

// y = (x − center_c) · scale_c + bias_c (centering first: no cancellation when
// the scale is large).
template <typename T>
void affine_rows(T* y, const T* x, const T* center, const std::vector<T>& scale, const T* bias, int64_t rows,
                 int64_t C) {
  const T* __restrict m = center;
  const T* __restrict sc = scale.data();
  const T* __restrict b = bias;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;  // (C,)
    T* yr = y + r * C;        // may alias x
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m[c]) * sc[c] + b[c];
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train_cpu(T* y, T* mean, T* rstd, T* var_unbiased, const T* x, const T* weight, const T* bias,
                                 int64_t rows, int64_t C, float eps) {
  check_shape("batchnorm_forward_train_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  std::vector<double> m, sq;
  channel_stats(x, rows, C, m, sq);
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  std::vector<T> mt(nc), scale(nc);
  for (size_t c = 0; c < nc; ++c) {
    const double var = sq[c] * inv_rows;
    const double rs = 1.0 / std::sqrt(var + static_cast<double>(eps));
    mt[c] = static_cast<T>(m[c]);
    mean[c] = mt[c];
    rstd[c] = static_cast<T>(rs);
    if (var_unbiased) var_unbiased[c] = static_cast<T>(rows > 1 ? sq[c] / static_cast<double>(rows - 1) : var);
    scale[c] = static_cast<T>(rs * static_cast<double>(weight[c]));
  }
  affine_rows(y, x, mt.data(), scale, bias, rows, C);
}

template <typename T>
void batchnorm_forward_eval_cpu(T* y, const T* x, const T* running_mean, const T* running_var, const T* weight,
                                const T* bias, int64_t rows, int64_t C, float eps) {
  check_shape("batchnorm_forward_eval_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  std::vector<T> scale(nc);
  for (size_t c = 0; c < nc; ++c)
    scale[c] = static_cast<T>(static_cast<double>(weight[c]) /
                              std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps)));
  affine_rows(y, x, running_mean, scale, bias, rows, C);
}

template <typename T>
void batchnorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, int64_t rows, int64_t C) {
  check_shape("batchnorm_backward_cpu", rows, C);
  const size_t nc = static_cast<size_t>(C);
  const T* __restrict m = mean;
  const T* __restrict rs = rstd;
  // One pass: (Σ dy, Σ dy·xhat) per channel, packed (2, C) per block.
  std::vector<double> sums;
  block_sums<T>(rows, C, 2, sums, [&](int64_t r, T* acc) {
    T* __restrict a = acc;
    T* __restrict ax = acc + C;
    const T* __restrict g = dy + r * C;
    const T* __restrict xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      a[c] += g[c];
      ax[c] += g[c] * ((xr[c] - m[c]) * rs[c]);
    }
  });
  const double* sdy = sums.data();
  const double* sdyx = sums.data() + C;
  const double inv_rows = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
  // dx = a·(dy − mean(dy)) + b·(x − mean), a = weight·rstd, b = −a·rstd·mean(dy·xhat).
  std::vector<T> a(nc), b(nc), mdy(nc);
  for (size_t c = 0; c < nc; ++c) {
    const double ac = static_cast<double>(weight[c]) * static_cast<double>(rstd[c]);
    a[c] = static_cast<T>(ac);
    b[c] = static_cast<T>(-ac * static_cast<double>(rstd[c]) * sdyx[c] * inv_rows);
    mdy[c] = static_cast<T>(sdy[c] * inv_rows);
  }
  const T* __restrict ap = a.data();
  const T* __restrict bp = b.data();
  const T* __restrict mg = mdy.data();
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = dy + r * C;
    const T* xr = x + r * C;
    T* d = dx + r * C;  // written after dy[r, c] is read: dx may alias dy
    for (int64_t c = 0; c < C; ++c) d[c] = ap[c] * (g[c] - mg[c]) + bp[c] * (xr[c] - m[c]);
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
