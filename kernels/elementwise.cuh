// Device-side building blocks for memory-bound elementwise kernels: N-element
// packs loaded/stored with one vector instruction, and map kernels that walk a
// flat array in 16-byte slots with a scalar tail.
//
// Slot s covers elements [s·N, s·N + N) with N = 16 / sizeof(T) (4 floats or
// 8 bf16). When every pointer is 16-byte aligned, each full slot is aligned
// too (its byte offset is 16·s), so it moves with one LDG.128/STG.128; the last
// partial slot, or every slot when a pointer is misaligned, runs the scalar
// loop. Used by activation.cu and dropout.cu; private to kernels/.
#pragma once

#include "kernels/launch.cuh"

namespace kiln {

/// N values of T moved as one aligned vector access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

/// Elements per 16-byte slot.
template <typename T>
constexpr int pack16_size() {
  return static_cast<int>(16 / sizeof(T));
}

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& x) {
  *reinterpret_cast<Pack<T, N>*>(p) = x;
}

/// Threads per block for the elementwise kernels: enough warps per SM to
/// keep loads in flight, small enough that small tensors still spread out.
constexpr int kElementwiseBlock = 256;

/// out[i] = op(a[i]) for i in [0, n). out may alias a (each element is read
/// and written by the same thread, so no __restrict__ here).
template <typename T, typename Op>
__global__ void map1_kernel(T* out, const T* a, int64_t n, bool vec, Op op) {
  constexpr int N = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (base >= n) return;
  if (vec && base + N <= n) {
    Pack<T, N> pa = load_pack<T, N>(a + base);
    Pack<T, N> po;
#pragma unroll
    for (int k = 0; k < N; ++k) po.v[k] = from_float<T>(op(to_float(pa.v[k])));
    store_pack<T, N>(out + base, po);
  } else {
    const int64_t end = base + N < n ? base + N : n;
    for (int64_t i = base; i < end; ++i) out[i] = from_float<T>(op(to_float(a[i])));
  }
}

/// out[i] = op(a[i], b[i]) for i in [0, n). out may alias a or b.
template <typename T, typename Op>
__global__ void map2_kernel(T* out, const T* a, const T* b, int64_t n, bool vec, Op op) {
  constexpr int N = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (base >= n) return;
  if (vec && base + N <= n) {
    Pack<T, N> pa = load_pack<T, N>(a + base);
    Pack<T, N> pb = load_pack<T, N>(b + base);
    Pack<T, N> po;
#pragma unroll
    for (int k = 0; k < N; ++k) po.v[k] = from_float<T>(op(to_float(pa.v[k]), to_float(pb.v[k])));
    store_pack<T, N>(out + base, po);
  } else {
    const int64_t end = base + N < n ? base + N : n;
    for (int64_t i = base; i < end; ++i) out[i] = from_float<T>(op(to_float(a[i]), to_float(b[i])));
  }
}

/// Launches map1_kernel over n elements (host types: float or bf16).
template <typename T, typename Op>
void launch_map1(T* out, const T* a, int64_t n, Op op, cudaStream_t stream) {
  using D = device_t<T>;
  const bool vec = is_aligned(out, 16) && is_aligned(a, 16);
  launch_1d(map1_kernel<D, Op>, ceil_div(n, pack16_size<D>()), kElementwiseBlock, 0, stream, dev_ptr(out),
            dev_ptr(a), n, vec, op);
}

/// Launches map2_kernel over n elements (host types: float or bf16).
template <typename T, typename Op>
void launch_map2(T* out, const T* a, const T* b, int64_t n, Op op, cudaStream_t stream) {
  using D = device_t<T>;
  const bool vec = is_aligned(out, 16) && is_aligned(a, 16) && is_aligned(b, 16);
  launch_1d(map2_kernel<D, Op>, ceil_div(n, pack16_size<D>()), kElementwiseBlock, 0, stream, dev_ptr(out),
            dev_ptr(a), dev_ptr(b), n, vec, op);
}

}  // namespace kiln
