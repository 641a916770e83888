// Shared test harness: shapes every op is tried on, per-dtype tolerances,
// element-wise comparison that reports the worst element, GPU skipping, and
// device buffers for raw-pointer kernel tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

namespace kiln::test {

/// Row/feature sizes every op is tried on: empty, one, around a warp, primes,
/// non-multiples of any tile, a GPT width and a large odd size.
const std::vector<int64_t>& standard_sizes();  // {0, 1, 2, 3, 7, 31, 32, 33, 127, 509, 768, 1000, 4097}

struct Tolerance {
  double rtol;
  double atol;
};
/// fp32: rtol 1e-5; bf16: rtol 1.6e-2 (one bf16 ulp at 1.0 is 7.8e-3). atol
/// guards elements near zero.
Tolerance tolerance_for(DType t);

/// Compares got[i] against want[i]: |got - want| <= atol + rtol·|want|.
/// On failure the message names `what`, the count of bad elements, and the
/// worst one (index, got, want, error). NaN anywhere fails.
::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& want,
                                     Tolerance tol, const std::string& what);
::testing::AssertionResult all_close(const std::vector<double>& got, const std::vector<double>& want,
                                     Tolerance tol, const std::string& what);
/// Exact equality of the bit patterns (determinism checks).
::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b,
                                         const std::string& what);

/// Deterministic pseudo-random inputs for tests (Philox, host side).
std::vector<float> random_uniform(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f);
std::vector<double> random_uniform_f64(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0);

/// Round every value through bf16 (inputs for bf16 comparisons).
std::vector<float> round_to_bf16(std::vector<float> v);
std::vector<bf16> to_bf16(const std::vector<float>& v);
std::vector<float> from_bf16(const std::vector<bf16>& v);

#if KILN_WITH_CUDA
/// Owning device buffer for raw-pointer kernel tests (cudaMalloc'd directly,
/// so kernel tests do not depend on the allocator).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n);
  explicit DeviceBuffer(const std::vector<T>& host);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  std::vector<T> to_host() const;
  void upload(const std::vector<T>& host);
  /// Fills every byte with 0xFF (NaN for floats) so unwritten outputs fail.
  void poison();

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};
#endif

}  // namespace kiln::test

/// First statement of every GPU test: skips with the reason when no usable
/// CUDA device exists (CPU-only build, no driver, no GPU).
#define KILN_REQUIRE_GPU()                                                              \
  do {                                                                                  \
    if (!::kiln::cuda_available())                                                      \
      GTEST_SKIP() << "no CUDA device: " << ::kiln::cuda_unavailable_reason();          \
  } while (0)
