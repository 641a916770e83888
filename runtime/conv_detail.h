// Internal to runtime/conv*.cpp: the pieces the two convolution backends share.
#pragma once

#include "runtime/conv.h"

namespace kiln::detail {

enum class ConvOp { forward, backward_data, backward_filter };
const char* conv_op_name(ConvOp op);

/// Throws Error naming the first bad dtype / pointer for `op` on `device`.
void check_conv2d_args(const Conv2dGeometry& g, ConvOp op, DType dtype, DType dw_dtype, const void* a,
                       const void* b, const void* out, Device device);

/// The CPU backend (im2col + OpenBLAS), also the reference.
void cpu_conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias,
                        void* y);
void cpu_conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx);
void cpu_conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                                DType dw_dtype, bool accumulate, void* dbias);

#if KILN_WITH_CUDA
/// The cuDNN backend (runtime/conv_cuda.cpp).
void cuda_conv2d_forward(const Conv2dGeometry& g, DType dtype, const void* x, const void* w, const void* bias,
                         void* y, Device device, cudaStream_t stream);
void cuda_conv2d_backward_data(const Conv2dGeometry& g, DType dtype, const void* dy, const void* w, void* dx,
                               Device device, cudaStream_t stream);
void cuda_conv2d_backward_filter(const Conv2dGeometry& g, DType dtype, const void* x, const void* dy, void* dw,
                                 DType dw_dtype, bool accumulate, void* dbias, Device device, cudaStream_t stream);
#endif

}  // namespace kiln::detail
