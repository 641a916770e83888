// CPU references for kernels/loss_stats.h (T = float, double).
#include "kernels/loss_stats.h"

#include "runtime/error.h"

namespace kiln {

template <typename T>
void loss_sum_add_cpu(double* acc, const T* losses, const int32_t* targets, int64_t rows, int32_t ignore_index) {
  KILN_CHECK(acc && rows >= 0 && (rows == 0 || (losses && targets)), "loss_sum_add_cpu: bad arguments");
  double s = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    if (targets[r] != ignore_index) s += static_cast<double>(losses[r]);
  *acc += s;
}

template <typename T>
void correct_count_add_cpu(double* acc, const T* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                           int32_t ignore_index) {
  KILN_CHECK(acc && rows >= 0 && V >= 1 && V <= Vp && (rows == 0 || (logits && targets)),
             "correct_count_add_cpu: bad arguments (V " << V << ", Vp " << Vp << ")");
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore_index) continue;
    const T* row = logits + r * Vp;
    int64_t best = 0;
    for (int64_t c = 1; c < V; ++c)
      if (row[c] > row[best]) best = c;
    n += best == targets[r];
  }
  *acc += static_cast<double>(n);
}

template void loss_sum_add_cpu<float>(double*, const float*, const int32_t*, int64_t, int32_t);
template void loss_sum_add_cpu<double>(double*, const double*, const int32_t*, int64_t, int32_t);
template void correct_count_add_cpu<float>(double*, const float*, const int32_t*, int64_t, int64_t, int64_t, int32_t);
template void correct_count_add_cpu<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                            int32_t);

}  // namespace kiln
