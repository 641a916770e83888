// GEMM for both backends: cuBLASLt on the GPU, OpenBLAS on the CPU.
//
// Row-major convention throughout kiln: C (M×N) = alpha · op(A) (M×K) · op(B) (K×N)
// + beta · C, with op(X) = Xᵀ when trans_x. lda/ldb/ldc are row strides of the
// stored matrices (for A stored K×M when trans_a, lda >= M). Strided batches:
// batch > 1 repeats the product with A += stride_a, B += stride_b, C += stride_c
// (in elements).
//
// Inputs fp32 or bf16 (fp32 accumulation always), output fp32 or bf16 (not
// fp32 in with bf16 out: cuBLASLt has no such kernel); fp64 in and out on the
// CPU only, for the finite-difference checks. GPU fp32 is true fp32, never
// TF32. On the CPU, bf16 inputs are widened to fp32 and OpenBLAS sgemm runs.
//
// Epilogues (both backends) let layers fuse a bias add (bias has N elements of
// out_dtype, broadcast over rows and batches) and GELU (tanh form) into the
// matmul: C = gelu(alpha·op(A)·op(B) + beta·C + bias). With gelu_aux the
// pre-GELU values are also written to gelu_aux (out_dtype, M×N row-major per
// batch, batch stride M·N) for the backward pass; on CUDA that needs N % 8 == 0
// (cuBLASLt's aux leading dimension).
//
// Degenerate shapes: m == 0 or n == 0 does nothing; k == 0 gives
// C = beta·C (+ epilogue), on CUDA through a host round trip; a leading
// dimension may be 0 when its matrix has no columns.
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

namespace kiln {

enum class Epilogue { none, bias, gelu, bias_gelu };

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* a = nullptr; int64_t lda = 0; int64_t stride_a = 0;
  const void* b = nullptr; int64_t ldb = 0; int64_t stride_b = 0;
  void* c = nullptr; int64_t ldc = 0; int64_t stride_c = 0;
  int64_t batch = 1;
  DType in_dtype = DType::f32;   ///< dtype of A and B
  DType out_dtype = DType::f32;  ///< dtype of C
  Epilogue epilogue = Epilogue::none;
  const void* bias = nullptr;    ///< N elements, dtype out_dtype (f32 or bf16)
  void* gelu_aux = nullptr;      ///< M×N pre-activation output for gelu epilogues (optional)
};

/// Runs the GEMM on `device` (stream used on the GPU; ignored on the CPU).
/// Checks shapes and leading dimensions and throws Error naming the argument.
void gemm(const GemmArgs& args, Device device, cudaStream_t stream = nullptr);

/// Threads of the CPU backend (kiln sets this once at start-up from the
/// config's `threads`): the size of the one pool in runtime/parallel.h that
/// runs every threaded CPU op. CPU GEMMs are split over that pool, each part
/// a single-threaded OpenBLAS call, so OpenBLAS's own threads stay asleep.
void set_cpu_threads(int n);
int cpu_threads();

}  // namespace kiln
