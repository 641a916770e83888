// Internal to runtime/blas*.cpp: the pieces the two GEMM backends share.
#pragma once

#include "runtime/blas.h"

namespace kiln::detail {

/// Throws Error naming the first bad argument.
void check_gemm_args(const GemmArgs& g, Device device);
const char* epilogue_name(Epilogue e);
/// The OpenBLAS path (also the CUDA path's fallback for k == 0).
void cpu_gemm(const GemmArgs& g);
#if KILN_WITH_CUDA
void cuda_gemm(const GemmArgs& g, Device device, cudaStream_t stream);
#endif

}  // namespace kiln::detail
