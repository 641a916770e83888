// Global gradient L2 norm over many tensors, and the clipping scale
//   scale = min(1, max_norm / (norm + 1e-6))
// that the optimizer applies to every gradient (AdamWConfig::grad_scale_ptr /
// SgdConfig::grad_scale_ptr in optimizer.h), as torch.nn.utils.clip_grad_norm_.
//
// GPU path: deterministic two-pass reduction. Pass 1 runs a fixed grid of
// kNormPartials blocks; block b sums the squares of chunks b, b + grid, ... of
// the concatenated tensors and writes one partial; pass 2 (one block) adds
// the partials in a fixed order and writes the norm (and the scale) to device
// memory. Nothing waits for the host: the optimizer reads the scale through a
// pointer on the same stream.
//
// Non-finite steps: given a `nonfinite` flag (a device float), pass 2 sets it
// to 1 when the norm is NaN or infinite and leaves it as it is otherwise; the
// optimizer (AdamWConfig::skip / SgdConfig::skip) then skips the update on
// the device, so no one reads the norm back to decide.
//
// Sharded gradients (ZeRO-1): run pass 1 on each rank's shard, sum the
// kNormPartials partials over ranks (an all-reduce of that small buffer),
// then pass 2 on every rank: global_norm_partials + global_norm_finish.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common.h"

#if defined(__CUDACC__)
#define KILN_NORM_HD __host__ __device__ __forceinline__
#else
#define KILN_NORM_HD inline
#endif

namespace kiln {

/// One gradient tensor: n values at data.
template <typename T>
struct NormTensorT {
  const T* data = nullptr;
  int64_t n = 0;
};
using NormTensor = NormTensorT<float>;

/// min(1, max_norm / (norm + 1e-6)). A NaN norm gives NaN (as torch.clamp
/// does), an infinite norm gives 0; the trainer should check the norm is
/// finite before stepping.
template <typename T>
KILN_NORM_HD T clip_scale_from_norm(T norm, T max_norm) {
  const T c = max_norm / (norm + T(1e-6));
  return c > T(1) ? T(1) : c;
}

// --- CPU references (T = float, double) --------------------------------------

/// sqrt(Σ_k Σ_i tensors[k].data[i]²), accumulated in double over fixed
/// blocks of each tensor (16384 elements) whose sums are added in order: the
/// blocks run on the CPU pool, the result does not depend on the thread count.
template <typename T>
T global_norm_cpu(const NormTensorT<T>* tensors, int64_t count);

/// CPU counterpart of global_norm_clip with the flag, writing host memory:
/// *norm = global_norm_cpu(...); *scale (if given) = min(1, max_norm /
/// (norm + 1e-6)) computed in double (1 when max_norm <= 0 or the norm is not
/// finite); *nonfinite (if given) = 1 when the norm is not finite, else left
/// as it is.
template <typename T>
void global_norm_clip_cpu(T* norm, T* scale, T* nonfinite, const NormTensorT<T>* tensors, int64_t count,
                          double max_norm);

// --- CUDA launchers -------------------------------------------------------------

/// Blocks of the first pass, and floats of workspace the launchers need.
constexpr int kNormPartials = 512;
/// Tensors per first-pass launch (24-byte descriptors in parameter space);
/// longer lists take several launches that add into the same partials.
constexpr int kNormTensorsPerLaunch = 1024;

/// *norm (device float) = global L2 norm of the fp32 tensors (device
/// pointers). workspace: kNormPartials device floats. Stream-ordered, no sync.
/// `nonfinite` (optional device float): set to 1 when the norm is not finite.
void global_norm(float* norm, const NormTensor* tensors, int64_t count, float* workspace, cudaStream_t stream,
                 float* nonfinite = nullptr);
/// Same, and *scale (device float) = clip_scale_from_norm(*norm, max_norm).
void global_norm_clip(float* norm, float* scale, const NormTensor* tensors, int64_t count, float max_norm,
                      float* workspace, cudaStream_t stream, float* nonfinite = nullptr);
/// Pass 1 alone: partials (kNormPartials device floats) = this list's sums
/// of squares, split as global_norm splits them.
void global_norm_partials(float* partials, const NormTensor* tensors, int64_t count, cudaStream_t stream);
/// Pass 2 alone: *norm = sqrt(Σ partials); *scale (if given) as in
/// global_norm_clip (1 when max_norm <= 0); *nonfinite (if given) as above.
void global_norm_finish(float* norm, float* scale, float* nonfinite, const float* partials, float max_norm,
                        cudaStream_t stream);

}  // namespace kiln
