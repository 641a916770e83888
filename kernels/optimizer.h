// Multi-tensor optimizers: AdamW and SGD over a list of parameter tensors in
// one pass (on the GPU, one launch for up to kOptimizerTensorsPerLaunch
// tensors; GPT-2 124M has 148). fp32 master weights and moments; optionally a
// bf16 copy of each updated weight is written in the same pass.
//
// Update rules (PyTorch's published ones, torch.optim.AdamW / SGD):
//
//   g = grad · grad_scale · (*grad_scale_ptr, if given)        (clipping)
//   AdamW:  p ← p · (1 - lr·wd)                                (decoupled decay, first)
//           m ← m + (1 - β1)·(g - m)                            (= β1·m + (1 - β1)·g)
//           v ← β2·v + (1 - β2)·g²
//           p ← p - (lr / (1 - β1^t)) · m / (sqrt(v) / sqrt(1 - β2^t) + eps)
//   SGD:    g ← g + wd·p                                        (coupled L2, as PyTorch)
//           if momentum ≠ 0:  b ← momentum·b + g  (dampening 0; b starts at 0,
//                             which equals PyTorch's b = g on the first step)
//                             g ← nesterov ? g + momentum·b : b
//           p ← p - lr·g
//
// The caller increments `step` before each AdamW call (the first call uses 1)
// and zero-fills m and v (and SGD's momentum buffer) once at start — or hands
// AdamWConfig::step_counter, the updates done so far in memory the update
// reads (device memory for the CUDA launcher), which the launch advances.
//
// Non-finite steps are skipped where the decision lives: with `skip` set
// (the flag global_norm sets in kernels/norm.h) and *skip != 0, nothing is
// written (weights, moments, bf16 copies) and the step counter stays, so a
// skipped step leaves the optimizer exactly as it was, and the host never
// reads the norm back to decide.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// One parameter tensor, as raw pointers (all of length n).
template <typename T>
struct OptimizerTensorT {
  T* param = nullptr;           ///< master weights, updated in place
  const T* grad = nullptr;      ///< gradient (read only)
  T* m = nullptr;               ///< AdamW first moment / SGD momentum buffer (nullptr: SGD without momentum)
  T* v = nullptr;               ///< AdamW second moment (unused by SGD)
  bf16* param_bf16 = nullptr;   ///< optional bf16 copy of the updated weights
  int64_t n = 0;                ///< elements
  float weight_decay = 0.0f;    ///< per tensor (0 for biases and norms, typically)
};
using OptimizerTensor = OptimizerTensorT<float>;

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  int64_t step = 1;                       ///< t ≥ 1, for the bias corrections
  float grad_scale = 1.0f;                ///< multiplies every gradient
  const float* grad_scale_ptr = nullptr;  ///< also multiplies, if set: a device pointer for the CUDA
                                          ///< launcher (e.g. the clip scale from norm.h), host for the CPU
  const float* skip = nullptr;            ///< if set and *skip != 0: no update at all (same memory rule)
  /// If set: t = *step_counter + 1 (`step` is ignored), and *step_counter
  /// becomes t after the update unless it was skipped (same memory rule).
  int32_t* step_counter = nullptr;
};

struct SgdConfig {
  float lr = 1e-2f;
  float momentum = 0.0f;
  bool nesterov = false;
  float grad_scale = 1.0f;
  const float* grad_scale_ptr = nullptr;  ///< as in AdamWConfig
  const float* skip = nullptr;            ///< as in AdamWConfig
  int32_t* step_counter = nullptr;        ///< if set: advanced by one unless skipped (SGD reads no t)
};

// --- CPU references (T = float, double; param_bf16 written from float(p)) ----

template <typename T>
void adamw_step_cpu(const OptimizerTensorT<T>* tensors, int64_t count, const AdamWConfig& cfg);
template <typename T>
void sgd_step_cpu(const OptimizerTensorT<T>* tensors, int64_t count, const SgdConfig& cfg);

// --- CUDA launchers -------------------------------------------------------------

/// Tensors per kernel launch: their descriptors travel as one kernel
/// parameter (64 B each, 16 KiB in all; CUDA 12.1+ allows 32 KiB of
/// parameters). Longer lists are split into several launches.
constexpr int kOptimizerTensorsPerLaunch = 256;
/// Elements per block-sized chunk of a tensor.
constexpr int64_t kOptimizerChunk = 16384;

/// One AdamW step over all tensors (device pointers), stream-ordered.
void adamw_step(const OptimizerTensor* tensors, int64_t count, const AdamWConfig& cfg, cudaStream_t stream);
/// One SGD step over all tensors (device pointers), stream-ordered.
void sgd_step(const OptimizerTensor* tensors, int64_t count, const SgdConfig& cfg, cudaStream_t stream);

}  // namespace kiln
