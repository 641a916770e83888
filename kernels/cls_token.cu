// CUDA token assembly (kernels/cls_token.h).
//
// Forward and the dx part of the backward are element-wise over 16-byte packs
// (a pack stays inside one token row when C is a multiple of the pack); the
// parameter gradients are one thread per (t, c) summing the batch in order.
//
// Napkin math at the default ViT (B = 256, N = 49, C = 64, fp32): the
// activations are 3.3 MB; forward reads x and writes out (~6.5 MB, ~2 µs at
// 4 TB/s), backward reads dout twice (dx copy and the batch sums) and writes
// dx. The batch-sum kernel has only (N + 1)·C = 3200 threads, each reading B
// strided-by-row but coalesced-across-c values: latency- not bandwidth-bound,
// a few µs; it is a small share of a training step.
#include "kernels/cls_token.h"
#include "kernels/elementwise.cuh"

namespace kiln {

namespace {

// out (B, tokens, C): element e of token t of image b.
template <typename T>
__global__ void cls_token_forward_kernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ cls,
                                         const T* __restrict__ pos, int64_t total, int64_t N, int64_t C, int P,
                                         bool vec) {
  constexpr int K = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * K;
  if (base >= total) return;
  const int64_t tokens = N + P;
  auto source = [&](int64_t e) -> const T* {  // the cls or x element that lands at out[e]
    const int64_t row = e / C, c = e - row * C;
    const int64_t b = row / tokens, t = row - b * tokens;
    return t < P ? cls + c : x + (b * N + t - P) * C + c;
  };
  auto pos_at = [&](int64_t e) -> const T* { return pos + ((e / C) % tokens) * C + e % C; };
  if (vec && base + K <= total) {
    Pack<T, K> v = load_pack<T, K>(source(base));
    if (pos) {
      const Pack<T, K> q = load_pack<T, K>(pos_at(base));
#pragma unroll
      for (int k = 0; k < K; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(q.v[k]));
    }
    store_pack<T, K>(out + base, v);
  } else {
    const int64_t end = base + K < total ? base + K : total;
    for (int64_t e = base; e < end; ++e)
      out[e] = pos ? from_float<T>(to_float(*source(e)) + to_float(*pos_at(e))) : *source(e);
  }
}

// dx (B, N, C) = dout[:, P:, :].
template <typename T>
__global__ void cls_token_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, int64_t total, int64_t N,
                                    int64_t C, int P, bool vec) {
  constexpr int K = pack16_size<T>();
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * K;
  if (base >= total) return;
  const int64_t per_image = N * C;
  // dx element e of image b sits P·C further per image in dout.
  auto src = [&](int64_t e) { return e + (e / per_image + 1) * P * C; };
  if (vec && base + K <= total) {
    store_pack<T, K>(dx + base, load_pack<T, K>(dout + src(base)));
  } else {
    const int64_t end = base + K < total ? base + K : total;
    for (int64_t e = base; e < end; ++e) dx[e] = dout[src(e)];
  }
}

// One thread per (t, c) of the first `rows` token rows: Σ_b dout[b, t, c] in
// order, added to dpos (when given) and, for t < P, to dcls.
template <typename T>
__global__ void cls_token_param_kernel(float* __restrict__ dcls, float* __restrict__ dpos,
                                       const T* __restrict__ dout, int64_t B, int64_t tokens, int64_t C,
                                       int64_t rows, int P) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // index into (rows, C)
  if (i >= rows * C) return;
  const int64_t plane = tokens * C;
  float acc = 0.0f;
  for (int64_t b = 0; b < B; ++b) acc += to_float(dout[b * plane + i]);
  if (dpos) dpos[i] += acc;
  if (dcls && i < P * C) dcls[i] += acc;
}

void check_shape(int64_t B, int64_t N, int64_t C, const char* who) {
  KILN_CHECK(B >= 0 && N >= 0 && C >= 0, who << ": bad shape (B " << B << ", N " << N << ", C " << C << ")");
}

template <typename T>
void launch_forward(T* out, const T* x, const T* cls, const T* pos, int64_t B, int64_t N, int64_t C,
                    cudaStream_t stream) {
  check_shape(B, N, C, "cls_token_forward");
  using D = device_t<T>;
  constexpr int K = pack16_size<D>();
  const int P = cls ? 1 : 0;
  const int64_t total = B * (N + P) * C;
  const bool vec = C % K == 0 && is_aligned(out, 16) && is_aligned(x, 16) && (!cls || is_aligned(cls, 16)) &&
                   (!pos || is_aligned(pos, 16));
  launch_1d(cls_token_forward_kernel<D>, ceil_div(total, K), kElementwiseBlock, 0, stream, dev_ptr(out), dev_ptr(x),
            dev_ptr(cls), dev_ptr(pos), total, N, C, P, vec);
}

template <typename T>
void launch_backward(T* dx, float* dcls, float* dpos, const T* dout, int64_t B, int64_t N, int64_t C, bool has_cls,
                     cudaStream_t stream) {
  check_shape(B, N, C, "cls_token_backward");
  using D = device_t<T>;
  constexpr int K = pack16_size<D>();
  const int P = has_cls ? 1 : 0;
  if (dx) {
    const bool vec = C % K == 0 && is_aligned(dx, 16) && is_aligned(dout, 16);
    launch_1d(cls_token_dx_kernel<D>, ceil_div(B * N * C, K), kElementwiseBlock, 0, stream, dev_ptr(dx),
              dev_ptr(dout), B * N * C, N, C, P, vec);
  }
  if (!has_cls) dcls = nullptr;
  const int64_t rows = dpos ? N + P : (dcls ? P : 0);
  if (rows == 0 || B == 0) return;  // nothing to add (an empty batch adds zero)
  launch_1d(cls_token_param_kernel<D>, rows * C, kElementwiseBlock, 0, stream, dcls, dpos, dev_ptr(dout), B, N + P,
            C, rows, P);
}

}  // namespace

void cls_token_forward(float* out, const float* x, const float* cls, const float* pos, int64_t B, int64_t N,
                       int64_t C, cudaStream_t stream) {
  launch_forward(out, x, cls, pos, B, N, C, stream);
}
void cls_token_forward(bf16* out, const bf16* x, const bf16* cls, const bf16* pos, int64_t B, int64_t N, int64_t C,
                       cudaStream_t stream) {
  launch_forward(out, x, cls, pos, B, N, C, stream);
}
void cls_token_backward(float* dx, float* dcls, float* dpos, const float* dout, int64_t B, int64_t N, int64_t C,
                        bool has_cls, cudaStream_t stream) {
  launch_backward(dx, dcls, dpos, dout, B, N, C, has_cls, stream);
}
void cls_token_backward(bf16* dx, float* dcls, float* dpos, const bf16* dout, int64_t B, int64_t N, int64_t C,
                        bool has_cls, cudaStream_t stream) {
  launch_backward(dx, dcls, dpos, dout, B, N, C, has_cls, stream);
}

}  // namespace kiln
