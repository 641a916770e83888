// CUDA kernels for kernels/activation.h. All of them are memory-bound:
// napkin math per call is in bytes, at the H200's ~4.8 TB/s HBM3e (expect
// ~90 % of that from a copy).
//
//   gelu/relu forward   read n + write n elements    8192×3072 fp32: 201 MB → ~45 µs
//   gelu/relu backward  read 2n + write n            8192×3072 fp32: 302 MB → ~65 µs
//   bias add            read n (+cols) + write n     same as forward
//   residual add        read 2n + write n            8192×768 bf16: 38 MB → ~8 µs
//   bias backward       read n (+ 2·cols)            8192×768 fp32: 25 MB → ~6 µs ideal
//
// The elementwise ops share map1/map2 from elementwise.cuh (16-byte packs
// with a scalar tail); the formulas come from activation_math.h, the same
// code the CPU references run.
#include "kernels/activation.h"
#include "kernels/activation_math.h"
#include "kernels/elementwise.cuh"

namespace kiln {

namespace {

struct GeluForwardOp {
  __device__ float operator()(float x) const { return gelu_value<float>(x); }
};
struct GeluBackwardOp {
  __device__ float operator()(float x, float dy) const { return dy * gelu_grad<float>(x); }
};
struct ReluForwardOp {
  __device__ float operator()(float x) const { return relu_value<float>(x); }
};
struct ReluBackwardOp {
  __device__ float operator()(float x, float dy) const { return relu_grad_mask<float>(x, dy); }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// out (rows, cols) = x + bias (cols), walked as a flat array of n = rows·cols
// elements in 16-byte slots. `vec` is set only when cols is a multiple of the
// pack size, so a full slot never straddles two rows; the bias (cols values,
// L1/L2 resident) is read element by element.
template <typename T, typename B>
__global__ void bias_add_kernel(T* out, const T* x, const B* bias, int64_t n, int64_t cols, bool vec) {
  constexpr int N = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (base >= n) return;
  if (vec && base + N <= n) {
    const int64_t c0 = base % cols;
    Pack<T, N> px = load_pack<T, N>(x + base);
    Pack<T, N> po;
#pragma unroll
    for (int k = 0; k < N; ++k) po.v[k] = from_float<T>(to_float(px.v[k]) + to_float(bias[c0 + k]));
    store_pack<T, N>(out + base, po);
  } else {
    const int64_t end = base + N < n ? base + N : n;
    for (int64_t i = base; i < end; ++i) out[i] = from_float<T>(to_float(x[i]) + to_float(bias[i % cols]));
  }
}

template <typename T, typename B>
void launch_bias_add(T* out, const T* x, const B* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_add_forward: bad shape (" << rows << ", " << cols << ")");
  using D = device_t<T>;
  constexpr int N = pack16_size<D>();
  const int64_t n = rows * cols;
  const bool vec = is_aligned(out, 16) && is_aligned(x, 16) && cols % N == 0;
  launch_1d(bias_add_kernel<D, device_t<B>>, ceil_div(n, N), kElementwiseBlock, 0, stream, dev_ptr(out),
            dev_ptr(x), dev_ptr(bias), n, cols, vec);
}

// dbias (cols) += Σ_r dy (rows, cols). Block (32, 32): threadIdx.x picks one
// of the block's 32 columns (a warp reads 32 consecutive values of a row:
// coalesced), threadIdx.y one of 32 row lanes (rows ty, ty + 32, ...). The 32
// lane sums are then added in lane order by one thread per column, so the
// result depends only on (rows, cols), never on scheduling.
//
// Parallelism is ceil(cols / 32) blocks (24 for C = 768), which leaves most
// SMs idle at GPT-2 shapes; splitting rows across blocks would need a
// workspace for the partials. Kept simple until the benchmark says otherwise.
constexpr int kBiasCols = 32;
constexpr int kBiasRowLanes = 32;

template <typename T>
__global__ void bias_backward_kernel(float* __restrict__ dbias, const T* __restrict__ dy, int64_t rows,
                                     int64_t cols) {
  __shared__ float partial[kBiasRowLanes][kBiasCols + 1];  // +1: no bank conflicts on the column sum
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBiasCols + tx;
  float acc = 0.0f;
  if (c < cols) {
#pragma unroll 4
    for (int64_t r = ty; r < rows; r += kBiasRowLanes) acc += to_float(dy[r * cols + c]);
  }
  partial[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < cols) {
    float s = 0.0f;
    for (int k = 0; k < kBiasRowLanes; ++k) s += partial[k][tx];
    dbias[c] += s;
  }
}

template <typename T>
void launch_bias_backward(float* dbias, const T* dy, int64_t rows, int64_t cols, cudaStream_t stream) {
  KILN_CHECK(rows >= 0 && cols >= 0, "bias_backward: bad shape (" << rows << ", " << cols << ")");
  if (rows == 0) return;  // adds nothing
  const int64_t blocks = ceil_div(cols, kBiasCols);
  KILN_CHECK(blocks <= 0x7fffffffLL, "bias_backward: " << cols << " columns exceed the grid limit");
  launch(bias_backward_kernel<device_t<T>>, dim3(static_cast<unsigned>(blocks)), dim3(kBiasCols, kBiasRowLanes), 0,
         stream, dbias, dev_ptr(dy), rows, cols);
}

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream) {
  launch_map1(out, x, n, GeluForwardOp{}, stream);
}
void gelu_forward(bf16* out, const bf16* x, int64_t n, cudaStream_t stream) {
  launch_map1(out, x, n, GeluForwardOp{}, stream);
}
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n, cudaStream_t stream) {
  launch_map2(dx, x, dy, n, GeluBackwardOp{}, stream);
}
void gelu_backward(bf16* dx, const bf16* x, const bf16* dy, int64_t n, cudaStream_t stream) {
  launch_map2(dx, x, dy, n, GeluBackwardOp{}, stream);
}

void relu_forward(float* out, const float* x, int64_t n, cudaStream_t stream) {
  launch_map1(out, x, n, ReluForwardOp{}, stream);
}
void relu_forward(bf16* out, const bf16* x, int64_t n, cudaStream_t stream) {
  launch_map1(out, x, n, ReluForwardOp{}, stream);
}
void relu_backward(float* dx, const float* x, const float* dy, int64_t n, cudaStream_t stream) {
  launch_map2(dx, x, dy, n, ReluBackwardOp{}, stream);
}
void relu_backward(bf16* dx, const bf16* x, const bf16* dy, int64_t n, cudaStream_t stream) {
  launch_map2(dx, x, dy, n, ReluBackwardOp{}, stream);
}

void bias_add_forward(float* out, const float* x, const float* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream) {
  launch_bias_add(out, x, bias, rows, cols, stream);
}
void bias_add_forward(bf16* out, const bf16* x, const bf16* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream) {
  launch_bias_add(out, x, bias, rows, cols, stream);
}
void bias_add_forward(bf16* out, const bf16* x, const float* bias, int64_t rows, int64_t cols,
                      cudaStream_t stream) {
  launch_bias_add(out, x, bias, rows, cols, stream);
}

void bias_backward(float* dbias, const float* dy, int64_t rows, int64_t cols, cudaStream_t stream) {
  launch_bias_backward(dbias, dy, rows, cols, stream);
}
void bias_backward(float* dbias, const bf16* dy, int64_t rows, int64_t cols, cudaStream_t stream) {
  launch_bias_backward(dbias, dy, rows, cols, stream);
}

void residual_add(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream) {
  launch_map2(out, a, b, n, AddOp{}, stream);
}
void residual_add(bf16* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream) {
  launch_map2(out, a, b, n, AddOp{}, stream);
}

}  // namespace kiln
