// Internal to runtime/: makes a CUDA device current for a scope and restores
// the previous one, so that creating a stream or allocating memory for
// cuda:N does not change the caller's current device. CUDA build only.
#pragma once

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/error.h"

namespace kiln::detail {

class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    KILN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) KILN_CUDA_CHECK(cudaSetDevice(device));
    else previous_ = -1;
  }
  ~CudaDeviceGuard() {
    if (previous_ >= 0) KILN_CUDA_WARN(cudaSetDevice(previous_));
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace kiln::detail
#endif
