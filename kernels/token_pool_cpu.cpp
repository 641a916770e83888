// CPU references for kernels/token_pool.h (R = float, double), and the shape
// check both backends share.
#include <algorithm>
#include <vector>

#include "kernels/token_pool.h"
#include "runtime/error.h"

namespace kiln {

void check_token_pool_shape(int64_t B, int64_t T, int64_t C, int64_t first, int64_t count, const char* who) {
  KILN_CHECK(B >= 0 && T >= 0 && C >= 0, who << ": bad shape (B " << B << ", T " << T << ", C " << C << ")");
  KILN_CHECK(count >= 1 && first >= 0 && first + count <= T,
             who << ": window [" << first << ", " << first + count << ") is not a non-empty range of the " << T
                 << " tokens");
}

template <typename R>
void token_pool_forward_cpu(R* out, const R* x, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count) {
  check_token_pool_shape(B, T, C, first, count, "token_pool_forward_cpu");
  std::vector<R> acc(static_cast<size_t>(C));  // (C)
  for (int64_t b = 0; b < B; ++b) {
    std::fill(acc.begin(), acc.end(), R(0));
    for (int64_t t = first; t < first + count; ++t) {
      const R* row = x + (b * T + t) * C;  // (C)
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
    }
    const R n = static_cast<R>(count);
    for (int64_t c = 0; c < C; ++c) out[b * C + c] = acc[c] / n;
  }
}

template <typename R>
void token_pool_backward_cpu(R* dx, const R* dout, int64_t B, int64_t T, int64_t C, int64_t first, int64_t count) {
  check_token_pool_shape(B, T, C, first, count, "token_pool_backward_cpu");
  const R n = static_cast<R>(count);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      R* row = dx + (b * T + t) * C;  // (C)
      if (t < first || t >= first + count) {
        std::fill(row, row + C, R(0));
      } else {
        for (int64_t c = 0; c < C; ++c) row[c] = dout[b * C + c] / n;
      }
    }
  }
}

template void token_pool_forward_cpu<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void token_pool_forward_cpu<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void token_pool_backward_cpu<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void token_pool_backward_cpu<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace kiln
