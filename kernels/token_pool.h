// Pooling a sequence of tokens into one vector per example, for a
// classifier head on a transformer encoder (the ViT):
//
//   forward   out (B, C) = (1/count) · Σ_{t = first}^{first + count - 1} x[b, t, :]
//   backward  dx (B, T, C): dx[b, t, :] = dout[b, :] / count for t in the
//             window, 0 elsewhere (written, every element)
//
// `cls` pooling is the window (first 0, count 1): a gather of the class
// token's row, exact in any dtype. `mean` pooling is the window over the
// patch tokens (first = 1 with a class token, 0 without).
//
// The sum runs t = first, first + 1, ... in order into an fp32 accumulator on
// the GPU (T on the CPU) and is divided by count once, so CPU (fp32) and GPU
// fp32 agree bit for bit; no atomics anywhere.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Throws kiln::Error naming `who` unless B, T, C >= 0 and the window is a
/// non-empty range of the T tokens (first >= 0, count >= 1, first + count <= T).
void check_token_pool_shape(int64_t B, int64_t T, int64_t C, int64_t first, int64_t count, const char* who);

// --- CPU references (T = float, double) --------------------------------------

template <typename R>
void token_pool_forward_cpu(R* out, const R* x, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count);
template <typename R>
void token_pool_backward_cpu(R* dx, const R* dout, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count);

// --- CUDA launchers ------------------------------------------------------------

#if KILN_WITH_CUDA
void token_pool_forward(float* out, const float* x, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count,
                        cudaStream_t stream);
void token_pool_forward(bf16* out, const bf16* x, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count,
                        cudaStream_t stream);
void token_pool_backward(float* dx, const float* dout, int64_t B, int64_t T, int64_t C, int64_t first,
                         int64_t count, cudaStream_t stream);
void token_pool_backward(bf16* dx, const bf16* dout, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count,
                         cudaStream_t stream);
#endif

}  // namespace kiln
