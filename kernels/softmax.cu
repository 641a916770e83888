// Softmax CUDA kernels (see softmax.h; CPU references in softmax_cpu.cpp).
//
// Napkin math (H200, ~4.2 TB/s measured-copy class):
//   forward  reads x, writes y: 2·rows·C·sizeof(T). 8192 × 50304 bf16 = 1.65 GB
//            → ~0.4 ms; 16384 × 4096 bf16: 268 MB → ~64 µs.
//   backward reads dy and y, writes dx: 3·rows·C·sizeof(T).
// One pass over memory while a row fits the group's registers (fp32 rows up
// to 16384 elements with 512 threads); longer rows are read twice (an online
// max/sum pass, then the write pass), the second read mostly from L2.
//
// Status: compiled for sm_90a; never run on a GPU yet.
#include <cmath>

#include "kernels/launch.cuh"
#include "kernels/rowwise.cuh"
#include "kernels/softmax.h"

namespace kiln {

namespace {

using rowwise::load_floats;
using rowwise::store_floats;

constexpr int kMaxBlock = 512;  // block-per-row mode; 128 registers per thread keep the cache unspilled

template <typename T, bool WARP>
__global__ void __launch_bounds__(WARP ? 128 : kMaxBlock)
    softmax_forward_kernel(T* y, const T* x, int64_t rows, int C, bool vec) {
  using G = rowwise::Group<WARP>;
  constexpr int N = rowwise::chunk_elems<T>();
  constexpr int K = rowwise::cache_chunks<T>();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * G::per_block() + G::index();
  if (row >= rows) return;  // warp mode: the whole warp leaves; block mode: grid == rows
  const int rank = G::rank(), size = G::size();
  const int nch = (C + N - 1) / N;
  const int tiles = (((nch + size - 1) / size) + K - 1) / K;
  const bool cached = tiles == 1;
  const T* xr = x + row * C;  // (C,)
  T* yr = y + row * C;

  // Online max and sum of exp(x - max) over this thread's columns: one read.
  float cache[K][N];
  float m = -INFINITY, s = 0.0f;
  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        load_floats(cache[k], xr, j * N, C, vec, -INFINITY);
        float cm = cache[k][0];
#pragma unroll
        for (int e = 1; e < N; ++e) cm = fmaxf(cm, cache[k][e]);
        if (cm > m) {
          s *= expf(m - cm);  // m = -inf: s is 0 and stays 0
          m = cm;
        }
#pragma unroll
        for (int e = 0; e < N; ++e) s += cache[k][e] == -INFINITY ? 0.0f : expf(cache[k][e] - m);
      }
    }
  }
  const float row_max = G::max(m);
  // A thread that saw only -inf has s = 0 (or NaN, which must survive).
  const float row_sum = G::sum(m == -INFINITY ? s : s * expf(m - row_max));
  const float inv = row_sum != 0.0f ? 1.0f / row_sum : 0.0f;  // fully masked row: y = 0
  const float shift = row_max == -INFINITY ? 0.0f : row_max;

  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        const int c0 = j * N;
        if (!cached) load_floats(cache[k], xr, c0, C, vec, -INFINITY);
        float o[N];
#pragma unroll
        for (int e = 0; e < N; ++e) o[e] = expf(cache[k][e] - shift) * inv;
        store_floats(yr, c0, C, vec, o);
      }
    }
  }
}

template <typename T, bool WARP>
__global__ void __launch_bounds__(WARP ? 128 : kMaxBlock)
    softmax_backward_kernel(T* dx, const T* dy, const T* y, int64_t rows, int C, bool vec) {
  using G = rowwise::Group<WARP>;
  constexpr int N = rowwise::chunk_elems<T>();
  constexpr int K = rowwise::cache_chunks<T>();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * G::per_block() + G::index();
  if (row >= rows) return;
  const int rank = G::rank(), size = G::size();
  const int nch = (C + N - 1) / N;
  const int tiles = (((nch + size - 1) / size) + K - 1) / K;
  const bool cached = tiles == 1;
  const T* dyr = dy + row * C;  // (C,)
  const T* yr = y + row * C;
  T* dxr = dx + row * C;

  float cdy[K][N], cy[K][N];
  float dot = 0.0f;
  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        load_floats(cdy[k], dyr, j * N, C, vec);
        load_floats(cy[k], yr, j * N, C, vec);
#pragma unroll
        for (int e = 0; e < N; ++e) dot += cdy[k][e] * cy[k][e];  // columns past C are 0
      }
    }
  }
  dot = G::sum(dot);

  for (int t = 0; t < tiles; ++t) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + (t * K + k) * size;
      if (j < nch) {
        const int c0 = j * N;
        if (!cached) {
          load_floats(cdy[k], dyr, c0, C, vec);
          load_floats(cy[k], yr, c0, C, vec);
        }
        float o[N];
#pragma unroll
        for (int e = 0; e < N; ++e) o[e] = cy[k][e] * (cdy[k][e] - dot);
        store_floats(dxr, c0, C, vec, o);  // this thread read dy and y here first: dx may alias them
      }
    }
  }
}

void check_shape(const char* op, int64_t rows, int64_t C) {
  KILN_CHECK(rows >= 0 && C >= 0, op << ": bad shape (" << rows << ", " << C << ")");
  KILN_CHECK(C < (int64_t{1} << 30), op << ": rows of " << C << " elements are not supported (max 2^30)");
}

template <typename T>
void forward_impl(T* y, const T* x, int64_t rows, int64_t C, cudaStream_t stream) {
  check_shape("softmax_forward", rows, C);
  if (rows == 0 || C == 0) return;
  const bool vec = rowwise::rows_aligned(x, C) && rowwise::rows_aligned(y, C);
  const rowwise::RowPlan p =
      rowwise::plan_rows(rows, ceil_div(C, rowwise::chunk_elems<T>()), rowwise::cache_chunks<T>(), 128, kMaxBlock);
  const int c = static_cast<int>(C);
  if (p.warp)
    launch(softmax_forward_kernel<T, true>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, y, x,
           rows, c, vec);
  else
    launch(softmax_forward_kernel<T, false>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, y, x,
           rows, c, vec);
}

template <typename T>
void backward_impl(T* dx, const T* dy, const T* y, int64_t rows, int64_t C, cudaStream_t stream) {
  check_shape("softmax_backward", rows, C);
  if (rows == 0 || C == 0) return;
  const bool vec = rowwise::rows_aligned(dx, C) && rowwise::rows_aligned(dy, C) && rowwise::rows_aligned(y, C);
  const rowwise::RowPlan p =
      rowwise::plan_rows(rows, ceil_div(C, rowwise::chunk_elems<T>()), rowwise::cache_chunks<T>(), 128, kMaxBlock);
  const int c = static_cast<int>(C);
  if (p.warp)
    launch(softmax_backward_kernel<T, true>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, dx, dy,
           y, rows, c, vec);
  else
    launch(softmax_backward_kernel<T, false>, dim3(static_cast<unsigned>(p.grid)), dim3(p.block), 0, stream, dx, dy,
           y, rows, c, vec);
}

}  // namespace

void softmax_forward(float* y, const float* x, int64_t rows, int64_t C, cudaStream_t stream) {
  forward_impl<float>(y, x, rows, C, stream);
}
void softmax_forward(bf16* y, const bf16* x, int64_t rows, int64_t C, cudaStream_t stream) {
  forward_impl<__nv_bfloat16>(dev_ptr(y), dev_ptr(x), rows, C, stream);
}
void softmax_backward(float* dx, const float* dy, const float* y, int64_t rows, int64_t C, cudaStream_t stream) {
  backward_impl<float>(dx, dy, y, rows, C, stream);
}
void softmax_backward(bf16* dx, const bf16* dy, const bf16* y, int64_t rows, int64_t C, cudaStream_t stream) {
  backward_impl<__nv_bfloat16>(dev_ptr(dx), dev_ptr(dy), dev_ptr(y), rows, C, stream);
}

}  // namespace kiln
