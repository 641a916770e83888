// The one launch helper every CUDA launcher goes through: computes the grid
// for n work items, launches on an explicit stream and checks the launch.
// Also: vector-load helpers and bf16/float conversions for device code.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common.h"
#include "runtime/error.h"

namespace kiln {

/// ceil(a / b) for positive integers.
__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Launch `kernel<<<ceil(n / block), block, smem, stream>>>(args...)` and check it.
/// n == 0 launches nothing (CUDA rejects empty grids).
template <typename Kernel, typename... Args>
void launch_1d(Kernel kernel, int64_t n, int block, size_t smem, cudaStream_t stream, Args... args) {
  if (n <= 0) return;
  const int64_t grid = ceil_div(n, block);
  KILN_CHECK(grid <= 0x7fffffffLL, "launch_1d: " << n << " items exceed the grid limit");
  kernel<<<static_cast<unsigned>(grid), block, smem, stream>>>(args...);
  KILN_LAUNCH_CHECK();
}

/// Launch with an explicit grid (rows, blocks...) and check it. Empty grids
/// launch nothing.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  kernel<<<grid, block, smem, stream>>>(args...);
  KILN_LAUNCH_CHECK();
}

// Load/store an element as float whatever its storage type.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/// Map the host-side types used in launcher signatures to device types.
template <typename T> struct device_type { using type = T; };
template <> struct device_type<bf16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename device_type<T>::type;

template <typename T> __host__ __device__ inline device_t<T>* dev_ptr(T* p) {
  return reinterpret_cast<device_t<T>*>(p);
}
template <typename T> __host__ __device__ inline const device_t<T>* dev_ptr(const T* p) {
  return reinterpret_cast<const device_t<T>*>(p);
}

/// True when p is aligned for a `bytes`-wide vector access.
__host__ __device__ inline bool is_aligned(const void* p, int bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

}  // namespace kiln
