// Elementwise activations and the small ops around a Linear layer:
// GELU (tanh form), ReLU, bias add and its backward, residual add.
//
// Conventions (see common.h): `<op>_cpu<T>` is the CPU reference for T = float
// and double; the CUDA launchers are overloads for float and kiln::bf16
// activations with fp32 math, launched on an explicit stream. Activation
// gradients are written (=); parameter gradients (dbias) are fp32 and
// accumulated (+=). Outputs may alias an input of the same shape (in-place
// use), except where a comment says otherwise.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

// --- CPU references ---------------------------------------------------------

/// out[i] = gelu(x[i]) (tanh form), i in [0, n).
template <typename T>
void gelu_forward_cpu(T* out, const T* x, int64_t n);
/// dx[i] = dy[i] · gelu'(x[i]).
template <typename T>
void gelu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n);

/// out[i] = max(x[i], 0).
template <typename T>
void relu_forward_cpu(T* out, const T* x, int64_t n);
/// dx[i] = x[i] > 0 ? dy[i] : 0  (x is the forward input).
template <typename T>
void relu_backward_cpu(T* dx, const T* x, const T* dy, int64_t n);

/// out (rows, cols) = x (rows, cols) + bias (cols), broadcast over rows.
template <typename T>
void bias_add_forward_cpu(T* out, const T* x, const T* bias, int64_t rows, int64_t cols);
/// dbias (cols) += Σ_r dy (rows, cols)[r, :], rows summed in order into a fresh
/// accumulator, then added. (dx of a bias add is dy itself: no kernel.)
template <typename T>
void bias_backward_cpu(T* dbias, const T* dy, int64_t rows, int64_t cols);

/// out[i] = a[i] + b[i].
template <typename T>
void residual_add_cpu(T* out, const T* a, const T* b, int64_t n);

// --- CUDA launchers -----------------------------------------------------------

void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream);
void gelu_forward(bf16* out, const bf16* x, int64_t n, cudaStream_t stream);
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n, cudaStream_t stream);
void gelu_backward(bf16* dx, const bf16* x, const bf16* dy, int64_t n, cudaStream_t stream);

void relu_forward(float* out, const float* x, int64_t n, cudaStream_t stream);
void relu_forward(bf16* out, const bf16* x, int64_t n, cudaStream_t stream);
void relu_backward(float* dx, const float* x, const float* dy, int64_t n, cudaStream_t stream);
void relu_backward(bf16* dx, const bf16* x, const bf16* dy, int64_t n, cudaStream_t stream);

/// out (rows, cols) = x + bias (cols). The bias may be the activation type or
/// the fp32 master copy (bf16 activations with an fp32 bias).
void bias_add_forward(float* out, const float* x, const float* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream);
void bias_add_forward(bf16* out, const bf16* x, const bf16* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream);
void bias_add_forward(bf16* out, const bf16* x, const float* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream);

/// dbias (cols, fp32) += Σ_r dy (rows, cols). Deterministic: a block owns 32
/// columns and reduces its rows in a fixed order (no atomics). dbias must not
/// alias dy.
void bias_backward(float* dbias, const float* dy, int64_t rows, int64_t cols, cudaStream_t stream);
void bias_backward(float* dbias, const bf16* dy, int64_t rows, int64_t cols, cudaStream_t stream);

/// out[i] = a[i] + b[i] (fp32 add, rounded once to the storage type).
void residual_add(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream);
void residual_add(bf16* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream);

}  // namespace kiln
