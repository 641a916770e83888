// CPU reference for kernels/dropout.h (T = float, double). This is the
// definition of the mask: philox_uniform(seed, offset, i) < 1 - p.
//
// Threaded on the CPU pool (runtime/parallel.h): element i's mask bit is a
// function of (seed, offset, i) alone, so any split gives the same result.
#include "kernels/dropout.h"
#include "runtime/error.h"
#include "runtime/parallel.h"
#include "runtime/philox.h"

namespace kiln {

namespace {

// Forward and backward apply the same mask and scale.
template <typename T>
void apply_dropout_mask(T* out, const T* in, int64_t n, float p, uint64_t seed, uint64_t offset, const char* who) {
  KILN_CHECK(p >= 0.0f && p <= 1.0f, who << ": dropout probability " << p << " is outside [0, 1]");
  KILN_CHECK(n >= 0, who << ": negative size " << n);
  // keep and scale are fp32 for every T so the mask and the fp32 results are
  // bit-identical to the GPU's.
  const float keep = 1.0f - p;
  const float scale = keep > 0.0f ? 1.0f / keep : 0.0f;
  parallel_for(n, int64_t{1} << 12, [&](int64_t lo, int64_t hi) {  // a Philox block per element: ~10 µs per 4K
    for (int64_t i = lo; i < hi; ++i) {
      const bool kept = philox_uniform(seed, offset, static_cast<uint64_t>(i)) < keep;
      out[i] = kept ? in[i] * static_cast<T>(scale) : T(0);
    }
  });
}

}  // namespace

template <typename T>
void dropout_forward_cpu(T* out, const T* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_dropout_mask(out, x, n, p, seed, offset, "dropout_forward_cpu");
}

template <typename T>
void dropout_backward_cpu(T* dx, const T* dy, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_dropout_mask(dx, dy, n, p, seed, offset, "dropout_backward_cpu");
}

template void dropout_forward_cpu<float>(float*, const float*, int64_t, float, uint64_t, uint64_t);
template void dropout_forward_cpu<double>(double*, const double*, int64_t, float, uint64_t, uint64_t);
template void dropout_backward_cpu<float>(float*, const float*, int64_t, float, uint64_t, uint64_t);
template void dropout_backward_cpu<double>(double*, const double*, int64_t, float, uint64_t, uint64_t);

}  // namespace kiln
