// Fused multi-head scaled dot-product attention (flash-style): forward and
// backward under a mask description (causal or bidirectional, optional
// segment ids for packed sequences: kernels/attention_mask.h), CUDA launchers
// and CPU references.
//
//   O = softmax(scale · Q Kᵀ + mask) V          per batch b and head h
//   LSE[b, h, i] = log Σ_j exp(scale · q_i · k_j)  (natural log over the j
//                                                   visible to i)
//
// Layout (agreed with the model code; no permute needed before or after):
//   Q, K, V   (B, T, H, D) with a row stride: element (b, t, h, d) of Q is at
//             q[(b·T + t)·stride + h·D + d]. stride = C = H·D for separate
//             (B, T, C) tensors; stride = 3·C for the output of a fused QKV
//             projection (B, T, 3·C), with k = q + C and v = q + 2·C.
//   O, dO     (B, T, H, D) contiguous, i.e. (B, T, C).
//   LSE       (B, H, T) fp32 (Real for the CPU references).
//   dQ/dK/dV  same layout and stride as Q/K/V, so one fused (B, T, 3·C) dQKV
//             buffer works; they are overwritten (not accumulated into), and
//             nothing outside the (b, t, h, d) elements they own is touched.
//   scale     usually 1/sqrt(D); passed in.
//   mask      AttentionMask: key j is visible to query i iff
//             attention_visible(i, j, seg[b, i], seg[b, j], causal) (same T
//             for queries and keys: self-attention). segment_ids (B, T) int32,
//             non-decreasing along each row, or nullptr; a host pointer for
//             the CPU references (which check it), a device pointer for the
//             CUDA launchers (which rely on it).
//
// CUDA (kernels/attention.cu, kernels/attention_backward.cu): head dims 16,
// 32, 64 and 128, any T >= 1. bf16 inputs and outputs use tensor cores (mma.sync
// m16n8k16, ldmatrix) with fp32 accumulation and an online softmax; the T×T
// matrix is never materialized. Backward recomputes P from Q, K and LSE, runs
// a small pre-kernel for delta_i = rowsum(dO ⊙ O), accumulates dK/dV per key
// block over query blocks, and computes dQ in a separate pass over key blocks
// per query block: deterministic, no atomics. The fp32 overloads are simple
// one-warp-per-row kernels (correct, not fast). bf16 pointers must be 16-byte
// aligned and stride a multiple of 8 (true for cudaMalloc'd buffers and the
// fused-QKV offsets, since C = H·D is a multiple of 16).
// Masks: every kernel loops only over the tiles that hold a visible pair
// (the diagonal bound when causal; two binary searches over the segment ids
// per block when packed), and tiles visible as a whole skip the per-element
// mask; a packed batch costs about Σ L² over its examples instead of T² per
// row.
//
// Status: the CUDA code compiles warning-free for sm_90a (no spills) but has
// not yet run on a GPU. Its source does run, in CPU-only builds, under a host
// emulator of the CUDA subset it uses (tests/kernels/attention_emulation_test.cpp),
// and passes the same checks the GPU tests make. Next steps for speed:
// cp.async/TMA pipelining of the K/V tiles, then wgmma (Hopper warpgroup MMA).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/attention_mask.h"
#include "kernels/common.h"

namespace kiln {

/// Floats of workspace attention_backward needs (delta, (B, H, T)).
inline size_t attention_backward_workspace_floats(int B, int T, int H) {
  return static_cast<size_t>(B) * static_cast<size_t>(H) * static_cast<size_t>(T);
}

#if KILN_WITH_CUDA
/// Forward. out (B, T, H, D) contiguous; lse (B, H, T) fp32; q/k/v (B, T, H, D)
/// with row stride `stride` (see the layout above). D ∈ {16, 32, 64, 128}.
/// mask.segment_ids, if set, is a device pointer to (B, T) int32 ids,
/// non-decreasing along each row (not checked here: see attention_mask.h).
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                       int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream);
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T,
                       int H, int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream);

/// Backward. Writes dq/dk/dv (same layout and stride as q/k/v) from dout and
/// out (B, T, H, D) contiguous and the forward's lse (B, H, T).
/// `workspace` holds attention_backward_workspace_floats(B, T, H) floats.
/// `mask` must be the forward's (same causal flag and segment ids).
void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* workspace, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse, int B, int T, int H,
                        int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream);
void attention_backward(float* dq, float* dk, float* dv, float* workspace, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse, int B, int T, int H,
                        int D, int64_t stride, float scale, const AttentionMask& mask, cudaStream_t stream);
#endif

/// CPU reference forward (the CPU backend's attention): softmax(scale · Q Kᵀ) V
/// over the keys the mask leaves visible, in sgemm tiles of 64 queries with
/// full rows of visible keys, (batch, head) pairs spread over the CPU pool
/// (kernels/attention_cpu.cpp; results independent of the thread count).
/// Same layout as the CUDA launcher; any D >= 1. Real = float or double.
/// Throws InputError on decreasing segment ids (check_attention_segments).
template <typename Real>
void attention_forward_cpu(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, int B, int T, int H,
                           int D, int64_t stride, float scale, const AttentionMask& mask);

/// CPU reference backward: recomputes P from q, k and lse; delta_i = dO_i · O_i;
/// dS = P ⊙ (dO Vᵀ − delta); dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO.
template <typename Real>
void attention_backward_cpu(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q, const Real* k,
                            const Real* v, const Real* out, const Real* lse, int B, int T, int H, int D,
                            int64_t stride, float scale, const AttentionMask& mask);

}  // namespace kiln
