// CUDA loss and accuracy sums (kernels/loss_stats.h).
//
// One block: thread t takes rows t, t + 256, ... in order and keeps a double
// partial; the 256 partials are added by a fixed shared-memory tree, and
// thread 0 adds the batch total into *acc. Nothing depends on timing, so the
// sums are the same bits every run. A batch is at most a few hundred KB, so
// one block is plenty (and needs no second pass or atomics).
#include "kernels/launch.cuh"
#include "kernels/loss_stats.h"

namespace kiln {

namespace {

constexpr int kStatsBlock = 256;

// Sum of v over the block in a fixed order; valid in thread 0.
__device__ double block_sum_fixed(double v) {
  __shared__ double s[kStatsBlock];
  s[threadIdx.x] = v;
  __syncthreads();
  for (int half = kStatsBlock / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.x) < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
  return s[0];
}

__global__ void __launch_bounds__(kStatsBlock)
    loss_sum_kernel(double* acc, const float* __restrict__ losses, const int32_t* __restrict__ targets, int64_t rows,
                    int32_t ignore_index) {
  double p = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += kStatsBlock)
    if (targets[r] != ignore_index) p += static_cast<double>(losses[r]);
  const double s = block_sum_fixed(p);
  if (threadIdx.x == 0) *acc += s;
}

template <typename T>
__global__ void __launch_bounds__(kStatsBlock)
    correct_kernel(double* acc, const T* __restrict__ logits, const int32_t* __restrict__ targets, int64_t rows,
                   int64_t V, int64_t Vp, int32_t ignore_index) {
  double n = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += kStatsBlock) {
    if (targets[r] == ignore_index) continue;
    const T* row = logits + r * Vp;
    float best = to_float(row[0]);
    int64_t arg = 0;
    for (int64_t c = 1; c < V; ++c) {
      const float x = to_float(row[c]);
      if (x > best) {
        best = x;
        arg = c;
      }
    }
    n += arg == targets[r] ? 1.0 : 0.0;
  }
  const double s = block_sum_fixed(n);
  if (threadIdx.x == 0) *acc += s;
}

void check_args(const double* acc, int64_t rows, const void* a, const int32_t* targets, const char* who) {
  KILN_CHECK(acc != nullptr && rows >= 0 && (rows == 0 || (a && targets)), who << ": bad arguments (rows " << rows << ")");
}

template <typename T>
void launch_correct(double* acc, const T* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                    cudaStream_t stream, int32_t ignore_index) {
  check_args(acc, rows, logits, targets, "correct_count_add");
  KILN_CHECK(V >= 1 && V <= Vp, "correct_count_add: V " << V << ", Vp " << Vp);
  if (rows == 0) return;
  launch(correct_kernel<device_t<T>>, dim3(1), dim3(kStatsBlock), 0, stream, acc, dev_ptr(logits), targets, rows, V,
         Vp, ignore_index);
}

}  // namespace

void loss_sum_add(double* acc, const float* losses, const int32_t* targets, int64_t rows, cudaStream_t stream,
                  int32_t ignore_index) {
  check_args(acc, rows, losses, targets, "loss_sum_add");
  if (rows == 0) return;
  launch(loss_sum_kernel, dim3(1), dim3(kStatsBlock), 0, stream, acc, losses, targets, rows, ignore_index);
}

void correct_count_add(double* acc, const float* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                       cudaStream_t stream, int32_t ignore_index) {
  launch_correct(acc, logits, targets, rows, V, Vp, stream, ignore_index);
}

void correct_count_add(double* acc, const bf16* logits, const int32_t* targets, int64_t rows, int64_t V, int64_t Vp,
                       cudaStream_t stream, int32_t ignore_index) {
  launch_correct(acc, logits, targets, rows, V, Vp, stream, ignore_index);
}

}  // namespace kiln
