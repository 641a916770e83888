// Dropout with a counter-based mask: element i is kept when
//   philox_uniform(seed, offset, i) < keep,   keep = 1 - p,
// and scaled by 1 / keep. The mask is a pure function of (seed, offset, i), so
// the CPU and the GPU drop the same elements, and backward regenerates it
// from (seed, offset) instead of storing it.
//
// Element i uses Philox counter offset + i / 4, so one call consumes
// dropout_counters(n) counters; give the next dropout call (or any other
// Philox consumer) offset + dropout_counters(n) to keep the streams disjoint.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Philox counters one dropout call over n elements consumes.
inline uint64_t dropout_counters(int64_t n) { return n > 0 ? static_cast<uint64_t>((n + 3) / 4) : 0; }

// --- CPU references (T = float, double) --------------------------------------

/// out[i] = keep_i ? x[i] / (1 - p) : 0. p in [0, 1]; p = 0 copies x, p = 1
/// writes zeros. out may alias x.
template <typename T>
void dropout_forward_cpu(T* out, const T* x, int64_t n, float p, uint64_t seed, uint64_t offset);
/// dx[i] = keep_i ? dy[i] / (1 - p) : 0, with the forward's (p, seed, offset).
/// dx may alias dy.
template <typename T>
void dropout_backward_cpu(T* dx, const T* dy, int64_t n, float p, uint64_t seed, uint64_t offset);

// --- CUDA launchers (fp32 math, bf16 or fp32 storage) -------------------------

void dropout_forward(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);
void dropout_forward(bf16* out, const bf16* x, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);
void dropout_backward(float* dx, const float* dy, int64_t n, float p, uint64_t seed, uint64_t offset,
                      cudaStream_t stream);
void dropout_backward(bf16* dx, const bf16* dy, int64_t n, float p, uint64_t seed, uint64_t offset,
                      cudaStream_t stream);

}  // namespace kiln
