// The ViT's token assembly: a learned class token prepended to every image's
// patch embeddings, and the learned position embedding added, in one pass.
//
//   forward   out (B, P + N, C), P = 1 with a class token, 0 without:
//               out[b, 0, :]     = cls (C) + pos[0, :]            (P = 1)
//               out[b, P + n, :] = x[b, n, :] + pos[P + n, :]      n < N
//             pos (P + N, C) may be null (no position embedding).
//   backward  dx (B, N, C)     = dout[:, P:, :]                   (written)
//             dcls (C)        += Σ_b dout[b, 0, :]                (P = 1)
//             dpos (P + N, C) += Σ_b dout[b, :, :]
//
// The class token is a concat in token space, after the patch Linear, so it
// is not folded into kernels/patch.h (patches have p·p·C values per row, the
// class token has dim); folding the position add in here instead saves a
// pass over the activations in both directions.
//
// Determinism: dcls and dpos are reductions over the batch; each (t, c) sums
// b = 0, 1, ..., B-1 in order into a fresh accumulator (fp32 on the GPU, T on
// the CPU) and adds it to the gradient once. No atomics; in fp32 the CPU
// reference and the GPU agree bit for bit.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

// --- CPU references (T = float, double) --------------------------------------

/// out (B, P + N, C) from x (B, N, C); cls (C) or null (P = 0); pos (P + N, C) or null.
template <typename T>
void cls_token_forward_cpu(T* out, const T* x, const T* cls, const T* pos, int64_t B, int64_t N, int64_t C);
/// dx (B, N, C) written (may be null: not needed); dcls (C) and dpos (P + N, C)
/// accumulated (each may be null: frozen or absent). `has_cls` gives P.
template <typename T>
void cls_token_backward_cpu(T* dx, T* dcls, T* dpos, const T* dout, int64_t B, int64_t N, int64_t C, bool has_cls);

// --- CUDA launchers ------------------------------------------------------------

#if KILN_WITH_CUDA
/// Activations, cls and pos in the activation type (fp32, or the bf16 copies).
void cls_token_forward(float* out, const float* x, const float* cls, const float* pos, int64_t B, int64_t N,
                       int64_t C, cudaStream_t stream);
void cls_token_forward(bf16* out, const bf16* x, const bf16* cls, const bf16* pos, int64_t B, int64_t N, int64_t C,
                       cudaStream_t stream);
/// dcls, dpos: fp32 master gradients.
void cls_token_backward(float* dx, float* dcls, float* dpos, const float* dout, int64_t B, int64_t N, int64_t C,
                        bool has_cls, cudaStream_t stream);
void cls_token_backward(bf16* dx, float* dcls, float* dpos, const bf16* dout, int64_t B, int64_t N, int64_t C,
                        bool has_cls, cudaStream_t stream);
#endif

}  // namespace kiln
