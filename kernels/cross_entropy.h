// Fused softmax cross-entropy over a (padded) vocabulary. CUDA launchers
// (kernels/cross_entropy.cu) and CPU references (kernels/cross_entropy_cpu.cpp).
//
//   logits   (rows, Vp), float or bf16 on the GPU; the real vocabulary is the
//            first V columns, columns [V, Vp) are padding (GPT-2 pads 50257
//            to 50304 = 393·128) and are never read.
//   targets  (rows,) int32 in [0, V), or ignore_index (-100): no loss, no gradient.
//   losses   (rows,) fp32: logsumexp(logits[r, :V]) - logits[r, target[r]], 0 for ignored rows.
//   dlogits  written IN PLACE over logits, never storing the probabilities:
//            dlogits[r, c] = scale · (softmax(logits[r, :V])[c] - [c == target[r]]) for c < V,
//            0 for c in [V, Vp) and for ignored rows.
//
// Label smoothing ε (default 0): the target distribution is (1 − ε)·onehot
// + ε/V uniform over the V real columns, as torch.nn.CrossEntropyLoss's
// label_smoothing: loss = logsumexp − (1 − ε)·x_target − (ε/V)·Σ_c x_c, and
// dlogits = scale · (softmax − (1 − ε)·onehot − ε/V). ε = 0 gives the plain
// loss bit for bit.
//
// The reduction is the caller's: for the mean over non-ignored rows pass
// scale = cross_entropy_mean_scale(cross_entropy_count_valid(...)) and sum
// `losses` (deterministically) times the same scale. fp32 arithmetic on the
// GPU, double in the CPU references.
//
// A target outside [0, V) that is not ignore_index is a caller bug: the CPU
// reference throws; the GPU kernel cannot, so it writes NaN for that row's
// loss and gradient, which the loss curve shows at once.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Targets equal to this contribute no loss and no gradient (PyTorch's default).
constexpr int32_t kIgnoreIndex = -100;

/// Rows whose target is not ignore_index (host-side; targets are on the host
/// before they are uploaded).
inline int64_t cross_entropy_count_valid(const int32_t* targets, int64_t rows, int32_t ignore_index = kIgnoreIndex) {
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r) n += targets[r] != ignore_index;
  return n;
}

/// 1 / num_valid, or 0 when every row is ignored (so the gradient is 0, not NaN).
inline float cross_entropy_mean_scale(int64_t num_valid) {
  return num_valid > 0 ? 1.0f / static_cast<float>(num_valid) : 0.0f;
}

#if KILN_WITH_CUDA
/// Fused forward + backward: losses (rows,) and dlogits over logits (rows, Vp)
/// in place, dlogits scaled by `scale` (see above). Requires 1 <= V <= Vp.
void cross_entropy_forward_backward(float* logits, float* losses, const int32_t* targets, int64_t rows, int64_t V,
                                    int64_t Vp, float scale, cudaStream_t stream,
                                    int32_t ignore_index = kIgnoreIndex, float label_smoothing = 0.0f);
void cross_entropy_forward_backward(bf16* logits, float* losses, const int32_t* targets, int64_t rows, int64_t V,
                                    int64_t Vp, float scale, cudaStream_t stream,
                                    int32_t ignore_index = kIgnoreIndex, float label_smoothing = 0.0f);

/// Forward only (evaluation): losses (rows,); logits are not modified.
void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t rows, int64_t V,
                           int64_t Vp, cudaStream_t stream, int32_t ignore_index = kIgnoreIndex,
                           float label_smoothing = 0.0f);
void cross_entropy_forward(float* losses, const bf16* logits, const int32_t* targets, int64_t rows, int64_t V,
                           int64_t Vp, cudaStream_t stream, int32_t ignore_index = kIgnoreIndex,
                           float label_smoothing = 0.0f);
#endif

/// CPU reference of cross_entropy_forward_backward (T = float or double):
/// losses (rows,) in T, dlogits in place over logits.
template <typename T>
void cross_entropy_forward_backward_cpu(T* logits, T* losses, const int32_t* targets, int64_t rows, int64_t V,
                                        int64_t Vp, float scale, int32_t ignore_index = kIgnoreIndex,
                                        float label_smoothing = 0.0f);

/// CPU reference of cross_entropy_forward.
template <typename T>
void cross_entropy_forward_cpu(T* losses, const T* logits, const int32_t* targets, int64_t rows, int64_t V,
                               int64_t Vp, int32_t ignore_index = kIgnoreIndex, float label_smoothing = 0.0f);

}  // namespace kiln
