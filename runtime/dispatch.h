// The one dtype/device dispatch of kiln: from a tensor's runtime DType (and
// device) to the C++ element type a kernel family is instantiated for.
//
//   visit_dtype(t.dtype(), Types<float, double, bf16>{}, [&](auto tag) {
//     using T = decltype(tag);
//     fill_constant_cpu<T>(t.data<T>(), ...);
//   });                                      // false: t's dtype is not listed
//
//   dispatch(x,
//       [&](auto tag) { using T = decltype(tag); relu_forward_cpu<T>(...); },
//       [&](auto tag, cudaStream_t s) { using T = decltype(tag); relu_forward(..., s); });
//
// dispatch() is what nn's ops use: the CPU reference for f32/f64 tensors
// (f64 serves the finite-difference checks), the CUDA launcher for f32/bf16
// tensors on the device's compute stream. The lambdas are generic, so a
// branch is compiled only for the types it is called with, and the CUDA
// branch is never instantiated in the CPU-only build (its launchers do not
// exist there). Any other combination is an Error naming the tensor.
#pragma once

#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"

namespace kiln {

/// A list of element types for visit_dtype.
template <typename... Ts>
struct Types {};

/// Calls fn(T{}) for the T among Ts whose DType is `t`; returns whether one was.
template <typename... Ts, typename Fn>
bool visit_dtype(DType t, Types<Ts...>, Fn&& fn) {
  return ((dtype_of<Ts>::value == t ? (fn(Ts{}), true) : false) || ...);
}

template <typename CpuFn, typename CudaFn>
void dispatch(const Tensor& x, CpuFn&& cpu, CudaFn&& cuda) {
  const DType t = x.dtype();
  if (x.device().is_cpu()) {
    if (visit_dtype(t, Types<float, double>{}, cpu)) return;
    KILN_CHECK(false, "tensor '" << x.name() << "': dtype " << dtype_name(t)
                                 << " is not supported on the CPU (f32 or f64)");
  }
#if KILN_WITH_CUDA
  cudaStream_t s = compute_stream(x.device());
  if (visit_dtype(t, Types<float, bf16>{}, [&](auto tag) { cuda(tag, s); })) return;
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

}  // namespace kiln
