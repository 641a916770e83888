// Patch extraction for vision transformers: an NHWC image cut into
// non-overlapping p × p patches, each flattened into one row.
//
//   forward   out (B, N, p·p·C) with N = (H/p)·(W/p):
//             out[b, py·(W/p) + px, (iy·p + ix)·C + c] = x[b, py·p + iy, px·p + ix, c]
//   backward  dx (B, H, W, C) = the inverse permutation of dout (B, N, p·p·C)
//
// Patches are numbered row-major over the patch grid, and inside a patch the
// values run (row, column, channel): the same order as a convolution filter
// in kiln's KRSC layout (runtime/conv.h), i.e. PyTorch's Conv2d(C, dim, p,
// stride p) weight permuted by (0, 2, 3, 1) and flattened. So "patch, then
// Linear(p·p·C → dim)" is exactly that strided convolution, with weights that
// convert by a reshape.
//
// Every input pixel lands in exactly one output slot (p must divide H and
// W), so both directions are pure permutations: they write every element of
// their output, accumulate nothing, and are exact in any dtype (bf16 moves
// bits, no rounding). The backward is deterministic by construction.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Throws kiln::InputError naming `who` unless B, H, W, C >= 0, p >= 1 and p
/// divides H and W.
void check_patch_shape(int64_t B, int64_t H, int64_t W, int64_t C, int64_t p, const char* who);

// --- CPU references (T = float, double) --------------------------------------

/// out (B, N, p·p·C) = patches of x (B, H, W, C); see the file comment.
template <typename T>
void patch_forward_cpu(T* out, const T* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p);
/// dx (B, H, W, C) = dout (B, N, p·p·C) put back in image order (written).
template <typename T>
void patch_backward_cpu(T* dx, const T* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p);

// --- CUDA launchers ------------------------------------------------------------

#if KILN_WITH_CUDA
void patch_forward(float* out, const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                   cudaStream_t stream);
void patch_forward(bf16* out, const bf16* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                   cudaStream_t stream);
void patch_backward(float* dx, const float* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                    cudaStream_t stream);
void patch_backward(bf16* dx, const bf16* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                    cudaStream_t stream);
#endif

}  // namespace kiln
