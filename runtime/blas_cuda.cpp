// gemm() on the GPU through cuBLASLt (see blas.h).
//
// kiln is row-major and cuBLASLt column-major. A row-major M x N matrix with
// row stride ld is, byte for byte, its N x M transpose in column-major with
// the same ld; so C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ by handing
// cuBLASLt B as its "A" and A as its "B", with m and n swapped. The bias
// (N values, one per column of C) then runs along the rows of Cᵀ, which is
// what the cuBLASLt bias epilogue broadcasts.
#include "runtime/blas_detail.h"

#if KILN_WITH_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/device_guard.h"
#include "runtime/error.h"

namespace kiln::detail {
namespace {

// Workspace offered to cuBLASLt (NVIDIA recommends 32 MiB on Hopper). It is
// taken from the caching allocator per call, stream-ordered, so concurrent
// streams never share one and a cache hit costs about a microsecond.
constexpr uint64_t kMaxWorkspace = uint64_t(32) << 20;

// Everything the heuristic's answer depends on.
struct AlgoKey {
  int64_t v[22];
  bool operator==(const AlgoKey& o) const { return std::memcmp(v, o.v, sizeof v) == 0; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (int64_t x : k.v) {
      h ^= static_cast<uint64_t>(x);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};
struct Algo {
  cublasLtMatmulAlgo_t algo;
  size_t workspace;
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  std::mutex mu;
  std::unordered_map<AlgoKey, Algo, AlgoKeyHash> algos;
};

// One cuBLASLt handle per device, for the life of the process.
DeviceState& state_for(int device) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceState*> states;
  std::lock_guard<std::mutex> lock(mu);
  auto it = states.find(device);
  if (it == states.end()) {
    auto* st = new DeviceState;
    KILN_CUBLAS_CHECK(cublasLtCreate(&st->handle));
    it = states.emplace(device, st).first;
  }
  return *it->second;
}

// RAII for the cuBLASLt descriptors.
struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const { cublasLtMatrixLayoutDestroy(d); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const { cublasLtMatmulPreferenceDestroy(d); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

Layout make_layout(DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, cuda_type(t), static_cast<uint64_t>(rows),
                                               static_cast<uint64_t>(cols), ld));
  Layout owned(l);
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    KILN_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return owned;
}

// The alignment (power of two, at most 256 bytes) every batch's pointer has.
uint32_t alignment(const void* p, int64_t stride_elems, size_t esize, int64_t batch) {
  uint64_t bits = reinterpret_cast<uintptr_t>(p) | 256u;
  if (batch > 1) bits |= static_cast<uint64_t>(stride_elems) * esize | 256u;
  return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

// k == 0: there is no product, C = beta·C plus the epilogue. cuBLASLt does not
// take k = 0, and this case is rare and small, so it runs on the host.
void gemm_k0_on_host(const GemmArgs& g, cudaStream_t stream) {
  const size_t osize = dtype_size(g.out_dtype);
  const int64_t c_elems = (g.batch - 1) * g.stride_c + (g.m - 1) * g.ldc + g.n;
  std::vector<unsigned char> c(static_cast<size_t>(c_elems) * osize), bias, aux;
  KILN_CUDA_CHECK(cudaMemcpyAsync(c.data(), g.c, c.size(), cudaMemcpyDeviceToHost, stream));
  GemmArgs h = g;
  h.c = c.data();
  if (g.bias) {
    bias.resize(static_cast<size_t>(g.n) * osize);
    KILN_CUDA_CHECK(cudaMemcpyAsync(bias.data(), g.bias, bias.size(), cudaMemcpyDeviceToHost, stream));
    h.bias = bias.data();
  }
  if (g.gelu_aux) {
    aux.resize(static_cast<size_t>(g.batch * g.m * g.n) * osize);
    h.gelu_aux = aux.data();
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  cpu_gemm(h);
  KILN_CUDA_CHECK(cudaMemcpyAsync(g.c, c.data(), c.size(), cudaMemcpyHostToDevice, stream));
  if (g.gelu_aux) KILN_CUDA_CHECK(cudaMemcpyAsync(g.gelu_aux, aux.data(), aux.size(), cudaMemcpyHostToDevice, stream));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host buffers die here
}

}  // namespace

void cuda_gemm(const GemmArgs& g, Device device, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return;
  CudaDeviceGuard guard(device.index);
  if (g.k == 0) {
    gemm_k0_on_host(g, stream);
    return;
  }
  KILN_CHECK(g.batch <= std::numeric_limits<int32_t>::max(), "gemm: batch = " << g.batch << " exceeds cuBLASLt's int32 batch count");
  const bool has_bias = g.epilogue == Epilogue::bias || g.epilogue == Epilogue::bias_gelu;
  if (g.gelu_aux) {
    // cuBLASLt's GELU aux matrix needs a leading dimension divisible by 8; ours is n.
    KILN_CHECK(g.n % 8 == 0, "gemm: gelu_aux on CUDA needs n divisible by 8 (cuBLASLt aux ld), got n = " << g.n);
  }
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (g.epilogue) {
    case Epilogue::none: epi = CUBLASLT_EPILOGUE_DEFAULT; break;
    case Epilogue::bias: epi = CUBLASLT_EPILOGUE_BIAS; break;
    case Epilogue::gelu: epi = g.gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU; break;
    case Epilogue::bias_gelu: epi = g.gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS; break;
  }

  DeviceState& st = state_for(device.index);
  const size_t isize = dtype_size(g.in_dtype), osize = dtype_size(g.out_dtype);

  // cuBLASLt's A is our B, its B is our A (see the top of this file).
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  Layout la = make_layout(g.in_dtype, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  Layout lb = make_layout(g.in_dtype, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda, g.batch, g.stride_a);
  Layout lc = make_layout(g.out_dtype, g.n, g.m, g.ldc, g.batch, g.stride_c);

  cublasLtMatmulDesc_t d = nullptr;
  // fp32 accumulation and fp32 alpha/beta for every input type (never TF32).
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MatmulDesc desc(d);
  const int32_t ta = op_a, tb = op_b;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  if (has_bias) {
    // Bias of dtype out_dtype (cuBLASLt's default bias type for this D type),
    // the same vector for every batch (bias batch stride 0).
    const void* bias = g.bias;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  if (g.gelu_aux) {
    void* aux = g.gelu_aux;
    const int64_t aux_ld = g.n, aux_stride = g.m * g.n;  // M x N row-major per batch = N x M column-major
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld));
    if (g.batch > 1)
      KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, &aux_stride,
                                                       sizeof aux_stride));
  }

  const uint32_t align_a = alignment(g.b, g.stride_b, isize, g.batch);
  const uint32_t align_b = alignment(g.a, g.stride_a, isize, g.batch);
  const uint32_t align_c = alignment(g.c, g.stride_c, osize, g.batch);
  const uint32_t align_bias = g.bias ? alignment(g.bias, 0, osize, 1) : 0;
  const uint32_t align_aux = g.gelu_aux ? alignment(g.gelu_aux, g.m * g.n, osize, g.batch) : 0;
  const AlgoKey key{{g.m, g.n, g.k, g.trans_a, g.trans_b, g.lda, g.ldb, g.ldc, g.stride_a, g.stride_b, g.stride_c,
                     g.batch, static_cast<int64_t>(g.in_dtype), static_cast<int64_t>(g.out_dtype),
                     static_cast<int64_t>(epi), align_a, align_b, align_c, align_bias, align_aux,
                     g.gelu_aux != nullptr, g.beta != 0.0f}};

  Algo algo;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    auto it = st.algos.find(key);
    if (it != st.algos.end()) {
      algo = it->second;
      cached = true;
    }
  }
  if (!cached) {
    cublasLtMatmulPreference_t p = nullptr;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p));
    Preference pref(p);
    const uint64_t ws = kMaxWorkspace;
    KILN_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                           sizeof align_a));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                           sizeof align_b));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                           sizeof align_c));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                           sizeof align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(st.handle, d, la.get(), lb.get(), lc.get(), lc.get(), p,
                                                            1, &result, &found);
    KILN_CHECK(s == CUBLAS_STATUS_SUCCESS && found > 0,
               "gemm: cuBLASLt found no algorithm for m = " << g.m << ", n = " << g.n << ", k = " << g.k
                   << ", batch = " << g.batch << ", " << dtype_name(g.in_dtype) << " -> " << dtype_name(g.out_dtype)
                   << ", epilogue " << epilogue_name(g.epilogue) << ", lda/ldb/ldc = " << g.lda << "/" << g.ldb
                   << "/" << g.ldc << " (" << cublasLtGetStatusString(s) << ")");
    algo = Algo{result.algo, result.workspaceSize};
    std::lock_guard<std::mutex> lock(st.mu);
    st.algos.emplace(key, algo);
  }

  CachingAllocator& alloc = allocator_for(device);
  void* workspace = algo.workspace ? alloc.allocate(algo.workspace, stream) : nullptr;
  const float alpha = g.alpha, beta = g.beta;
  const cublasStatus_t s = cublasLtMatmul(st.handle, d, &alpha, g.b, la.get(), g.a, lb.get(), &beta, g.c, lc.get(),
                                          g.c, lc.get(), &algo.algo, workspace, algo.workspace, stream);
  // Stream-ordered: the next user of this block on `stream` runs after the matmul.
  alloc.free(workspace);
  KILN_CUBLAS_CHECK(s);
}

}  // namespace kiln::detail

#endif  // KILN_WITH_CUDA
