// Device/dtype dispatch for nn's tensor-level ops: picks the CPU reference
// (float or double) or the CUDA launcher (float or bf16) for a tensor.
//
//   dispatch(x,
//       [&](auto tag) { using T = decltype(tag); relu_forward_cpu<T>(...); },
//       [&](auto tag, cudaStream_t s) { using T = decltype(tag); relu_forward(..., s); });
//
// The lambdas are generic, so a branch is compiled only for the types it is
// called with, and the CUDA branch is never instantiated in the CPU-only
// build (its launchers do not exist there). Any other device/dtype
// combination is an Error naming the tensor.
#pragma once

#include "runtime/error.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"

namespace kiln::nn {

template <typename CpuFn, typename CudaFn>
void dispatch(const Tensor& x, CpuFn&& cpu, CudaFn&& cuda) {
  const DType t = x.dtype();
  if (x.device().is_cpu()) {
    if (t == DType::f32) return cpu(float{});
    if (t == DType::f64) return cpu(double{});
    KILN_CHECK(false, "tensor '" << x.name() << "': dtype " << dtype_name(t)
                                 << " is not supported on the CPU (f32 or f64)");
  }
#if KILN_WITH_CUDA
  cudaStream_t s = compute_stream(x.device());
  if (t == DType::f32) return cuda(float{}, s);
  if (t == DType::bf16) return cuda(bf16{}, s);
  KILN_CHECK(false, "tensor '" << x.name() << "': dtype " << dtype_name(t) << " is not supported on CUDA (f32 or bf16)");
#else
  (void)cuda;
  KILN_CHECK(false, "tensor '" << x.name() << "' is on " << x.device().str() << " but this build has no CUDA backend");
#endif
}

/// Checks that two tensors agree in device, dtype and element count.
inline void check_same(const Tensor& a, const Tensor& b, const char* op) {
  KILN_CHECK(a.device() == b.device() && a.dtype() == b.dtype() && a.numel() == b.numel(),
             op << ": tensors '" << a.name() << "' " << a.shape().str() << " " << dtype_name(a.dtype()) << " on "
                << a.device().str() << " and '" << b.name() << "' " << b.shape().str() << " "
                << dtype_name(b.dtype()) << " on " << b.device().str() << " do not match");
}

}  // namespace kiln::nn
