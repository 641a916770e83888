// gemm(): argument checks shared by both backends, and the CPU backend on
// OpenBLAS (cblas_sgemm / cblas_dgemm). The CUDA backend is blas_cuda.cpp.
#include "runtime/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu_blas.h"
#include "runtime/blas_detail.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {
namespace detail {

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::none: return "none";
    case Epilogue::bias: return "bias";
    case Epilogue::gelu: return "gelu";
    case Epilogue::bias_gelu: return "bias_gelu";
  }
  return "?";
}

void check_gemm_args(const GemmArgs& g, Device device) {
  KILN_CHECK(g.m >= 0, "gemm: m = " << g.m << " must be >= 0");
  KILN_CHECK(g.n >= 0, "gemm: n = " << g.n << " must be >= 0");
  KILN_CHECK(g.k >= 0, "gemm: k = " << g.k << " must be >= 0");
  KILN_CHECK(g.batch >= 1, "gemm: batch = " << g.batch << " must be >= 1");
  const bool f64 = g.in_dtype == DType::f64 || g.out_dtype == DType::f64;
  if (f64) {
    KILN_CHECK(g.in_dtype == DType::f64 && g.out_dtype == DType::f64,
               "gemm: in_dtype " << dtype_name(g.in_dtype) << " with out_dtype " << dtype_name(g.out_dtype)
                                 << ": f64 GEMMs take and produce f64");
    KILN_CHECK(device.is_cpu(), "gemm: in_dtype f64 is supported on the CPU only, not on " << device.str());
  } else {
    KILN_CHECK(g.in_dtype == DType::f32 || g.in_dtype == DType::bf16,
               "gemm: in_dtype " << dtype_name(g.in_dtype) << " is not supported (f32, bf16, or f64 on the CPU)");
    KILN_CHECK(g.out_dtype == DType::f32 || g.out_dtype == DType::bf16,
               "gemm: out_dtype " << dtype_name(g.out_dtype) << " is not supported (f32 or bf16)");
    KILN_CHECK(!(g.in_dtype == DType::f32 && g.out_dtype == DType::bf16),
               "gemm: in_dtype f32 with out_dtype bf16 is not supported (cuBLASLt has no such kernel); "
               "cast the inputs to bf16 or write f32");
  }
  // Stored shapes (row-major): A is m x k (k x m when trans_a), B is k x n
  // (n x k when trans_b), C is m x n.
  const int64_t a_cols = g.trans_a ? g.m : g.k, b_cols = g.trans_b ? g.k : g.n;
  // (A leading dimension of 0 is accepted when its matrix has no columns: such
  // a GEMM never reaches a BLAS call.)
  KILN_CHECK(g.lda >= a_cols, "gemm: lda = " << g.lda << " must be >= " << a_cols << " (columns of the stored A"
                                             << (g.trans_a ? ", trans_a" : "") << ")");
  KILN_CHECK(g.ldb >= b_cols, "gemm: ldb = " << g.ldb << " must be >= " << b_cols << " (columns of the stored B"
                                             << (g.trans_b ? ", trans_b" : "") << ")");
  KILN_CHECK(g.ldc >= g.n, "gemm: ldc = " << g.ldc << " must be >= " << g.n << " (columns of C)");
  KILN_CHECK(g.stride_a >= 0, "gemm: stride_a = " << g.stride_a << " must be >= 0");
  KILN_CHECK(g.stride_b >= 0, "gemm: stride_b = " << g.stride_b << " must be >= 0");
  KILN_CHECK(g.stride_c >= 0, "gemm: stride_c = " << g.stride_c << " must be >= 0");
  const bool empty_out = g.m == 0 || g.n == 0;
  if (!empty_out) {
    KILN_CHECK(g.c, "gemm: c is null for a " << g.m << "x" << g.n << " output");
    if (g.k > 0) {
      KILN_CHECK(g.a, "gemm: a is null for m = " << g.m << ", k = " << g.k);
      KILN_CHECK(g.b, "gemm: b is null for k = " << g.k << ", n = " << g.n);
    }
    if (g.batch > 1) {
      // Batches of C must not overlap (each would race with the next).
      KILN_CHECK(g.stride_c >= (g.m - 1) * g.ldc + g.n,
                 "gemm: stride_c = " << g.stride_c << " makes the " << g.batch << " outputs overlap (needs >= "
                                     << (g.m - 1) * g.ldc + g.n << ")");
    }
  }
  const bool has_bias = g.epilogue == Epilogue::bias || g.epilogue == Epilogue::bias_gelu;
  const bool has_gelu = g.epilogue == Epilogue::gelu || g.epilogue == Epilogue::bias_gelu;
  if (has_bias && !empty_out) KILN_CHECK(g.bias, "gemm: epilogue " << epilogue_name(g.epilogue) << " needs bias");
  if (!has_bias) KILN_CHECK(!g.bias, "gemm: bias is set but epilogue is " << epilogue_name(g.epilogue));
  if (!has_gelu) KILN_CHECK(!g.gelu_aux, "gemm: gelu_aux is set but epilogue is " << epilogue_name(g.epilogue));
}

// GELU, tanh form (as cuBLASLt's epilogue and GPT-2).
template <typename T> inline T gelu(T x) {
  const T c = static_cast<T>(0.7978845608028654);  // sqrt(2/pi)
  return static_cast<T>(0.5) * x * (static_cast<T>(1) + std::tanh(c * (x + static_cast<T>(0.044715) * x * x * x)));
}

}  // namespace detail

namespace {

using detail::gelu;

// A rows x cols block of a bf16 matrix (leading dimension ld) as compact fp32
// (leading dimension cols).
std::vector<float> widen_block(const bf16* p, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) v[static_cast<size_t>(i * cols + j)] = bf16_to_float(p[i * ld + j]);
  return v;
}

// C (m x n, ldc) = alpha·op(A)·op(B) + beta·C for T = float or double, on
// the calling thread (OpenBLAS runs single-threaded: kiln's pool splits the
// work, see cpu_gemm below).
template <typename T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
               int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == T(0)) {
    // No product: C = beta·C, and beta == 0 writes zeros (C may hold NaN).
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same<T, float>::value) {
    cblas_sgemm(CblasRowMajor, opa, opb, static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k),
                alpha, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, opa, opb, static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k),
                alpha, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
  }
}

// Bias, aux and GELU on an rows x cols block of accumulators (T = float or
// double), bias and aux already offset to the block (aux row stride aux_ld),
// storing aux as Out.
template <typename T, typename Out>
void epilogue_block(const GemmArgs& g, T* c, int64_t ldc, int64_t rows, int64_t cols, const T* bias, Out* aux,
                    int64_t aux_ld) {
  const bool has_bias = g.epilogue == Epilogue::bias || g.epilogue == Epilogue::bias_gelu;
  const bool has_gelu = g.epilogue == Epilogue::gelu || g.epilogue == Epilogue::bias_gelu;
  for (int64_t i = 0; i < rows; ++i) {
    T* row = c + i * ldc;
    for (int64_t j = 0; j < cols; ++j) {
      T v = row[j];
      if (has_bias) v = v + bias[j];
      if (has_gelu) {
        if (aux) {
          if constexpr (std::is_same<Out, bf16>::value) aux[i * aux_ld + j] = float_to_bf16(static_cast<float>(v));
          else aux[i * aux_ld + j] = static_cast<Out>(v);
        }
        v = gelu(v);
      }
      row[j] = v;
    }
  }
}

// One block of one batch of the product: C[m0:m1, n0:n1] of batch bi, with
// its epilogue and (bf16 out) its rounding. Blocks of different (bi, rows,
// columns) touch disjoint parts of C and aux, so they run concurrently.
template <typename T>
void gemm_block(const GemmArgs& g, const T* bias_f, int64_t bi, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t bm = m1 - m0, bn = n1 - n0;
  if (bm <= 0 || bn <= 0) return;
  // The block reads rows m0..m1 of op(A) and columns n0..n1 of op(B).
  // Stored A is m x k (k x m when trans_a), B is k x n (n x k when trans_b).
  const int64_t a_off = g.trans_a ? m0 : m0 * g.lda, b_off = g.trans_b ? n0 * g.ldb : n0;
  const T *a = nullptr, *b = nullptr;
  int64_t lda = g.lda, ldb = g.ldb;
  std::vector<T> abuf, bbuf;
  if (g.k > 0) {
    if (g.in_dtype == DType::bf16) {
      // OpenBLAS has no bf16 GEMM here: widen the spans this block reads.
      if constexpr (std::is_same<T, float>::value) {
        const bf16* a16 = static_cast<const bf16*>(g.a) + bi * g.stride_a + a_off;
        const bf16* b16 = static_cast<const bf16*>(g.b) + bi * g.stride_b + b_off;
        abuf = g.trans_a ? widen_block(a16, g.k, bm, g.lda) : widen_block(a16, bm, g.k, g.lda);
        bbuf = g.trans_b ? widen_block(b16, bn, g.k, g.ldb) : widen_block(b16, g.k, bn, g.ldb);
        lda = g.trans_a ? bm : g.k;
        ldb = g.trans_b ? g.k : bn;
      }
      a = abuf.data();
      b = bbuf.data();
    } else {
      a = static_cast<const T*>(g.a) + bi * g.stride_a + a_off;
      b = static_cast<const T*>(g.b) + bi * g.stride_b + b_off;
    }
  }
  const bool out_bf16 = g.out_dtype == DType::bf16;
  T* c;
  int64_t ldc = g.ldc;
  std::vector<T> cbuf;
  bf16* c16 = nullptr;
  if (out_bf16) {
    // Accumulate in a float copy of the block, round once at the end.
    c16 = static_cast<bf16*>(g.c) + bi * g.stride_c + m0 * g.ldc + n0;
    cbuf.assign(static_cast<size_t>(bm * bn), T(0));
    ldc = bn;
    if (g.beta != 0.0f)
      for (int64_t i = 0; i < bm; ++i)
        for (int64_t j = 0; j < bn; ++j) cbuf[static_cast<size_t>(i * bn + j)] = bf16_to_float(c16[i * g.ldc + j]);
    c = cbuf.data();
  } else {
    c = static_cast<T*>(g.c) + bi * g.stride_c + m0 * g.ldc + n0;
  }
  blas_gemm<T>(g.trans_a, g.trans_b, bm, bn, g.k, static_cast<T>(g.alpha), a, lda, b, ldb, static_cast<T>(g.beta), c,
               ldc);
  if (g.epilogue != Epilogue::none) {
    const T* bias = bias_f ? bias_f + n0 : nullptr;
    const int64_t aux_off = bi * g.m * g.n + m0 * g.n + n0;  // aux is (batch, m, n) compact
    if (out_bf16) {
      bf16* aux = g.gelu_aux ? static_cast<bf16*>(g.gelu_aux) + aux_off : nullptr;
      epilogue_block<T, bf16>(g, c, ldc, bm, bn, bias, aux, g.n);
    } else {
      T* aux = g.gelu_aux ? static_cast<T*>(g.gelu_aux) + aux_off : nullptr;
      epilogue_block<T, T>(g, c, ldc, bm, bn, bias, aux, g.n);
    }
  }
  if (out_bf16)
    for (int64_t i = 0; i < bm; ++i)
      for (int64_t j = 0; j < bn; ++j)
        c16[i * g.ldc + j] = float_to_bf16(static_cast<float>(cbuf[static_cast<size_t>(i * bn + j)]));
}

// Multiply-adds per part below which a split is not worth a thread (~15 µs
// of sgemm). Results of a split GEMM may differ in the last bits from the
// unsplit product (so GEMMs, unlike kiln's own kernels, depend on the thread
// count): OpenBLAS may sum a block in another order than the whole, e.g.
// 0.3.21 runs products of M·N·K <= 1e6 through its SkylakeX small-matrix
// kernels, and its Haswell kernels differ for other blocks. Each split is a
// function of the shape and thread count only, so results are deterministic
// at a fixed thread count.
constexpr int64_t kGemmMinPerPart = int64_t{1} << 20;
// Block boundaries are multiples of this (OpenBLAS's micro-tiles divide it).
constexpr int64_t kGemmAlign = 16;

template <typename T>
void cpu_gemm_typed(const GemmArgs& g) {
  // T = double only for f64 in and out; otherwise the arithmetic is float.
  std::vector<T> bias_f;
  if (g.bias) {
    if (g.out_dtype == DType::bf16) {
      bias_f.resize(static_cast<size_t>(g.n));
      for (int64_t j = 0; j < g.n; ++j) bias_f[static_cast<size_t>(j)] = bf16_to_float(static_cast<const bf16*>(g.bias)[j]);
    } else {
      bias_f.assign(static_cast<const T*>(g.bias), static_cast<const T*>(g.bias) + g.n);
    }
  }
  const T* bias = g.bias ? bias_f.data() : nullptr;
  // Static partition over the pool: whole batches when there are enough of
  // them, else each product split along its larger output dimension (M rows
  // when M >= N: each part packs all of B, the smaller operand then) at
  // multiples of kGemmAlign. Every output element is computed by exactly one
  // block, with the same K loop as an unsplit call.
  const int64_t mnk = g.m * g.n * std::max<int64_t>(g.k, 1);
  const int parts = parallel_parts(mnk * g.batch, kGemmMinPerPart);
  if (parts <= 1) {
    for (int64_t bi = 0; bi < g.batch; ++bi) gemm_block<T>(g, bias, bi, 0, g.m, 0, g.n);
    return;
  }
  if (g.batch >= parts) {
    parallel_run(parts, [&](int p, int np) {
      for (int64_t bi = split_begin(g.batch, np, p); bi < split_begin(g.batch, np, p + 1); ++bi)
        gemm_block<T>(g, bias, bi, 0, g.m, 0, g.n);
    });
    return;
  }
  const bool split_m = g.m >= g.n;
  const int64_t dim = split_m ? g.m : g.n;
  const int64_t tiles = (dim + kGemmAlign - 1) / kGemmAlign;
  const int np_dim = static_cast<int>(std::min<int64_t>(parts, tiles));
  parallel_run(np_dim, [&](int p, int np) {
    const int64_t lo = std::min(dim, split_begin(tiles, np, p) * kGemmAlign);
    const int64_t hi = std::min(dim, split_begin(tiles, np, p + 1) * kGemmAlign);
    for (int64_t bi = 0; bi < g.batch; ++bi) {
      if (split_m) gemm_block<T>(g, bias, bi, lo, hi, 0, g.n);
      else gemm_block<T>(g, bias, bi, 0, g.m, lo, hi);
    }
  });
}

// OpenBLAS runs single-threaded inside kiln's pool (its own threads would
// spin against the pool's); set once, before the first GEMM (the kernels'
// own BLAS calls share the switch: kernels/cpu_blas.h).
void openblas_single_threaded() { cpu_blas::single_threaded(); }

}  // namespace

namespace detail {
void cpu_gemm(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  openblas_single_threaded();
  if (g.in_dtype == DType::f64) cpu_gemm_typed<double>(g);
  else cpu_gemm_typed<float>(g);
}
}  // namespace detail

void gemm(const GemmArgs& args, Device device, cudaStream_t stream) {
  detail::check_gemm_args(args, device);
  if (device.is_cpu()) {
    detail::cpu_gemm(args);
    return;
  }
#if KILN_WITH_CUDA
  detail::cuda_gemm(args, device, stream);
#else
  KILN_CHECK(false, "gemm on " << device.str() << ": this kiln was built without CUDA");
#endif
}

void set_cpu_threads(int n) {
  KILN_CHECK(n >= 1, "set_cpu_threads(" << n << "): need at least one thread");
  openblas_single_threaded();
  set_cpu_pool_threads(n);
}

int cpu_threads() { return cpu_pool_threads(); }

}  // namespace kiln
