// 2-D convolution for both backends: cuDNN 9 (graph/backend API) on the GPU,
// im2col + OpenBLAS sgemm on the CPU. The CPU path is also the reference the
// GPU path is tested against.
//
// Layouts (channels-last throughout, the same bytes on both backends):
//   x   (N, H, W, C)       activations, NHWC
//   w   (K, R, S, C/G)     filters, "KRSC" (cuDNN's NHWC filter layout, what its
//                          channels-last tensor-core kernels read); PyTorch's
//                          (K, C/G, R, S) weight is this permuted by (0, 2, 3, 1)
//   y   (N, P, Q, K)       P = (H + 2·pad_h − dil_h·(R−1) − 1) / stride_h + 1, Q likewise
//   bias (K)
// Groups G divide C and K; filter k belongs to group k / (K/G) and sees input
// channels [g·C/G, (g+1)·C/G). Cross-correlation (no filter flip), as in
// PyTorch's nn.Conv2d.
//
// Dtypes: x/w/y/dx/dy share `dtype`: f32 or bf16 (fp32 accumulation always;
// GPU f32 is true fp32, never TF32), f64 on the CPU only (finite-difference
// checks). Bias and dbias are f32 (f64 with f64). dw is `dw_dtype`: dtype, or
// f32 with bf16 (the fp32 master gradient). On the CPU, bf16 is widened to
// f32 and OpenBLAS runs in fp32.
//
// Determinism: the CPU path sums in an order fixed by the shape. On the GPU
// only engines without cuDNN's NONDETERMINISTIC numerical note are used
// unless set_conv_deterministic(false); f32 also refuses TENSOR_CORE /
// DOWN_CONVERT_INPUTS engines (they would compute in TF32) and bf16 refuses
// REDUCED_PRECISION_REDUCTION ones (fp32 accumulation).
//
// Empty shapes (N, H, W, C or K == 0, or an output of 0 pixels) are valid: the
// outputs are written as the math says (y empty, dx zeros, dw unchanged or
// zeroed) without calling a library.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

namespace kiln {

/// Shape, stride, padding, dilation and groups of one 2-D convolution.
struct Conv2dGeometry {
  int64_t n = 0, h = 0, w = 0, c = 0;  ///< input (N, H, W, C)
  int64_t k = 0, r = 1, s = 1;         ///< K filters, each R x S x C/groups
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;        ///< zero padding on each side
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;

  int64_t out_h() const { return (h + 2 * pad_h - dilation_h * (r - 1) - 1) / stride_h + 1; }  ///< P
  int64_t out_w() const { return (w + 2 * pad_w - dilation_w * (s - 1) - 1) / stride_w + 1; }  ///< Q
  int64_t x_numel() const { return n * h * w * c; }
  int64_t y_numel() const { return n * out_h() * out_w() * k; }
  int64_t w_numel() const { return k * r * s * (c / groups); }
  /// 2·N·P·Q·K·R·S·C/G: the multiply-adds of the forward (each backward is the same).
  double flops() const;
  /// "n=8 28x28x1 -> 32 3x3 s1 p1 d1 g1"
  std::string str() const;
};

/// Throws Error naming the field when the geometry is invalid (negative
/// sizes, stride/dilation < 1, groups not dividing C and K, a window larger
/// than the padded input).
void check_conv2d_geometry(const Conv2dGeometry& g);

/// y (N, P, Q, K) = conv(x, w) [+ bias (K), broadcast]. bias may be null.
void conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias, void* y,
                    Device device, cudaStream_t stream = nullptr);

/// dx (N, H, W, C) = ∂L/∂x for dy = ∂L/∂y (written, not accumulated).
void conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx,
                          Device device, cudaStream_t stream = nullptr);

/// dw (K, R, S, C/G) = (accumulate ? dw : 0) + ∂L/∂w, in dw_dtype; dbias (K),
/// when not null, += Σ dy over N, P, Q (f32; f64 with f64).
void conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                            DType dw_dtype, bool accumulate, void* dbias, Device device,
                            cudaStream_t stream = nullptr);

/// GPU engine policy (process-wide, read at plan creation; plans are cached per
/// setting). true (the default): deterministic engines only.
void set_conv_deterministic(bool on);
bool conv_deterministic();

}  // namespace kiln
