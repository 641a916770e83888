// Helpers shared by the activation, embedding, optimizer and norm benchmark
// entries: a Result builder, an owning device array, and the parameter
// tensor lists of GPT-style models (the optimizer and the grad norm run over
// exactly these lists, as in training).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench::util {

inline Result make_result(const std::string& name, const char* backend, const std::string& shape, double ms,
                          double bytes) {
  Result r;
  r.name = name;
  r.backend = backend;
  r.shape = shape;
  r.ms = ms;
  r.bytes = bytes;
  return r;
}

/// "8192x768 bf16": the key bench/torch_bench.py matches on.
inline std::string matrix_shape(int64_t rows, int64_t cols, const char* dtype) {
  return std::to_string(rows) + "x" + std::to_string(cols) + " " + dtype;
}

/// Parameter tensor sizes of a GPT-2-style model (weights named as in
/// Hugging Face GPT-2: wte, wpe, per layer ln_1.{w,b}, attn.c_attn.{w,b},
/// attn.c_proj.{w,b}, ln_2.{w,b}, mlp.c_fc.{w,b}, mlp.c_proj.{w,b}, then ln_f).
/// GPT-2 124M: layers 12, C 768, V 50304 (padded), T 1024 → 148 tensors,
/// 124,475,904 parameters.
inline std::vector<int64_t> gpt_param_sizes(int64_t layers, int64_t C, int64_t V, int64_t T) {
  std::vector<int64_t> s = {V * C, T * C};
  for (int64_t l = 0; l < layers; ++l) {
    const std::vector<int64_t> layer = {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C};
    s.insert(s.end(), layer.begin(), layer.end());
  }
  s.push_back(C);
  s.push_back(C);
  return s;
}

/// Offsets of tensors packed back to back in one array, each rounded up to
/// 4 elements (16 bytes) as an allocator would align them; returns the total.
inline int64_t pack_offsets(const std::vector<int64_t>& sizes, std::vector<int64_t>* offsets) {
  int64_t off = 0;
  offsets->clear();
  for (int64_t n : sizes) {
    offsets->push_back(off);
    off += (n + 3) / 4 * 4;
  }
  return off;
}

inline int64_t total_params(const std::vector<int64_t>& sizes) {
  int64_t t = 0;
  for (int64_t n : sizes) t += n;
  return t;
}

#if KILN_WITH_CUDA
/// Owning device allocation (never zero bytes, so get() is a valid pointer).
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) { KILN_CUDA_CHECK(cudaMalloc(&p_, (n ? n : 1) * sizeof(T))); }
  ~DeviceArray() { KILN_CUDA_WARN(cudaFree(p_)); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    KILN_CHECK(h.size() == n_, "DeviceArray::upload: " << h.size() << " values into " << n_);
    if (n_) KILN_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};
#endif

}  // namespace kiln::bench::util
