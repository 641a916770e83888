// CUDA fills (see kernels/fill.h). Memory-bound: a fill of n floats writes
// 4n bytes, so 1 GiB takes ~0.25 ms at H200 bandwidth; the Philox fills do
// ~40 integer ops per 4 (uniform) or 2 (normal) outputs and stay close to that.
#include "kernels/fill.h"
#include "kernels/launch.cuh"
#include "runtime/philox.h"

namespace kiln {
namespace {

constexpr int kBlock = 256;

__device__ __forceinline__ int64_t global_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

template <typename T>
__global__ void fill_constant_kernel(T* y, T value, int64_t n) {
  const int64_t i = global_index();
  if (i < n) y[i] = value;
}

template <typename D>
__global__ void fill_arange_kernel(D* y, int64_t n) {
  const int64_t i = global_index();
  if (i < n) y[i] = from_float<D>(static_cast<float>(i));  // __ll2float_rn, as the CPU's cast
}

__global__ void fill_arange_i32_kernel(int32_t* y, int64_t n) {
  const int64_t i = global_index();
  if (i < n) y[i] = static_cast<int32_t>(i);
}

// One thread per Philox counter c: elements 4c .. 4c+3.
template <typename D>
__global__ void fill_uniform_kernel(D* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float range) {
  const int64_t c = global_index();
  const int64_t base = c * 4;
  if (base >= n) return;
  const Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(c));
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (base + j < n) y[base + j] = from_float<D>(fmaf(philox_word_to_uniform(r.v[j]), range, lo));
}

// One thread per Philox counter c: elements 2c (words 0, 1) and 2c+1 (words 2, 3).
template <typename D>
__global__ void fill_normal_kernel(D* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev) {
  const int64_t c = global_index();
  const int64_t base = c * 2;
  if (base >= n) return;
  const Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(c));
  y[base] = from_float<D>(fmaf(philox_words_to_normal(r.v[0], r.v[1]), stddev, mean));
  if (base + 1 < n) y[base + 1] = from_float<D>(fmaf(philox_words_to_normal(r.v[2], r.v[3]), stddev, mean));
}

}  // namespace

void fill_constant(float* y, float value, int64_t n, cudaStream_t stream) {
  launch_1d(fill_constant_kernel<float>, n, kBlock, 0, stream, y, value, n);
}
void fill_constant(bf16* y, bf16 value, int64_t n, cudaStream_t stream) {
  // A bf16 constant is a 16-bit pattern: store the bits.
  launch_1d(fill_constant_kernel<uint16_t>, n, kBlock, 0, stream, reinterpret_cast<uint16_t*>(y), value.bits, n);
}
void fill_constant(int32_t* y, int32_t value, int64_t n, cudaStream_t stream) {
  launch_1d(fill_constant_kernel<int32_t>, n, kBlock, 0, stream, y, value, n);
}
void fill_constant(uint16_t* y, uint16_t value, int64_t n, cudaStream_t stream) {
  launch_1d(fill_constant_kernel<uint16_t>, n, kBlock, 0, stream, y, value, n);
}
void fill_constant(uint8_t* y, uint8_t value, int64_t n, cudaStream_t stream) {
  launch_1d(fill_constant_kernel<uint8_t>, n, kBlock, 0, stream, y, value, n);
}

void fill_arange(float* y, int64_t n, cudaStream_t stream) {
  launch_1d(fill_arange_kernel<float>, n, kBlock, 0, stream, y, n);
}
void fill_arange(bf16* y, int64_t n, cudaStream_t stream) {
  launch_1d(fill_arange_kernel<__nv_bfloat16>, n, kBlock, 0, stream, dev_ptr(y), n);
}
void fill_arange(int32_t* y, int64_t n, cudaStream_t stream) {
  launch_1d(fill_arange_i32_kernel, n, kBlock, 0, stream, y, n);
}

void fill_uniform(float* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t stream) {
  launch_1d(fill_uniform_kernel<float>, static_cast<int64_t>(uniform_counters(n)), kBlock, 0, stream, y, n, seed,
            offset, lo, hi - lo);
}
void fill_uniform(bf16* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t stream) {
  launch_1d(fill_uniform_kernel<__nv_bfloat16>, static_cast<int64_t>(uniform_counters(n)), kBlock, 0, stream,
            dev_ptr(y), n, seed, offset, lo, hi - lo);
}

void fill_normal(float* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev,
                 cudaStream_t stream) {
  launch_1d(fill_normal_kernel<float>, static_cast<int64_t>(normal_counters(n)), kBlock, 0, stream, y, n, seed,
            offset, mean, stddev);
}
void fill_normal(bf16* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev,
                 cudaStream_t stream) {
  launch_1d(fill_normal_kernel<__nv_bfloat16>, static_cast<int64_t>(normal_counters(n)), kBlock, 0, stream,
            dev_ptr(y), n, seed, offset, mean, stddev);
}

}  // namespace kiln
