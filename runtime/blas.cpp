// gemm(): argument checks shared by both backends, and the CPU backend on
// OpenBLAS (cblas_sgemm / cblas_dgemm). The CUDA backend is blas_cuda.cpp.
#include "runtime/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "runtime/blas_detail.h"
#include "runtime/error.h"

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

// Elements a stored row-major matrix of `rows` rows of `cols` with leading
// dimension ld spans.
int64_t extent(int64_t rows, int64_t cols, int64_t ld) { return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols; }

std::vector<float> widen(const bf16* p, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = bf16_to_float(p[i]);
  return v;
}

// C (m x n, ldc) = alpha·op(A)·op(B) + beta·C for T = float or double.
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

// Bias, aux and GELU on an m x n block of accumulators (T = float or double),
// storing aux as Out.
template <typename T, typename Out>
void epilogue_rows(const GemmArgs& g, T* c, int64_t ldc, const T* bias, Out* aux) {
  const bool has_bias = g.epilogue == Epilogue::bias || g.epilogue == Epilogue::bias_gelu;
  const bool has_gelu = g.epilogue == Epilogue::gelu || g.epilogue == Epilogue::bias_gelu;
  for (int64_t i = 0; i < g.m; ++i) {
    T* row = c + i * ldc;
    for (int64_t j = 0; j < g.n; ++j) {
      T v = row[j];
      if (has_bias) v = v + bias[j];
      if (has_gelu) {
        if (aux) {
          if constexpr (std::is_same<Out, bf16>::value) aux[i * g.n + j] = float_to_bf16(static_cast<float>(v));
          else aux[i * g.n + j] = static_cast<Out>(v);
        }
        v = gelu(v);
      }
      row[j] = v;
    }
  }
}

template <typename T>
void cpu_gemm_typed(const GemmArgs& g) {
  // T = double only for f64 in and out; otherwise the arithmetic is float.
  const int64_t a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
  const int64_t b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
  const int64_t a_ext = extent(a_rows, a_cols, g.lda), b_ext = extent(b_rows, b_cols, g.ldb);
  const bool out_bf16 = g.out_dtype == DType::bf16;
  std::vector<T> bias_f;
  if (g.bias) {
    if (out_bf16) {
      bias_f.resize(static_cast<size_t>(g.n));
      for (int64_t j = 0; j < g.n; ++j) bias_f[static_cast<size_t>(j)] = bf16_to_float(static_cast<const bf16*>(g.bias)[j]);
    } else {
      bias_f.assign(static_cast<const T*>(g.bias), static_cast<const T*>(g.bias) + g.n);
    }
  }
  const bool any_epilogue = g.epilogue != Epilogue::none;
  std::vector<T> cbuf;
  for (int64_t bi = 0; bi < g.batch; ++bi) {
    const T *a, *b;
    std::vector<T> abuf, bbuf;
    if (g.in_dtype == DType::bf16) {
      // OpenBLAS has no bf16 GEMM here: widen the spans this batch reads.
      if constexpr (std::is_same<T, float>::value) {
        abuf = widen(static_cast<const bf16*>(g.a) + bi * g.stride_a, a_ext);
        bbuf = widen(static_cast<const bf16*>(g.b) + bi * g.stride_b, b_ext);
      }
      a = abuf.data();
      b = bbuf.data();
    } else {
      a = g.k > 0 ? static_cast<const T*>(g.a) + bi * g.stride_a : nullptr;
      b = g.k > 0 ? static_cast<const T*>(g.b) + bi * g.stride_b : nullptr;
    }
    T* c;
    int64_t ldc = g.ldc;
    bf16* c16 = nullptr;
    if (out_bf16) {
      // Accumulate in a float copy of C, round once at the end.
      c16 = static_cast<bf16*>(g.c) + bi * g.stride_c;
      cbuf.assign(static_cast<size_t>(g.m * g.n), T(0));
      ldc = g.n;
      if (g.beta != 0.0f)
        for (int64_t i = 0; i < g.m; ++i)
          for (int64_t j = 0; j < g.n; ++j) cbuf[static_cast<size_t>(i * g.n + j)] = bf16_to_float(c16[i * g.ldc + j]);
      c = cbuf.data();
    } else {
      c = static_cast<T*>(g.c) + bi * g.stride_c;
    }
    blas_gemm<T>(g.trans_a, g.trans_b, g.m, g.n, g.k, static_cast<T>(g.alpha), a, g.lda, b, g.ldb,
                 static_cast<T>(g.beta), c, ldc);
    if (any_epilogue) {
      if (out_bf16) {
        bf16* aux = g.gelu_aux ? static_cast<bf16*>(g.gelu_aux) + bi * g.m * g.n : nullptr;
        epilogue_rows<T, bf16>(g, c, ldc, bias_f.data(), aux);
      } else {
        T* aux = g.gelu_aux ? static_cast<T*>(g.gelu_aux) + bi * g.m * g.n : nullptr;
        epilogue_rows<T, T>(g, c, ldc, bias_f.data(), aux);
      }
    }
    if (out_bf16)
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j)
          c16[i * g.ldc + j] = float_to_bf16(static_cast<float>(cbuf[static_cast<size_t>(i * g.n + j)]));
  }
}

}  // namespace

namespace detail {
void cpu_gemm(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
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
  openblas_set_num_threads(n);
}

int cpu_threads() { return openblas_get_num_threads(); }

}  // namespace kiln
