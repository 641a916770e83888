// 2-D pooling over NHWC images: max-pool and average-pool (window, stride,
// zero padding), global average pool, and their backwards. CUDA launchers
// (kernels/pool.cu) and CPU references (kernels/pool_cpu.cpp).
//
//   x, dx  (N, H, W, C)     y, dy  (N, P, Q, C)   P = (H + 2·pad_h − kh) / stride_h + 1
//   argmax (N, P, Q, C) int32: the input pixel ih·W + iw each max came from
//
// Semantics follow torch.nn.MaxPool2d / AvgPool2d (floor mode): max-pool
// ignores padding (padded positions never win), picks the first maximum in
// window order (r, s) and propagates NaN; average-pool divides by the window
// clipped to the padded image when count_include_pad (PyTorch's default),
// by the part inside the image otherwise. Padding may be at most half the
// window (as in PyTorch), so every window covers at least one pixel.
//
// Backwards are gathers: each dx element sums, in (p, q) order, dy of the
// windows that contain it (max-pool: of the windows whose argmax it is), so
// they write dx (=) without atomics and are deterministic.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace kiln {

/// Sizes of one pooling: input (n, h, w, c), window, stride, padding.
struct PoolShape {
  int64_t n = 0, h = 0, w = 0, c = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t out_h() const { return (h + 2 * ph - kh) / sh + 1; }
  int64_t out_w() const { return (w + 2 * pw - kw) / sw + 1; }
  int64_t x_numel() const { return n * h * w * c; }
  int64_t y_numel() const { return n * out_h() * out_w() * c; }
};

/// Throws Error naming the problem (negative sizes, window < 1, stride < 1,
/// padding above half the window, a window larger than the padded image, a
/// plane of more than 2^31 pixels).
void check_pool_shape(const PoolShape& s, const char* op);

// --- CPU references (T = float or double) ---------------------------------------

template <typename T>
void maxpool2d_forward_cpu(T* y, int32_t* argmax, const T* x, const PoolShape& s);
template <typename T>
void maxpool2d_backward_cpu(T* dx, const T* dy, const int32_t* argmax, const PoolShape& s);
template <typename T>
void avgpool2d_forward_cpu(T* y, const T* x, const PoolShape& s, bool count_include_pad);
template <typename T>
void avgpool2d_backward_cpu(T* dx, const T* dy, const PoolShape& s, bool count_include_pad);
/// y (N, C) = mean over the hw = H·W pixels of x (N, hw, C).
template <typename T>
void global_avgpool_forward_cpu(T* y, const T* x, int64_t n, int64_t hw, int64_t c);
/// dx (N, hw, C) = dy (N, C) / hw.
template <typename T>
void global_avgpool_backward_cpu(T* dx, const T* dy, int64_t n, int64_t hw, int64_t c);

// --- CUDA launchers (float and bf16 activations, fp32 arithmetic) ------------------

void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s, cudaStream_t stream);
void maxpool2d_forward(bf16* y, int32_t* argmax, const bf16* x, const PoolShape& s, cudaStream_t stream);
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s, cudaStream_t stream);
void maxpool2d_backward(bf16* dx, const bf16* dy, const int32_t* argmax, const PoolShape& s, cudaStream_t stream);
void avgpool2d_forward(float* y, const float* x, const PoolShape& s, bool count_include_pad, cudaStream_t stream);
void avgpool2d_forward(bf16* y, const bf16* x, const PoolShape& s, bool count_include_pad, cudaStream_t stream);
void avgpool2d_backward(float* dx, const float* dy, const PoolShape& s, bool count_include_pad, cudaStream_t stream);
void avgpool2d_backward(bf16* dx, const bf16* dy, const PoolShape& s, bool count_include_pad, cudaStream_t stream);
void global_avgpool_forward(float* y, const float* x, int64_t n, int64_t hw, int64_t c, cudaStream_t stream);
void global_avgpool_forward(bf16* y, const bf16* x, int64_t n, int64_t hw, int64_t c, cudaStream_t stream);
void global_avgpool_backward(float* dx, const float* dy, int64_t n, int64_t hw, int64_t c, cudaStream_t stream);
void global_avgpool_backward(bf16* dx, const bf16* dy, int64_t n, int64_t hw, int64_t c, cudaStream_t stream);

}  // namespace kiln
