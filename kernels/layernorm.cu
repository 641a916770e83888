// LayerNorm CUDA kernels (see layernorm.h for the math and the API; the CPU
// references are in layernorm_cpu.cpp).
//
// Napkin math (H200, ~4.8 TB/s HBM3e; expect ~4.2 TB/s for a copy):
//   forward  reads x and writes y: 2·rows·C·sizeof(T) bytes (+ 8·rows for
//            mean/rstd, 8·C for weight/bias). GPT-2 124M, 8192 × 768 bf16:
//            25 MB → ~6 µs; 16384 × 4096 bf16: 268 MB → ~64 µs.
//   residual reads x and residual, writes sum and y: 4·rows·C·sizeof(T).
//   backward reads dy and x, writes dx: 3·rows·C·sizeof(T), plus the partial
//            sums (2 · partials · 2C · 4 bytes: written once, read once; with
//            ~32 rows per partial that is ≤ 8 % extra for bf16 at C = 768).
// All three are memory-bound: the kernels read each element once (rows that
// fit a thread group's registers) and do their arithmetic in fp32.
//
// Status: compiled for sm_90a; never run on a GPU yet.
#include <cmath>

#include "kernels/layernorm.h"
#include "kernels/layernorm_plan.h"
#include "kernels/launch.cuh"
#include "kernels/rowwise.cuh"

namespace kiln {

namespace {

using rowwise::load_floats;
using rowwise::store_floats;

constexpr int kMaxBlock = kLayerNormMaxBlock;  // block-per-row mode: 128 registers per thread, cache fits unspilled

__device__ __forceinline__ float param(const float* p, int c, int C) { return c < C ? __ldg(p + c) : 0.0f; }

// One row per group (warp or block). Passes over the row: (1) [residual: form
// and store the sum] sum, (2) squared deviations from the mean (two-pass
// variance: no cancellation for rows with a large mean), (3) normalize and
// write. With tiles == 1 the row is read once and passes 2 and 3 use the
// register cache; longer rows re-read it (from `sum` in the residual variant).
template <typename T, bool WARP>
__global__ void __launch_bounds__(WARP ? 128 : kMaxBlock)
    layernorm_forward_kernel(T* y, float* mean_out, float* rstd_out, T* sum_out, const T* x, const T* residual,
                             const float* __restrict__ weight, const float* __restrict__ bias, int64_t rows, int C,
                             float eps, bool vec) {
  using G = rowwise::Group<WARP>;
  constexpr int N = rowwise::chunk_elems<T>();
  constexpr int K = rowwise::cache_chunks<T>();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * G::per_block() + G::index();
  if (row >= rows) return;  // warp mode: the whole warp leaves; block mode: grid == rows
  const int rank = G::rank(), size = G::size();
  const int nch = (C + N - 1) / N;
  const int tiles = (((nch + size - 1) / size) + K - 1) / K;
  const bool cached = tiles == 1;
  const float inv_c = C > 0 ? 1.0f / static_cast<float>(C) : 0.0f;

  const T* xr = x + row * C;  // (C,)
  const T* rr = residual ? residual + row * C : nullptr;
  T* sr = residual ? sum_out + row * C : nullptr;
  const T* src = residual ? sr : xr;  // what passes 2 and 3 re-read
  T* yr = y + row * C;

  float cache[K][N];
  float s = 0.0f;
  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        const int c0 = j * N;
        if (residual) {
          float a[N], b[N];
          load_floats(a, xr, c0, C, vec);
          load_floats(b, rr, c0, C, vec);
          // The statistics are those of the stored sum, rounded to T.
#pragma unroll
          for (int e = 0; e < N; ++e) cache[k][e] = to_float(from_float<T>(a[e] + b[e]));
          store_floats(sr, c0, C, vec, cache[k]);
        } else {
          load_floats(cache[k], xr, c0, C, vec);
        }
#pragma unroll
        for (int e = 0; e < N; ++e) s += cache[k][e];  // columns past C are 0
      }
    }
  }
  const float mean = G::sum(s) * inv_c;

  float q = 0.0f;
  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        const int c0 = j * N;
        if (!cached) load_floats(cache[k], src, c0, C, vec);
#pragma unroll
        for (int e = 0; e < N; ++e) {
          const float d = cache[k][e] - mean;
          q += (c0 + e < C) ? d * d : 0.0f;
        }
      }
    }
  }
  const float rstd = rsqrtf(G::sum(q) * inv_c + eps);
  if (rank == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }

  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        const int c0 = j * N;
        if (!cached) load_floats(cache[k], src, c0, C, vec);
        float o[N];
#pragma unroll
        for (int e = 0; e < N; ++e)
          o[e] = (cache[k][e] - mean) * rstd * param(weight, c0 + e, C) + param(bias, c0 + e, C);
        store_floats(yr, c0, C, vec, o);
      }
    }
  }
}

// Backward. Block b's groups take rows b·gpb + g, then every gridDim.x·gpb-th
// row after it. Each thread owns the same columns in every row, so it
// accumulates dweight/dbias for them in its group's slice of shared memory
// (or, for rows too long for shared memory, straight into the block's slot of
// `partial`) without any synchronization; at the end the block adds its
// groups' slices in group order into partial[b]. Deterministic: the row set
// and order of every sum depend only on (rows, C).
//
// Shared accumulators are laid out (element e of the chunk, chunk j), i.e.
// column j·N + e at e·nch + j: the lanes of a warp own consecutive chunks, so
// they hit consecutive banks (the natural order would be a 4-way (fp32) or
// 8-way (bf16) bank conflict on every update).
template <typename T, bool WARP>
__global__ void __launch_bounds__(WARP ? kLayerNormWarpBackwardBlock : kMaxBlock)
    layernorm_backward_kernel(T* dx, float* partial, const T* dy, const T* x, const T* dresidual,
                              const float* __restrict__ weight, const float* __restrict__ mean,
                              const float* __restrict__ rstd, int64_t rows, int C, bool vec, bool smem_acc) {
  extern __shared__ float acc_smem[];  // (groups per block, 2, N, nch) when smem_acc
  using G = rowwise::Group<WARP>;
  constexpr int N = rowwise::chunk_elems<T>();
  constexpr int K = rowwise::cache_chunks<T>();
  const int rank = G::rank(), size = G::size(), gi = G::index(), gpb = G::per_block();
  const int nch = (C + N - 1) / N;
  const int tiles = (((nch + size - 1) / size) + K - 1) / K;
  const bool cached = tiles == 1;
  const float inv_c = C > 0 ? 1.0f / static_cast<float>(C) : 0.0f;
  // dweight accumulators, then dbias ones `half` floats later. Global slots
  // (natural (2, C) order) only in block mode, where gpb == 1.
  const int half = smem_acc ? nch * N : C;
  float* acc = smem_acc ? acc_smem + static_cast<int64_t>(gi) * 2 * half
                        : partial + static_cast<int64_t>(blockIdx.x) * 2 * C;
  const int e_stride = smem_acc ? nch : 1;  // slot(j, e) = j·j_stride + e·e_stride
  const int j_stride = smem_acc ? 1 : N;

  for (int t = 0; t < tiles; ++t)
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch)
        for (int e = 0; e < N; ++e)
          if (j * N + e < C) {
            acc[j * j_stride + e * e_stride] = 0.0f;
            acc[half + j * j_stride + e * e_stride] = 0.0f;
          }
    }

  const int64_t stride = static_cast<int64_t>(gridDim.x) * gpb;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * gpb + gi; row < rows; row += stride) {
    const T* dyr = dy + row * C;  // (C,)
    const T* xr = x + row * C;
    const float m = mean[row], rs = rstd[row];
    float cdy[K][N], cx[K][N];
    float sg = 0.0f, sgx = 0.0f;
    for (int t = 0; t < tiles; ++t) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = rank + (t * K + k) * size;
        if (j < nch) {
          const int c0 = j * N;
          load_floats(cdy[k], dyr, c0, C, vec);
          load_floats(cx[k], xr, c0, C, vec);
#pragma unroll
          for (int e = 0; e < N; ++e) {
            const int c = c0 + e;
            if (c < C) {
              const float xh = (cx[k][e] - m) * rs;
              const float g = cdy[k][e] * __ldg(weight + c);
              sg += g;
              sgx += g * xh;
              const int slot = j * j_stride + e * e_stride;
              acc[slot] += cdy[k][e] * xh;
              acc[half + slot] += cdy[k][e];
            }
          }
        }
      }
    }
    const float mean_g = G::sum(sg) * inv_c;
    const float mean_gx = G::sum(sgx) * inv_c;

    T* dxr = dx + row * C;
    const T* drr = dresidual ? dresidual + row * C : nullptr;
    for (int t = 0; t < tiles; ++t) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = rank + (t * K + k) * size;
        if (j < nch) {
          const int c0 = j * N;
          if (!cached) {
            load_floats(cdy[k], dyr, c0, C, vec);
            load_floats(cx[k], xr, c0, C, vec);
          }
          float o[N];
          if (drr)
            load_floats(o, drr, c0, C, vec);
          else
#pragma unroll
            for (int e = 0; e < N; ++e) o[e] = 0.0f;
#pragma unroll
          for (int e = 0; e < N; ++e) {
            const float g = cdy[k][e] * param(weight, c0 + e, C);
            const float xh = (cx[k][e] - m) * rs;
            o[e] += rs * (g - mean_g - xh * mean_gx);
          }
          store_floats(dxr, c0, C, vec, o);  // after this thread read dy/dresidual here: dx may alias them
        }
      }
    }
  }

  if (smem_acc) {
    __syncthreads();
    float* out = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;  // (2, C)
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) {
      const int h = i >= C ? 1 : 0;
      const int c = i - h * C;
      const int slot = h * half + (c % N) * nch + c / N;
      float s = 0.0f;
      for (int g = 0; g < gpb; ++g) s += acc_smem[static_cast<int64_t>(g) * 2 * half + slot];
      out[i] = s;
    }
  }
}

// dweight[c] += Σ_b partial[b, 0, c], dbias[c] += Σ_b partial[b, 1, c], in a
// fixed order: a (32, 8) block covers 32 of the 2C columns; thread (tx, ty)
// sums partials ty, ty + 8, ...; then ty == 0 adds the 8 sums in order.
// Reads partials · 2C floats, coalesced along columns.
__global__ void __launch_bounds__(256)
    layernorm_param_reduce_kernel(float* dweight, float* dbias, const float* __restrict__ partial, int partials,
                                  int C) {
  __shared__ float sums[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;  // in [0, 2C)
  float s = 0.0f;
  if (c < 2 * C)
    for (int b = threadIdx.y; b < partials; b += 8) s += partial[static_cast<int64_t>(b) * 2 * C + c];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < 2 * C) {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x];
    if (c < C)
      dweight[c] += total;
    else
      dbias[c - C] += total;
  }
}

void check_shape(const char* op, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, op << ": bad shape (" << rows << ", " << C << ")");
  KILN_CHECK(C < (int64_t{1} << 30), op << ": rows of " << C << " elements are not supported (max 2^30)");
}

template <typename T>
void forward_impl(const char* op, T* y, float* mean, float* rstd, T* sum, const T* x, const T* residual,
                  const float* weight, const float* bias, int64_t rows, int64_t C, float eps, cudaStream_t stream) {
  check_shape(op, rows, C);
  if (rows == 0) return;
  constexpr int N = rowwise::chunk_elems<T>();
  const int64_t nch = ceil_div(C, N);
  bool vec = rowwise::rows_aligned(x, C) && rowwise::rows_aligned(y, C);
  if (residual) vec = vec && rowwise::rows_aligned(residual, C) && rowwise::rows_aligned(sum, C);
  const rowwise::RowPlan p = rowwise::plan_rows(rows, nch, rowwise::cache_chunks<T>(), 128, kMaxBlock);
  const int c = static_cast<int>(C);
  if (p.warp)
    launch(layernorm_forward_kernel<T, true>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, y,
           mean, rstd, sum, x, residual, weight, bias, rows, c, eps, vec);
  else
    launch(layernorm_forward_kernel<T, false>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, y,
           mean, rstd, sum, x, residual, weight, bias, rows, c, eps, vec);
}

int max_smem_optin() {
  int dev = 0, bytes = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

// The kernel's static shared memory and thread limit, as the driver sees them
// (they differ between builds: a -G build keeps more static shared memory and
// more registers). Queried once per kernel.
template <typename Kernel>
KernelLimits limits_of(Kernel kernel) {
  cudaFuncAttributes a{};
  KILN_CUDA_CHECK(cudaFuncGetAttributes(&a, kernel));
  return KernelLimits{a.sharedSizeBytes, a.maxThreadsPerBlock};
}

template <typename T>
void backward_impl(T* dx, float* dweight, float* dbias, float* scratch, const T* dy, const T* x, const float* weight,
                   const float* mean, const float* rstd, const T* dresidual, int64_t rows, int64_t C,
                   cudaStream_t stream) {
  check_shape("layernorm_backward", rows, C);
  if (rows == 0 || C == 0) return;  // nothing to write; dweight/dbias += 0
  const int64_t partials = layernorm_backward_partials(rows);
  bool vec = rowwise::rows_aligned(dy, C) && rowwise::rows_aligned(x, C) && rowwise::rows_aligned(dx, C);
  if (dresidual) vec = vec && rowwise::rows_aligned(dresidual, C);
  const int c = static_cast<int>(C);

  static const KernelLimits warp_limits = limits_of(layernorm_backward_kernel<T, true>);
  static const KernelLimits block_limits = limits_of(layernorm_backward_kernel<T, false>);
  // The plan (kernels/layernorm_plan.h) counts the kernel's static shared
  // memory with the dynamic: both share the 48 KB a block gets without opting in.
  const LayerNormBackwardPlan p = plan_layernorm_backward(C, static_cast<int>(sizeof(T)), warp_limits, block_limits,
                                                          static_cast<size_t>(max_smem_optin()));
  const auto kernel = p.warp ? layernorm_backward_kernel<T, true> : layernorm_backward_kernel<T, false>;
  if (p.opt_in)
    KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(p.dynamic_smem)));
  launch(kernel, dim3(static_cast<unsigned>(partials)), dim3(static_cast<unsigned>(p.block)), p.dynamic_smem, stream,
         dx, scratch, dy, x, dresidual, weight, mean, rstd, rows, c, vec, p.smem_acc);
  launch(layernorm_param_reduce_kernel, dim3(static_cast<unsigned>(ceil_div(2 * C, 32))), dim3(32, 8), 0, stream,
         dweight, dbias, static_cast<const float*>(scratch), static_cast<int>(partials), c);
}

}  // namespace

void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int64_t rows, int64_t C, float eps, cudaStream_t stream) {
  forward_impl<float>("layernorm_forward", y, mean, rstd, nullptr, x, nullptr, weight, bias, rows, C, eps, stream);
}

void layernorm_forward(bf16* y, float* mean, float* rstd, const bf16* x, const float* weight, const float* bias,
                       int64_t rows, int64_t C, float eps, cudaStream_t stream) {
  forward_impl<__nv_bfloat16>("layernorm_forward", dev_ptr(y), mean, rstd, nullptr, dev_ptr(x), nullptr, weight,
                              bias, rows, C, eps, stream);
}

void residual_layernorm_forward(float* sum, float* y, float* mean, float* rstd, const float* x,
                                const float* residual, const float* weight, const float* bias, int64_t rows,
                                int64_t C, float eps, cudaStream_t stream) {
  forward_impl<float>("residual_layernorm_forward", y, mean, rstd, sum, x, residual, weight, bias, rows, C, eps,
                      stream);
}

void residual_layernorm_forward(bf16* sum, bf16* y, float* mean, float* rstd, const bf16* x, const bf16* residual,
                                const float* weight, const float* bias, int64_t rows, int64_t C, float eps,
                                cudaStream_t stream) {
  forward_impl<__nv_bfloat16>("residual_layernorm_forward", dev_ptr(y), mean, rstd, dev_ptr(sum), dev_ptr(x),
                              dev_ptr(residual), weight, bias, rows, C, eps, stream);
}

void layernorm_backward(float* dx, float* dweight, float* dbias, float* scratch, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, const float* dresidual,
                        int64_t rows, int64_t C, cudaStream_t stream) {
  backward_impl<float>(dx, dweight, dbias, scratch, dy, x, weight, mean, rstd, dresidual, rows, C, stream);
}

void layernorm_backward(bf16* dx, float* dweight, float* dbias, float* scratch, const bf16* dy, const bf16* x,
                        const float* weight, const float* mean, const float* rstd, const bf16* dresidual,
                        int64_t rows, int64_t C, cudaStream_t stream) {
  backward_impl<__nv_bfloat16>(dev_ptr(dx), dweight, dbias, scratch, dev_ptr(dy), dev_ptr(x), weight, mean, rstd,
                               dev_ptr(dresidual), rows, C, stream);
}

}  // namespace kiln
