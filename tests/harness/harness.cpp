#include "tests/harness/harness.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "runtime/philox.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/error.h"
#endif

namespace kiln::test {

const std::vector<int64_t>& standard_sizes() {
  static const std::vector<int64_t> sizes = {0, 1, 2, 3, 7, 31, 32, 33, 127, 509, 768, 1000, 4097};
  return sizes;
}

Tolerance tolerance_for(DType t) {
  switch (t) {
    case DType::bf16: return {1.6e-2, 1e-2};
    case DType::f16: return {2e-3, 1e-3};
    case DType::f64: return {1e-10, 1e-12};
    default: return {1e-5, 1e-6};
  }
}

namespace {

template <typename T>
::testing::AssertionResult compare(const std::vector<T>& got, const std::vector<T>& want, Tolerance tol,
                                   const std::string& what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != expected " << want.size();
  size_t bad = 0, worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double err = std::fabs(g - w);
    const double allowed = tol.atol + tol.rtol * std::fabs(w);
    const bool nan = std::isnan(g) || std::isnan(w);
    if (nan || !(err <= allowed)) {
      ++bad;
      const double excess = nan ? INFINITY : err / allowed;
      if (excess > worst_excess) { worst_excess = excess; worst = i; }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(9);
  os << what << ": " << bad << " of " << got.size() << " elements out of tolerance (rtol " << tol.rtol
     << ", atol " << tol.atol << "); worst at [" << worst << "]: got " << got[worst] << ", want " << want[worst]
     << ", |err| " << std::fabs(static_cast<double>(got[worst]) - want[worst]);
  return ::testing::AssertionFailure() << os.str();
}

}  // namespace

::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& want, Tolerance tol,
                                     const std::string& what) {
  return compare(got, want, tol, what);
}
::testing::AssertionResult all_close(const std::vector<double>& got, const std::vector<double>& want,
                                     Tolerance tol, const std::string& what) {
  return compare(got, want, tol, what);
}

::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b,
                                         const std::string& what) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << what << ": sizes differ (" << a.size() << " vs " << b.size() << ")";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      std::ostringstream os;
      os.precision(9);
      os << what << ": first differing element [" << i << "]: " << a[i] << " vs " << b[i];
      return ::testing::AssertionFailure() << os.str();
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<float> random_uniform(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * philox_uniform(seed, 0, i);
  return v;
}

std::vector<double> random_uniform_f64(size_t n, uint64_t seed, double lo, double hi) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * static_cast<double>(philox_uniform(seed, 0, i));
  return v;
}

std::vector<float> round_to_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = float_to_bf16(v[i]);
  return r;
}

std::vector<float> from_bf16(const std::vector<bf16>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_float(v[i]);
  return r;
}

#if KILN_WITH_CUDA
template <typename T>
DeviceBuffer<T>::DeviceBuffer(size_t n) : n_(n) {
  if (n) KILN_CUDA_CHECK(cudaMalloc(&ptr_, n * sizeof(T)));
}
template <typename T>
DeviceBuffer<T>::DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
  upload(host);
}
template <typename T>
DeviceBuffer<T>::~DeviceBuffer() {
  if (ptr_) KILN_CUDA_WARN(cudaFree(ptr_));
}
template <typename T>
std::vector<T> DeviceBuffer<T>::to_host() const {
  std::vector<T> h(n_);
  if (n_) KILN_CUDA_CHECK(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
template <typename T>
void DeviceBuffer<T>::upload(const std::vector<T>& host) {
  KILN_CHECK(host.size() == n_, "DeviceBuffer::upload: " << host.size() << " values into a buffer of " << n_);
  if (n_) KILN_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
void DeviceBuffer<T>::poison() {
  if (n_) KILN_CUDA_CHECK(cudaMemset(ptr_, 0xFF, n_ * sizeof(T)));
}
template class DeviceBuffer<float>;
template class DeviceBuffer<double>;
template class DeviceBuffer<bf16>;
template class DeviceBuffer<int32_t>;
template class DeviceBuffer<uint16_t>;
template class DeviceBuffer<uint8_t>;
#endif

}  // namespace kiln::test
