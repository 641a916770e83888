// CPU references for kernels/cls_token.h (T = float, double).
#include <algorithm>
#include <vector>

#include "kernels/cls_token.h"
#include "runtime/error.h"

namespace kiln {

namespace {

void check_shape(int64_t B, int64_t N, int64_t C, const char* who) {
  KILN_CHECK(B >= 0 && N >= 0 && C >= 0, who << ": bad shape (B " << B << ", N " << N << ", C " << C << ")");
}

}  // namespace

template <typename T>
void cls_token_forward_cpu(T* out, const T* x, const T* cls, const T* pos, int64_t B, int64_t N, int64_t C) {
  check_shape(B, N, C, "cls_token_forward_cpu");
  const int64_t P = cls ? 1 : 0, tokens = P + N;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < tokens; ++t) {
      const T* src = t < P ? cls : x + (b * N + t - P) * C;  // (C)
      T* o = out + (b * tokens + t) * C;                      // (C)
      if (pos) {
        const T* q = pos + t * C;  // (C)
        for (int64_t c = 0; c < C; ++c) o[c] = src[c] + q[c];
      } else {
        std::copy(src, src + C, o);
      }
    }
  }
}

template <typename T>
void cls_token_backward_cpu(T* dx, T* dcls, T* dpos, const T* dout, int64_t B, int64_t N, int64_t C, bool has_cls) {
  check_shape(B, N, C, "cls_token_backward_cpu");
  const int64_t P = has_cls ? 1 : 0, tokens = P + N;
  if (dx)
    for (int64_t b = 0; b < B; ++b) {
      const T* src = dout + (b * tokens + P) * C;  // (N, C) of image b
      std::copy(src, src + N * C, dx + b * N * C);
    }
  if (!dpos && !(dcls && has_cls)) return;
  // Σ over the batch in order, per token row, into a fresh accumulator (the
  // GPU's order).
  std::vector<T> acc(static_cast<size_t>(C));  // (C)
  const int64_t rows = dpos ? tokens : P;      // only the class token's row when pos is not trained
  for (int64_t t = 0; t < rows; ++t) {
    std::fill(acc.begin(), acc.end(), T(0));
    for (int64_t b = 0; b < B; ++b) {
      const T* d = dout + (b * tokens + t) * C;
      for (int64_t c = 0; c < C; ++c) acc[c] += d[c];
    }
    if (dpos)
      for (int64_t c = 0; c < C; ++c) dpos[t * C + c] += acc[c];
    if (t < P && dcls)
      for (int64_t c = 0; c < C; ++c) dcls[c] += acc[c];
  }
}

template void cls_token_forward_cpu<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                           int64_t);
template void cls_token_forward_cpu<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                            int64_t);
template void cls_token_backward_cpu<float>(float*, float*, float*, const float*, int64_t, int64_t, int64_t, bool);
template void cls_token_backward_cpu<double>(double*, double*, double*, const double*, int64_t, int64_t, int64_t,
                                             bool);

}  // namespace kiln
