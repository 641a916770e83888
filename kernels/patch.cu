// CUDA patch extraction (kernels/patch.h).
//
// One thread moves one 16-byte pack (4 floats / 8 bf16) of the patch-major
// array, or a scalar when the run length p·C is not a multiple of the pack
// (or a pointer is misaligned). A pack never crosses a run of p·C values, and
// a run is contiguous on both sides, so both the gather (forward) and the
// scatter (backward) are 16-byte accesses.
//
// Napkin math: the op moves 2·B·H·W·C·s bytes; a batch of 256 Fashion-MNIST
// images (28x28x1 fp32) is 0.8 MB each way, ~0.4 µs at 4 TB/s, so the launch
// dominates. At ImageNet size (256x224x224x3 bf16, 77 MB each way) it is
// ~40 µs: worth keeping vectorized.
#include "kernels/elementwise.cuh"
#include "kernels/patch.h"

namespace kiln {

namespace {

// Maps offset e of the patch-major (B, N, p·p·C) array to the image offset of
// the same element of (B, H, W, C).
__device__ __forceinline__ int64_t image_offset(int64_t e, int64_t H, int64_t W, int64_t C, int64_t p) {
  const int64_t run = p * C, gw = W / p, per_image = H * W * C;
  const int64_t b = e / per_image;
  int64_t r = e - b * per_image;          // offset inside the image's patches
  const int64_t patch = r / (p * run);    // py·gw + px
  r -= patch * p * run;
  const int64_t iy = r / run, within = r - iy * run;  // row inside the patch, (ix·C + c)
  const int64_t py = patch / gw, px = patch - py * gw;
  return ((b * H + py * p + iy) * W + px * p) * C + within;
}

// kForward: dst = patches (patch-major index e), src = image. Otherwise the
// other way round. `vec`: every pack of N elements stays inside one run and
// every pointer is 16-byte aligned.
template <typename T, bool kForward>
__global__ void patch_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t total, int64_t H, int64_t W,
                             int64_t C, int64_t p, bool vec) {
  constexpr int N = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (base >= total) return;
  if (vec && base + N <= total) {
    const int64_t img = image_offset(base, H, W, C, p);
    if (kForward)
      store_pack<T, N>(dst + base, load_pack<T, N>(src + img));
    else
      store_pack<T, N>(dst + img, load_pack<T, N>(src + base));
  } else {
    const int64_t end = base + N < total ? base + N : total;
    for (int64_t e = base; e < end; ++e) {
      const int64_t img = image_offset(e, H, W, C, p);
      if (kForward)
        dst[e] = src[img];
      else
        dst[img] = src[e];
    }
  }
}

template <bool kForward, typename T>
void launch_patch(T* dst, const T* src, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p, cudaStream_t stream,
                  const char* who) {
  check_patch_shape(B, H, W, C, p, who);
  using D = device_t<T>;
  constexpr int N = pack16_size<D>();
  const int64_t total = B * H * W * C;
  const bool vec = (p * C) % N == 0 && is_aligned(dst, 16) && is_aligned(src, 16);
  launch_1d(patch_kernel<D, kForward>, ceil_div(total, N), kElementwiseBlock, 0, stream, dev_ptr(dst), dev_ptr(src),
            total, H, W, C, p, vec);
}

}  // namespace

void patch_forward(float* out, const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                   cudaStream_t stream) {
  launch_patch<true>(out, x, B, H, W, C, p, stream, "patch_forward");
}
void patch_forward(bf16* out, const bf16* x, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                   cudaStream_t stream) {
  launch_patch<true>(out, x, B, H, W, C, p, stream, "patch_forward");
}
void patch_backward(float* dx, const float* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                    cudaStream_t stream) {
  launch_patch<false>(dx, dout, B, H, W, C, p, stream, "patch_backward");
}
void patch_backward(bf16* dx, const bf16* dout, int64_t B, int64_t H, int64_t W, int64_t C, int64_t p,
                    cudaStream_t stream) {
  launch_patch<false>(dx, dout, B, H, W, C, p, stream, "patch_backward");
}

}  // namespace kiln
