// Cast op family: element-wise dtype conversion.
//
// Semantics (the same on CPU and GPU where both exist):
//   to bf16      round to nearest even through float (NaN stays NaN)
//   to float     round to nearest (int32 above 2^24 rounds; u16/u8/bf16 exact)
//   to double    exact from every type (CPU only)
//   to integers  truncate toward zero, saturate at the type's range, NaN -> 0
//                (CPU only)
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

// --- CUDA launchers (kernels/cast.cu): y[i] = convert(x[i]) for i < n ------
void cast_forward(const float* x, bf16* y, int64_t n, cudaStream_t stream);
void cast_forward(const bf16* x, float* y, int64_t n, cudaStream_t stream);
void cast_forward(const int32_t* x, float* y, int64_t n, cudaStream_t stream);
void cast_forward(const uint16_t* x, float* y, int64_t n, cudaStream_t stream);
void cast_forward(const uint8_t* x, float* y, int64_t n, cudaStream_t stream);
void cast_forward(const int32_t* x, bf16* y, int64_t n, cudaStream_t stream);
void cast_forward(const uint16_t* x, bf16* y, int64_t n, cudaStream_t stream);
void cast_forward(const uint8_t* x, bf16* y, int64_t n, cudaStream_t stream);

// --- CPU reference (kernels/cast_cpu.cpp) ----------------------------------
/// Src, Dst in {float, double, bf16, int32_t, uint16_t, uint8_t}, every pair.
template <typename Src, typename Dst> void cast_forward_cpu(const Src* x, Dst* y, int64_t n);

}  // namespace kiln
