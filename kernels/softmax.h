// Softmax over the last dimension, forward and backward. CUDA launchers
// (kernels/softmax.cu) and CPU references (kernels/softmax_cpu.cpp).
//
//   x, y, dy, dx   (rows, C), float or bf16 on the GPU; C from 0 to 2^30
//   y  = exp(x - max(x)) / Σ exp(x - max(x))       (numerically stable)
//   dx = y ⊙ (dy - Σ dy ⊙ y)
//
// fp32 arithmetic on the GPU (double in the CPU references). A row whose
// entries are all -inf (fully masked) gives y = 0 rather than NaN; NaN in a
// row makes the whole row NaN.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

#if KILN_WITH_CUDA
/// y (rows, C) = softmax(x) row by row. y may alias x.
void softmax_forward(float* y, const float* x, int64_t rows, int64_t C, cudaStream_t stream);
void softmax_forward(bf16* y, const bf16* x, int64_t rows, int64_t C, cudaStream_t stream);

/// dx (rows, C) = y ⊙ (dy - rowsum(dy ⊙ y)) from the forward's output y. dx
/// may alias dy or y.
void softmax_backward(float* dx, const float* dy, const float* y, int64_t rows, int64_t C, cudaStream_t stream);
void softmax_backward(bf16* dx, const bf16* dy, const bf16* y, int64_t rows, int64_t C, cudaStream_t stream);
#endif

/// CPU reference of softmax_forward (T = float or double).
template <typename T>
void softmax_forward_cpu(T* y, const T* x, int64_t rows, int64_t C);

/// CPU reference of softmax_backward.
template <typename T>
void softmax_backward_cpu(T* dx, const T* dy, const T* y, int64_t rows, int64_t C);

}  // namespace kiln
