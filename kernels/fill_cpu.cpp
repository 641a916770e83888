// CPU references for kernels/fill.h. Every random value is computed in float
// exactly as the CUDA kernels compute it (explicit fmaf, no contraction: this
// file is built with -ffp-contract=off), then stored as T. Threaded on the CPU
// pool (runtime/parallel.h) over whole Philox counters: each value depends on
// its index alone, so any split gives the same tensor.
#include <cmath>

#include "kernels/fill.h"
#include "runtime/parallel.h"
#include "runtime/philox.h"

namespace kiln {
namespace {

template <typename T> inline T store(float v) { return static_cast<T>(v); }
template <> inline bf16 store<bf16>(float v) { return float_to_bf16(v); }

}  // namespace

template <typename T>
void fill_constant_cpu(T* y, T value, int64_t n) {
  parallel_for(n, int64_t{1} << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = value;
  });
}

template <typename T>
void fill_arange_cpu(T* y, int64_t n) {
  // float(i) rounds to nearest like the GPU's __ll2float_rn; double is exact.
  for (int64_t i = 0; i < n; ++i) y[i] = store<T>(static_cast<float>(i));
}
template <>
void fill_arange_cpu<double>(double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<double>(i);
}
template <>
void fill_arange_cpu<int32_t>(int32_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<int32_t>(i);
}

template <typename T>
void fill_uniform_cpu(T* y, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi) {
  const float range = hi - lo;
  // One Philox call per counter serves 4 consecutive elements (as on the GPU).
  parallel_for((n + 3) / 4, int64_t{1} << 11, [&](int64_t c0, int64_t c1) {
    for (int64_t base = c0 * 4; base < c1 * 4 && base < n; base += 4) {
      const Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(base / 4));
      for (int j = 0; j < 4 && base + j < n; ++j)
        y[base + j] = store<T>(fmaf(philox_word_to_uniform(r.v[j]), range, lo));
    }
  });
}

template <typename T>
void fill_normal_cpu(T* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float stddev) {
  parallel_for((n + 1) / 2, int64_t{1} << 10, [&](int64_t c0, int64_t c1) {
    for (int64_t base = c0 * 2; base < c1 * 2 && base < n; base += 2) {
      const Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(base / 2));
      y[base] = store<T>(fmaf(philox_words_to_normal(r.v[0], r.v[1]), stddev, mean));
      if (base + 1 < n) y[base + 1] = store<T>(fmaf(philox_words_to_normal(r.v[2], r.v[3]), stddev, mean));
    }
  });
}

template void fill_constant_cpu<float>(float*, float, int64_t);
template void fill_constant_cpu<double>(double*, double, int64_t);
template void fill_constant_cpu<bf16>(bf16*, bf16, int64_t);
template void fill_constant_cpu<int32_t>(int32_t*, int32_t, int64_t);
template void fill_constant_cpu<uint16_t>(uint16_t*, uint16_t, int64_t);
template void fill_constant_cpu<uint8_t>(uint8_t*, uint8_t, int64_t);
template void fill_arange_cpu<float>(float*, int64_t);
template void fill_arange_cpu<bf16>(bf16*, int64_t);
template void fill_uniform_cpu<float>(float*, int64_t, uint64_t, uint64_t, float, float);
template void fill_uniform_cpu<double>(double*, int64_t, uint64_t, uint64_t, float, float);
template void fill_uniform_cpu<bf16>(bf16*, int64_t, uint64_t, uint64_t, float, float);
template void fill_normal_cpu<float>(float*, int64_t, uint64_t, uint64_t, float, float);
template void fill_normal_cpu<double>(double*, int64_t, uint64_t, uint64_t, float, float);
template void fill_normal_cpu<bf16>(bf16*, int64_t, uint64_t, uint64_t, float, float);

}  // namespace kiln
