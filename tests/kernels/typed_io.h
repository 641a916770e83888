// Small helpers shared by the kernel tests that run an op in fp32 and bf16
// storage: converting test data to and from the storage type, the storage
// type's tolerance, and device buffers viewed at an element offset (to push
// the kernels off their 16-byte vector path).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/common.h"
#include "runtime/dtype.h"
#include "tests/harness/harness.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/error.h"
#endif

namespace kiln::test {

/// Values as the storage type H (float or bf16) holds them.
template <typename H>
std::vector<H> to_storage(const std::vector<float>& v);
template <>
inline std::vector<float> to_storage<float>(const std::vector<float>& v) {
  return v;
}
template <>
inline std::vector<bf16> to_storage<bf16>(const std::vector<float>& v) {
  return to_bf16(v);
}

inline std::vector<float> to_f32(const std::vector<float>& v) { return v; }
inline std::vector<float> to_f32(const std::vector<bf16>& v) { return from_bf16(v); }

/// v rounded to what H can represent (inputs for the CPU reference).
template <typename H>
std::vector<float> representable(std::vector<float> v) {
  if constexpr (std::is_same_v<H, bf16>) return round_to_bf16(std::move(v));
  return v;
}

template <typename H>
Tolerance storage_tolerance() {
  return tolerance_for(dtype_of<H>::value);
}

template <typename H>
std::string storage_name() {
  return dtype_name(dtype_of<H>::value);
}

#if KILN_WITH_CUDA
/// A device buffer of n elements starting `offset` elements into its
/// allocation; offset 1 makes every pointer miss 16-byte alignment.
template <typename H>
class OffsetBuffer {
 public:
  OffsetBuffer(size_t n, size_t offset) : buf_(n + offset), n_(n), offset_(offset) { buf_.poison(); }
  OffsetBuffer(const std::vector<H>& host, size_t offset) : OffsetBuffer(host.size(), offset) { upload(host); }
  H* get() const { return buf_.get() + offset_; }
  size_t size() const { return n_; }
  void upload(const std::vector<H>& host) {
    KILN_CHECK(host.size() == n_, "OffsetBuffer::upload: " << host.size() << " values into " << n_);
    if (n_) KILN_CUDA_CHECK(cudaMemcpy(get(), host.data(), n_ * sizeof(H), cudaMemcpyHostToDevice));
  }
  std::vector<H> to_host() const {
    std::vector<H> h(n_);
    if (n_) KILN_CUDA_CHECK(cudaMemcpy(h.data(), get(), n_ * sizeof(H), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { buf_.poison(); }

 private:
  DeviceBuffer<H> buf_;
  size_t n_, offset_;
};
#endif

}  // namespace kiln::test
