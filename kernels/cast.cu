// CUDA casts (see kernels/cast.h). Memory-bound: n·(sizeof(Src)+sizeof(Dst))
// bytes per call.
#include "kernels/cast.h"
#include "kernels/launch.cuh"

namespace kiln {
namespace {

constexpr int kBlock = 256;

// Integer to float: the default conversions round to nearest (__int2float_rn,
// __uint2float_rn), as the CPU reference's cast through double does.
__device__ __forceinline__ float load_float(int32_t x) { return static_cast<float>(x); }
__device__ __forceinline__ float load_float(uint16_t x) { return static_cast<float>(x); }
__device__ __forceinline__ float load_float(uint8_t x) { return static_cast<float>(x); }
__device__ __forceinline__ float load_float(float x) { return x; }
__device__ __forceinline__ float load_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename S, typename D>
__global__ void cast_kernel(const S* x, D* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = from_float<D>(load_float(x[i]));
}

template <typename S, typename D>
void cast_launch(const S* x, D* y, int64_t n, cudaStream_t stream) {
  launch_1d(cast_kernel<device_t<S>, device_t<D>>, n, kBlock, 0, stream, dev_ptr(x), dev_ptr(y), n);
}

}  // namespace

void cast_forward(const float* x, bf16* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const bf16* x, float* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const int32_t* x, float* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const uint16_t* x, float* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const uint8_t* x, float* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const int32_t* x, bf16* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const uint16_t* x, bf16* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }
void cast_forward(const uint8_t* x, bf16* y, int64_t n, cudaStream_t s) { cast_launch(x, y, n, s); }

}  // namespace kiln
