// Row-major GEMM on the calling thread for the CPU kernels (OpenBLAS), and
// the switch that keeps OpenBLAS single-threaded.
//
// kiln's CPU ops run on one thread pool (runtime/parallel.h); a kernel that
// multiplies matrices (attention on (batch, head) tiles) calls these from
// inside a pool region, one product per part, so OpenBLAS must not start
// threads of its own: single_threaded() sets that once per process (the
// runtime's GEMM, runtime/blas.cpp, calls it too). Raw pointers and sizes
// only, like the rest of kernels/.
//
//   C (m × n, ldc) = alpha · op(A) (m × k) · op(B) (k × n) + beta · C
//   op(X) = Xᵀ when trans_x; lda/ldb/ldc are row strides of the stored
//   matrices (A stored k × m when trans_a). beta == 0 overwrites C (NaN there
//   does not leak in); k == 0 gives C = beta · C.
//
// A product's result depends only on its operands and shape (not on where
// they sit in memory or which thread asks), so kernels that give each output
// block to one part are independent of the thread count.
#pragma once

#include <cstdint>

namespace kiln::cpu_blas {

/// Makes OpenBLAS run single-threaded (idempotent, thread-safe).
void single_threaded();

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

}  // namespace kiln::cpu_blas
