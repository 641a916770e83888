// CPU reference for kernels/norm.h (T = float, double).
//
// Deterministic blocks: each tensor is cut into blocks of kNormBlock
// elements (its last block shorter); a block's sum of squares is taken in
// double with fixed lanes (kernels/cpu_math.h), and the block sums are added
// in order (tensor by tensor, block by block). The blocks depend on the
// tensors' sizes alone, so the norm is the same at any thread count; the
// blocks are spread over the CPU pool (runtime/parallel.h) in contiguous
// ranges.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu_math.h"
#include "kernels/norm.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

/// Elements per block (64 KiB of floats: ~5 µs of squares).
constexpr int64_t kNormBlock = int64_t{1} << 14;
/// Blocks per part below which another thread does not pay.
constexpr int64_t kBlocksPerPart = 4;

template <typename T>
double sum_squares(const T* x, int64_t n) {
  return cpu_math::dot_lanes(x, x, n);
}

}  // namespace

template <typename T>
T global_norm_cpu(const NormTensorT<T>* tensors, int64_t count) {
  KILN_CHECK(count >= 0 && (count == 0 || tensors != nullptr), "global_norm_cpu: bad tensor list (count " << count << ")");
  // first[k] = index of tensor k's first block.
  std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);
  for (int64_t k = 0; k < count; ++k) {
    KILN_CHECK(tensors[k].n >= 0 && (tensors[k].n == 0 || tensors[k].data != nullptr),
               "global_norm_cpu: tensor " << k << " is null or has negative size " << tensors[k].n);
    first[k + 1] = first[k] + (tensors[k].n + kNormBlock - 1) / kNormBlock;
  }
  const int64_t blocks = first[count];
  std::vector<double> partial(static_cast<size_t>(blocks));  // (blocks) sums of squares
  parallel_for(blocks, kBlocksPerPart, [&](int64_t lo, int64_t hi) {
    int64_t k = std::upper_bound(first.begin(), first.end(), lo) - first.begin() - 1;
    for (int64_t b = lo; b < hi; ++b) {
      while (b >= first[k + 1]) ++k;  // skips empty tensors too
      const int64_t i0 = (b - first[k]) * kNormBlock, i1 = std::min(tensors[k].n, i0 + kNormBlock);
      partial[static_cast<size_t>(b)] = sum_squares(tensors[k].data + i0, i1 - i0);
    }
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  return static_cast<T>(std::sqrt(sum));
}

template <typename T>
void global_norm_clip_cpu(T* norm, T* scale, T* nonfinite, const NormTensorT<T>* tensors, int64_t count,
                          double max_norm) {
  KILN_CHECK(norm != nullptr, "global_norm_clip_cpu: null norm");
  const T r = global_norm_cpu<T>(tensors, count);
  *norm = r;
  const bool finite = std::isfinite(static_cast<double>(r));
  // In double, as the host computed it before the scale moved next to the
  // norm: the CPU backend's clipping is unchanged bit for bit.
  if (scale) *scale = max_norm > 0.0 && finite ? static_cast<T>(std::min(1.0, max_norm / (static_cast<double>(r) + 1e-6))) : T(1);
  if (nonfinite && !finite) *nonfinite = T(1);
}

template float global_norm_cpu<float>(const NormTensorT<float>*, int64_t);
template double global_norm_cpu<double>(const NormTensorT<double>*, int64_t);
template void global_norm_clip_cpu<float>(float*, float*, float*, const NormTensorT<float>*, int64_t, double);
template void global_norm_clip_cpu<double>(double*, double*, double*, const NormTensorT<double>*, int64_t, double);

}  // namespace kiln
