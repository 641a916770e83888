// BatchNorm over the channels of NHWC activations, forward (training: batch
// statistics; eval: running statistics), backward, and the running-statistics
// update. CUDA launchers (kernels/batchnorm.cu) and CPU references
// (kernels/batchnorm_cpu.cpp).
//
//   x, y, dy, dx  (rows, C)   rows = N·H·W: NHWC images are (rows, C) row-major
//   weight, bias  (C,) fp32   mean, rstd (C,) fp32 (saved for backward)
//   training:  mean_c = Σ_r x[r, c] / rows,  var_c = Σ_r (x[r, c] − mean_c)² / rows
//              (biased, as torch.nn.BatchNorm2d normalizes), rstd_c = 1/√(var_c + eps)
//              y = (x − mean) · rstd · weight + bias
//              var_unbiased_c = var_c · rows / (rows − 1) (what the running
//              variance averages, as in PyTorch; = var_c when rows <= 1)
//   eval:      y = (x − running_mean) / √(running_var + eps) · weight + bias
//   backward:  xhat = (x − mean) · rstd
//              dx = weight · rstd · (dy − mean_r(dy) − xhat · mean_r(dy · xhat))
//              dweight += Σ_r dy · xhat,  dbias += Σ_r dy
//
// Statistics and all accumulation are fp32 on the GPU (Welford per thread,
// Chan's merge across threads), double in the CPU references. Every sum runs
// in an order fixed by (rows, C): per-partial slices of a caller-provided
// scratch buffer, then a fixed pattern of merges — no float atomics, so runs
// are bit-identical.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Row slices the GPU statistics are split into: about 512 rows each, at most
/// 512 slices (a function of rows only, so the summation order is too).
inline int64_t batchnorm_partials(int64_t rows) {
  int64_t p = (rows + 511) / 512;
  if (p < 1) p = 1;
  if (p > 512) p = 512;
  return p;
}

/// Floats of scratch the GPU forward (training) and backward need: two values
/// per channel per slice, plus two per channel for the finished sums.
inline int64_t batchnorm_scratch_floats(int64_t rows, int64_t C) { return (batchnorm_partials(rows) + 1) * 2 * C; }

// --- CUDA launchers (declared in every build; defined with CUDA) ----------------

/// Training forward: batch statistics into mean/rstd (C,) and, when not null,
/// var_unbiased (C,); y (rows, C) normalized. y may alias x.
void batchnorm_forward_train(float* y, float* mean, float* rstd, float* var_unbiased, float* scratch, const float* x,
                             const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                             cudaStream_t stream);
void batchnorm_forward_train(bf16* y, float* mean, float* rstd, float* var_unbiased, float* scratch, const bf16* x,
                             const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                             cudaStream_t stream);

/// Eval forward with running statistics. y may alias x.
void batchnorm_forward_eval(float* y, const float* x, const float* running_mean, const float* running_var,
                            const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                            cudaStream_t stream);
void batchnorm_forward_eval(bf16* y, const bf16* x, const float* running_mean, const float* running_var,
                            const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                            cudaStream_t stream);

/// Backward of the training forward: dx (rows, C) written (may alias dy),
/// dweight/dbias (C,) accumulated (+=).
void batchnorm_backward(float* dx, float* dweight, float* dbias, float* scratch, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int64_t C,
                        cudaStream_t stream);
void batchnorm_backward(bf16* dx, float* dweight, float* dbias, float* scratch, const bf16* dy, const bf16* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows, int64_t C,
                        cudaStream_t stream);

/// Running-statistics update from `scale`-weighted sums of batch statistics:
///   running_mean = (1 − momentum) · running_mean + momentum · scale · mean_sum
///   running_var  = (1 − momentum) · running_var  + momentum · scale · var_sum
/// (scale = 1 / number of micro-batches summed; see nn/batchnorm.h).
void batchnorm_update_running(float* running_mean, float* running_var, const float* mean_sum, const float* var_sum,
                              int64_t C, float momentum, float scale, cudaStream_t stream);

/// CPU reference of batchnorm_forward_train (T = float or double). var_unbiased may be null.
template <typename T>
void batchnorm_forward_train_cpu(T* y, T* mean, T* rstd, T* var_unbiased, const T* x, const T* weight, const T* bias,
                                 int64_t rows, int64_t C, float eps);

/// CPU reference of batchnorm_forward_eval.
template <typename T>
void batchnorm_forward_eval_cpu(T* y, const T* x, const T* running_mean, const T* running_var, const T* weight,
                                const T* bias, int64_t rows, int64_t C, float eps);

/// CPU reference of batchnorm_backward (no scratch).
template <typename T>
void batchnorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, int64_t rows, int64_t C);

/// CPU reference of batchnorm_update_running.
template <typename T>
void batchnorm_update_running_cpu(T* running_mean, T* running_var, const T* mean_sum, const T* var_sum, int64_t C,
                                  float momentum, float scale);

}  // namespace kiln
