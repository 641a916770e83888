// What every kernel header needs: a stream type that exists in the CPU-only
// build too, and kiln::bf16, a host-side bfloat16 with the same 16-bit layout
// as CUDA's __nv_bfloat16 (launchers take kiln::bf16* and reinterpret it).
//
// Convention for an op family <op> (see ../shared/style.md):
//   kernels/<op>.h        declares  <op>_forward(..., cudaStream_t)   (CUDA)
//                         and       <op>_forward_cpu<T>(...)          (CPU reference,
//                                   T = float and double; double serves the
//                                   finite-difference checks)
//   kernels/<op>.cu       CUDA kernels + launchers (built only with CUDA)
//   kernels/<op>_cpu.cpp  CPU references
#pragma once

#include <cstdint>
#include <cstring>

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#else
// Same declaration as the CUDA runtime's, so headers compile without it.
typedef struct CUstream_st* cudaStream_t;
#endif

namespace kiln {

/// bfloat16 on the host: the top 16 bits of an IEEE float.
struct bf16 {
  uint16_t bits = 0;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

/// Round to nearest even, NaN stays NaN (quiet) — the same rounding as
/// __float2bfloat16_rn on the GPU, so CPU and GPU casts agree bit for bit.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  bf16 r;
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
    r.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return r;
  }
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  r.bits = static_cast<uint16_t>((u + rounding) >> 16);
  return r;
}

inline float bf16_to_float(bf16 b) {
  uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Round-trip a float through bf16 (what a bf16 tensor would store).
inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace kiln
