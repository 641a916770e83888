// LayerNorm over the last dimension, forward and backward, with a fused
// residual-add variant. CUDA launchers (kernels/layernorm.cu) and CPU
// references (kernels/layernorm_cpu.cpp).
//
//   x        (rows, C)   activations (float or bf16 on the GPU)
//   weight   (C,) fp32   bias (C,) fp32    (master weights, small)
//   mean     (rows,) fp32, rstd (rows,) fp32   saved for backward
//   y = (x - mean) · rstd · weight + bias,   rstd = 1 / sqrt(var + eps),
//   var the biased (population) variance, as in torch.nn.LayerNorm.
//
// Statistics and all accumulation are fp32 on the GPU (double in the CPU
// references). The backward overwrites dx and ACCUMULATES (+=) into the fp32
// parameter gradients dweight and dbias, deterministically: per-block partial
// sums go to a caller-provided scratch buffer and one fixed-order pass adds
// them up (no float atomics). Rows of any length C >= 0 (C = 0 gives
// mean 0 and rstd 1/sqrt(eps)).
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Partial-sum slots layernorm_backward uses for `rows` rows: one per block of
/// about 32 rows, at most 1024 (a function of rows only, so the summation
/// order, and hence every bit of dweight/dbias, depends on the shape alone).
inline int64_t layernorm_backward_partials(int64_t rows) {
  int64_t partials = (rows + 31) / 32;
  if (partials < 1) partials = 1;
  if (partials > 1024) partials = 1024;
  return partials;
}

/// Floats of scratch layernorm_backward needs: (partials, 2, C).
inline int64_t layernorm_backward_scratch_floats(int64_t rows, int64_t C) {
  return layernorm_backward_partials(rows) * 2 * C;
}

#if KILN_WITH_CUDA
/// y (rows, C) = LayerNorm(x). mean/rstd (rows,) may be null when no backward
/// follows. y may alias x.
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t rows, int64_t C, float eps, cudaStream_t stream);
void layernorm_forward(bf16* y, float* mean, float* rstd, const bf16* x, const float* weight, const float* bias,
                       int64_t rows, int64_t C, float eps, cudaStream_t stream);

/// Fused residual add + LayerNorm: sum = x + residual (written, rounded to the
/// activation type; it is the next residual stream), y = LayerNorm(sum) with
/// statistics of the rounded sum (so layernorm_backward on `sum` is exact).
/// sum may alias x or residual; y must not alias them.
void residual_layernorm_forward(float* sum, float* y, float* mean, float* rstd, const float* x,
                                const float* residual, const float* weight, const float* bias, int64_t rows,
                                int64_t C, float eps, cudaStream_t stream);
void residual_layernorm_forward(bf16* sum, bf16* y, float* mean, float* rstd, const bf16* x, const bf16* residual,
                                const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                                cudaStream_t stream);

/// Backward. x is the forward input (the `sum` of the residual variant),
/// mean/rstd the saved statistics.
///   dx (rows, C)  = rstd · (g - mean(g) - xhat · mean(g · xhat)) [+ dresidual],
///                   g = dy · weight, xhat = (x - mean) · rstd
///   dweight (C,) += Σ_rows dy · xhat,   dbias (C,) += Σ_rows dy
/// dresidual (rows, C) may be null; when given it is added to dx (the
/// gradient flowing along the residual stream), and dx may alias it. dx may
/// alias dy. scratch holds layernorm_backward_scratch_floats(rows, C) floats.
void layernorm_backward(float* dx, float* dweight, float* dbias, float* scratch, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, const float* dresidual,
                        int64_t rows, int64_t C, cudaStream_t stream);
void layernorm_backward(bf16* dx, float* dweight, float* dbias, float* scratch, const bf16* dy, const bf16* x,
                        const float* weight, const float* mean, const float* rstd, const bf16* dresidual,
                        int64_t rows, int64_t C, cudaStream_t stream);
#endif

/// CPU reference of layernorm_forward (T = float or double; for T = float
/// the signature is the CUDA one without the stream). mean/rstd may be null.
template <typename T>
void layernorm_forward_cpu(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t rows,
                           int64_t C, float eps);

/// CPU reference of residual_layernorm_forward.
template <typename T>
void residual_layernorm_forward_cpu(T* sum, T* y, T* mean, T* rstd, const T* x, const T* residual, const T* weight,
                                    const T* bias, int64_t rows, int64_t C, float eps);

/// CPU reference of layernorm_backward (no scratch: rows are summed in order).
template <typename T>
void layernorm_backward_cpu(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                            const T* rstd, const T* dresidual, int64_t rows, int64_t C);

}  // namespace kiln
