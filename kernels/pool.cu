// Pooling CUDA kernels over NHWC images (see pool.h for the semantics; the
// CPU references are in pool_cpu.cpp, and both share pool_math.h).
//
// One thread per output element (forward) or per input element (backward
// gather), channel fastest, so a warp touches 32 consecutive channels of one
// pixel: coalesced for C >= 32. Napkin math (H200, ~4.8 TB/s): a 2x2/2
// max-pool forward reads x once and writes y and argmax (x/4 each, argmax in
// int32): ResNet-sized 256 x 28x28x64 bf16 → 25.7 MB read + 3.2 + 6.4 MB
// written ≈ 7 µs. The backward reads dy and argmax of the ≤ ⌈k/s⌉² windows
// of each pixel and writes dx once: no atomics, deterministic.
//
// Status: compiled for sm_90a; never run on a GPU yet.
#include "kernels/launch.cuh"
#include "kernels/pool.h"
#include "kernels/pool_math.h"

namespace kiln {

namespace {

// Sizes as kernel arguments (PoolShape's members, plus the output size).
struct Dims {
  int64_t n, h, w, c, kh, kw, sh, sw, ph, pw, P, Q;
};

Dims dims(const PoolShape& s) { return {s.n, s.h, s.w, s.c, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.out_h(), s.out_w()}; }

template <typename T>
__global__ void maxpool_forward_kernel(T* y, int32_t* argmax, const T* x, Dims d, int64_t total) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % d.c, q = (i / d.c) % d.Q, p = (i / (d.c * d.Q)) % d.P, n = i / (d.c * d.Q * d.P);
  const T* xn = x + n * d.h * d.w * d.c + c;
  float best = 0.0f;
  int32_t arg = 0;
  bool first = true;
  for (int64_t r = 0; r < d.kh; ++r) {
    const int64_t ih = p * d.sh - d.ph + r;
    if (ih < 0 || ih >= d.h) continue;
    for (int64_t t = 0; t < d.kw; ++t) {
      const int64_t iw = q * d.sw - d.pw + t;
      if (iw < 0 || iw >= d.w) continue;
      const float v = to_float(xn[(ih * d.w + iw) * d.c]);
      if (first || v > best || isnan(v)) {  // first max wins; NaN propagates (PyTorch's rule)
        best = v;
        arg = static_cast<int32_t>(ih * d.w + iw);
      }
      first = false;
    }
  }
  y[i] = from_float<T>(best);  // exact: best is one of the inputs
  if (argmax) argmax[i] = arg;
}

template <typename T>
__global__ void maxpool_backward_kernel(T* dx, const T* dy, const int32_t* __restrict__ argmax, Dims d,
                                        int64_t total) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % d.c, w = (i / d.c) % d.w, h = (i / (d.c * d.w)) % d.h, n = i / (d.c * d.w * d.h);
  int64_t p0, p1, q0, q1;
  pool::windows_containing(h, d.kh, d.sh, d.ph, d.P, &p0, &p1);
  pool::windows_containing(w, d.kw, d.sw, d.pw, d.Q, &q0, &q1);
  const int32_t me = static_cast<int32_t>(h * d.w + w);
  float acc = 0.0f;
  for (int64_t p = p0; p <= p1; ++p)
    for (int64_t q = q0; q <= q1; ++q) {
      const int64_t o = ((n * d.P + p) * d.Q + q) * d.c + c;
      if (__ldg(argmax + o) == me) acc += to_float(dy[o]);
    }
  dx[i] = from_float<T>(acc);
}

template <typename T>
__global__ void avgpool_forward_kernel(T* y, const T* x, Dims d, bool include_pad, int64_t total) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % d.c, q = (i / d.c) % d.Q, p = (i / (d.c * d.Q)) % d.P, n = i / (d.c * d.Q * d.P);
  const T* xn = x + n * d.h * d.w * d.c + c;
  float acc = 0.0f;
  for (int64_t r = 0; r < d.kh; ++r) {
    const int64_t ih = p * d.sh - d.ph + r;
    if (ih < 0 || ih >= d.h) continue;
    for (int64_t t = 0; t < d.kw; ++t) {
      const int64_t iw = q * d.sw - d.pw + t;
      if (iw >= 0 && iw < d.w) acc += to_float(xn[(ih * d.w + iw) * d.c]);
    }
  }
  const int64_t div = pool::avg_divisor(p, q, d.h, d.w, d.kh, d.kw, d.sh, d.sw, d.ph, d.pw, include_pad);
  y[i] = from_float<T>(acc / static_cast<float>(div));
}

template <typename T>
__global__ void avgpool_backward_kernel(T* dx, const T* dy, Dims d, bool include_pad, int64_t total) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t c = i % d.c, w = (i / d.c) % d.w, h = (i / (d.c * d.w)) % d.h, n = i / (d.c * d.w * d.h);
  int64_t p0, p1, q0, q1;
  pool::windows_containing(h, d.kh, d.sh, d.ph, d.P, &p0, &p1);
  pool::windows_containing(w, d.kw, d.sw, d.pw, d.Q, &q0, &q1);
  float acc = 0.0f;
  for (int64_t p = p0; p <= p1; ++p)
    for (int64_t q = q0; q <= q1; ++q) {
      const int64_t div = pool::avg_divisor(p, q, d.h, d.w, d.kh, d.kw, d.sh, d.sw, d.ph, d.pw, include_pad);
      acc += to_float(dy[((n * d.P + p) * d.Q + q) * d.c + c]) / static_cast<float>(div);
    }
  dx[i] = from_float<T>(acc);
}

// One thread per (image, channel): sums its hw pixels in order.
template <typename T>
__global__ void global_avg_forward_kernel(T* y, const T* x, int64_t n, int64_t hw, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * c) return;
  const int64_t img = i / c, k = i % c;
  const T* px = x + img * hw * c + k;
  float acc = 0.0f;
  for (int64_t p = 0; p < hw; ++p) acc += to_float(px[p * c]);
  y[i] = from_float<T>(acc / static_cast<float>(hw));
}

template <typename T>
__global__ void global_avg_backward_kernel(T* dx, const T* dy, int64_t n, int64_t hw, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * hw * c) return;
  const int64_t k = i % c, img = i / (hw * c);
  dx[i] = from_float<T>(to_float(dy[img * c + k]) / static_cast<float>(hw));
}

template <typename T>
void maxpool_fwd(T* y, int32_t* argmax, const T* x, const PoolShape& s, cudaStream_t stream) {
  check_pool_shape(s, "maxpool2d_forward");
  launch_1d(maxpool_forward_kernel<device_t<T>>, s.y_numel(), 256, 0, stream, dev_ptr(y), argmax, dev_ptr(x), dims(s),
            s.y_numel());
}
template <typename T>
void maxpool_bwd(T* dx, const T* dy, const int32_t* argmax, const PoolShape& s, cudaStream_t stream) {
  check_pool_shape(s, "maxpool2d_backward");
  launch_1d(maxpool_backward_kernel<device_t<T>>, s.x_numel(), 256, 0, stream, dev_ptr(dx), dev_ptr(dy), argmax,
            dims(s), s.x_numel());
}
template <typename T>
void avgpool_fwd(T* y, const T* x, const PoolShape& s, bool include_pad, cudaStream_t stream) {
  check_pool_shape(s, "avgpool2d_forward");
  launch_1d(avgpool_forward_kernel<device_t<T>>, s.y_numel(), 256, 0, stream, dev_ptr(y), dev_ptr(x), dims(s),
            include_pad, s.y_numel());
}
template <typename T>
void avgpool_bwd(T* dx, const T* dy, const PoolShape& s, bool include_pad, cudaStream_t stream) {
  check_pool_shape(s, "avgpool2d_backward");
  launch_1d(avgpool_backward_kernel<device_t<T>>, s.x_numel(), 256, 0, stream, dev_ptr(dx), dev_ptr(dy), dims(s),
            include_pad, s.x_numel());
}
void check_global(int64_t n, int64_t hw, int64_t c, const char* op) {
  KILN_CHECK(n >= 0 && hw >= 1 && c >= 0, op << ": bad shape (" << n << ", " << hw << ", " << c << ")");
}

}  // namespace

void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s, cudaStream_t stream) {
  maxpool_fwd(y, argmax, x, s, stream);
}
void maxpool2d_forward(bf16* y, int32_t* argmax, const bf16* x, const PoolShape& s, cudaStream_t stream) {
  maxpool_fwd(y, argmax, x, s, stream);
}
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s, cudaStream_t stream) {
  maxpool_bwd(dx, dy, argmax, s, stream);
}
void maxpool2d_backward(bf16* dx, const bf16* dy, const int32_t* argmax, const PoolShape& s, cudaStream_t stream) {
  maxpool_bwd(dx, dy, argmax, s, stream);
}
void avgpool2d_forward(float* y, const float* x, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  avgpool_fwd(y, x, s, count_include_pad, stream);
}
void avgpool2d_forward(bf16* y, const bf16* x, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  avgpool_fwd(y, x, s, count_include_pad, stream);
}
void avgpool2d_backward(float* dx, const float* dy, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  avgpool_bwd(dx, dy, s, count_include_pad, stream);
}
void avgpool2d_backward(bf16* dx, const bf16* dy, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  avgpool_bwd(dx, dy, s, count_include_pad, stream);
}
void global_avgpool_forward(float* y, const float* x, int64_t n, int64_t hw, int64_t c, cudaStream_t stream) {
  check_global(n, hw, c, "global_avgpool_forward");
  launch_1d(global_avg_forward_kernel<float>, n * c, 256, 0, stream, y, x, n, hw, c);
}
void global_avgpool_forward(bf16* y, const bf16* x, int64_t n, int64_t hw, int64_t c, cudaStream_t stream) {
  check_global(n, hw, c, "global_avgpool_forward");
  launch_1d(global_avg_forward_kernel<__nv_bfloat16>, n * c, 256, 0, stream, dev_ptr(y), dev_ptr(x), n, hw, c);
}
void global_avgpool_backward(float* dx, const float* dy, int64_t n, int64_t hw, int64_t c, cudaStream_t stream) {
  check_global(n, hw, c, "global_avgpool_backward");
  launch_1d(global_avg_backward_kernel<float>, n * hw * c, 256, 0, stream, dx, dy, n, hw, c);
}
void global_avgpool_backward(bf16* dx, const bf16* dy, int64_t n, int64_t hw, int64_t c, cudaStream_t stream) {
  check_global(n, hw, c, "global_avgpool_backward");
  launch_1d(global_avg_backward_kernel<__nv_bfloat16>, n * hw * c, 256, 0, stream, dev_ptr(dx), dev_ptr(dy), n, hw, c);
}

}  // namespace kiln
