// Tensor: a dtype, a shape of up to 5 dims, a device and shared storage from
// the caching allocator. Tensors are always contiguous (row-major); a view is
// a contiguous range of another tensor's storage (offset + shape), sharing it.
//
// Element counts and byte sizes are computed with overflow checks: a shape
// whose product does not fit in int64 is an Error naming the tensor.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace kiln {

constexpr int kMaxDims = 5;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int ndim() const { return ndim_; }
  int64_t operator[](int i) const;          ///< negative i counts from the end
  int64_t& operator[](int i);
  /// Product of dims; throws Error (naming `what`) on overflow or negative dims.
  int64_t numel(const char* what = "tensor") const;
  std::vector<int64_t> vec() const { return std::vector<int64_t>(dims_, dims_ + ndim_); }
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  /// "(2, 3, 4)"
  std::string str() const;

 private:
  int64_t dims_[kMaxDims] = {0, 0, 0, 0, 0};
  int ndim_ = 0;
};

/// Owns bytes from allocator_for(device); freed back to the cache when the
/// last Tensor sharing it goes away.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device;
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;  ///< undefined (defined() == false)

  /// Uninitialized tensor. `name` appears in error messages.
  static Tensor empty(const Shape& shape, DType dtype, Device device, const std::string& name = "");
  static Tensor zeros(const Shape& shape, DType dtype, Device device, const std::string& name = "");
  static Tensor full(const Shape& shape, double value, DType dtype, Device device);
  /// 0, 1, ..., n-1.
  static Tensor arange(int64_t n, DType dtype, Device device);
  /// Copies host values into a new tensor on `device` (converting to dtype).
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape, DType dtype, Device device);
  static Tensor from_vector(const std::vector<int32_t>& values, const Shape& shape, Device device);

  bool defined() const { return static_cast<bool>(storage_); }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t size(int d) const { return shape_[d]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  const std::string& name() const { return name_; }
  void set_name(const std::string& n) { name_ = n; }

  /// Typed pointer to the first element; throws if T does not match dtype().
  template <typename T> T* data() const {
    KILN_CHECK(dtype_of<T>::value == dtype_, "tensor '" << name_ << "' has dtype " << dtype_name(dtype_)
                                                 << ", accessed as " << dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw());
  }
  void* raw() const;

  /// Contiguous view of `shape` starting `offset` elements in; shares storage.
  Tensor view(int64_t offset, const Shape& shape) const;
  /// Same elements, new shape (numel must match).
  Tensor reshape(const Shape& shape) const;

  /// A copy on device d (always a new tensor, also when d == device()).
  /// Copies that touch the host are synchronous with respect to the host.
  Tensor to(Device d) const;
  /// Same values in another dtype (on the same device), with the rounding of
  /// kernels/cast.h. CPU: every pair but f16. CUDA: to f32 or bf16 from f32,
  /// bf16, i32, u16 and u8.
  Tensor cast(DType t) const;
  Tensor clone() const;
  /// Copies src's elements into this tensor (same numel and dtype, any devices).
  /// Host<->device copies run on the GPU's compute stream and wait for it;
  /// device-to-device copies on one GPU are stream-ordered only.
  void copy_from(const Tensor& src);

  /// value converted once on the host (to float, bf16 or the integer type),
  /// so CPU and GPU tensors hold the same bits. Not for f16.
  void fill_(double value);
  void zero_();
  /// Philox fills: element i gets uniform/normal sample i of stream
  /// (seed, offset) — identical on CPU and GPU (f32, bf16; f64 on the CPU).
  /// Returns the counter offset a following draw should use so streams never
  /// overlap (offset + ceil(n/4) for uniform, offset + ceil(n/2) for normal).
  uint64_t uniform_(uint64_t seed, uint64_t offset, float lo = 0.0f, float hi = 1.0f);
  uint64_t normal_(uint64_t seed, uint64_t offset, float mean = 0.0f, float stddev = 1.0f);

  /// Host copies of the values (any dtype converted to float / double).
  std::vector<float> to_vector() const;
  std::vector<double> to_vector_f64() const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // elements
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  std::string name_;
};

}  // namespace kiln
