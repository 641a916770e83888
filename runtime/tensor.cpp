// Shape, Storage and Tensor (see tensor.h). Element-wise work is dispatched
// to the fill / cast op families in kernels/ (CPU reference or CUDA launcher
// on the device's compute stream).
#include "runtime/tensor.h"

#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

#include "kernels/cast.h"
#include "kernels/fill.h"
#include "runtime/allocator.h"
#include "runtime/dispatch.h"
#include "runtime/stream.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {

// --- Shape ---------------------------------------------------------------------

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  KILN_CHECK(dims.size() <= static_cast<size_t>(kMaxDims),
             "a shape has at most " << kMaxDims << " dims, got " << dims.size());
  ndim_ = static_cast<int>(dims.size());
  for (int i = 0; i < ndim_; ++i) dims_[i] = dims[static_cast<size_t>(i)];
}

int64_t Shape::operator[](int i) const {
  const int j = i < 0 ? i + ndim_ : i;
  KILN_CHECK(j >= 0 && j < ndim_, "dim " << i << " out of range for shape " << str());
  return dims_[j];
}

int64_t& Shape::operator[](int i) {
  const int j = i < 0 ? i + ndim_ : i;
  KILN_CHECK(j >= 0 && j < ndim_, "dim " << i << " out of range for shape " << str());
  return dims_[j];
}

int64_t Shape::numel(const char* what) const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) {
    KILN_CHECK(dims_[i] >= 0, what << ": shape " << str() << " has a negative dimension");
    int64_t next;
    KILN_CHECK(!__builtin_mul_overflow(n, dims_[i], &next),
               what << ": shape " << str() << " has more elements than fit in int64");
    n = next;
  }
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < ndim_; ++i) os << (i ? ", " : "") << dims_[i];
  os << ")";
  return os.str();
}

// --- Storage -------------------------------------------------------------------

Storage::~Storage() {
  if (!ptr) return;
  try {
    allocator_for(device).free(ptr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln: warning: freeing %zu bytes on %s failed: %s\n", bytes, device.str().c_str(),
                 e.what());
  }
}

// --- helpers ---------------------------------------------------------------------

namespace {

std::string label(const std::string& name) { return name.empty() ? "tensor" : "tensor '" + name + "'"; }

bool on_cuda(Device d) {
#if KILN_WITH_CUDA
  return d.is_cuda();
#else
  KILN_CHECK(d.is_cpu(), "tensor on " << d.str() << ": this kiln was built without CUDA");
  return false;
#endif
}

[[noreturn]] void unsupported(const char* op, const Tensor& t) {
  KILN_CHECK(false, op << " is not supported for " << label(t.name()) << " of dtype " << dtype_name(t.dtype())
                       << " on " << t.device().str());
}

// f16 on the host, for to_vector only (no kernel produces f16 yet).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do { mant <<= 1; ++e; } while (!(mant & 0x400u));
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Element i of a host buffer of dtype t, as double (exact for every dtype).
double load_host(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f64: return static_cast<const double*>(p)[i];
    case DType::bf16: return bf16_to_float(static_cast<const bf16*>(p)[i]);
    case DType::f16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::i32: return static_cast<const int32_t*>(p)[i];
    case DType::u16: return static_cast<const uint16_t*>(p)[i];
    case DType::u8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0.0;
}

// The element types each backend's fill / cast kernels are instantiated for.
using HostTypes = Types<float, double, bf16, int32_t, uint16_t, uint8_t>;
using CudaFloatTypes = Types<float, bf16>;

// A host double as element type T, converted once on the host so CPU and
// GPU store the same bits (floats through f32, as every kernel computes).
template <typename T>
T scalar_as(double v) {
  if constexpr (std::is_same_v<T, bf16>) return float_to_bf16(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, float>) return static_cast<float>(v);
  else return static_cast<T>(v);
}

}  // namespace

// --- construction ------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, const std::string& name) {
  const std::string what = label(name);
  const int64_t n = shape.numel(what.c_str());
  const int64_t esize = static_cast<int64_t>(dtype_size(dtype));
  KILN_CHECK(n <= std::numeric_limits<int64_t>::max() / esize,
             what << ": shape " << shape.str() << " of " << dtype_name(dtype) << " needs more bytes than fit in int64");
  KILN_CHECK(!(dtype == DType::f64 && device.is_cuda()),
             what << ": f64 tensors live on the CPU only (finite-difference checks), not on " << device.str());
  on_cuda(device);  // rejects CUDA devices in the CPU-only build
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->device = device;
  t.storage_->bytes = static_cast<size_t>(n * esize);
  try {
    t.storage_->ptr = allocator_for(device).allocate(t.storage_->bytes, compute_stream(device));
  } catch (const OutOfMemory& e) {
    // The allocator knows sizes, not purposes: say which tensor it was.
    throw OutOfMemory(what + " " + shape.str() + " " + dtype_name(dtype) + ": " + e.what());
  }
  t.shape_ = shape;
  t.numel_ = n;
  t.dtype_ = dtype;
  t.name_ = name;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device, const std::string& name) {
  Tensor t = empty(shape, dtype, device, name);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  Tensor t = empty(Shape{n}, dtype, device);
  bool done = false;
  if (on_cuda(device)) {
#if KILN_WITH_CUDA
    cudaStream_t s = compute_stream(device);
    done = visit_dtype(dtype, Types<float, bf16, int32_t>{},
                       [&](auto tag) { fill_arange(t.data<decltype(tag)>(), n, s); });
#endif
  } else {
    done = visit_dtype(dtype, Types<float, double, bf16, int32_t>{},
                       [&](auto tag) { fill_arange_cpu(t.data<decltype(tag)>(), n); });
  }
  if (!done) unsupported("arange", t);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype, Device device) {
  const int64_t n = shape.numel("from_vector");
  KILN_CHECK(static_cast<int64_t>(values.size()) == n,
             "from_vector: " << values.size() << " values for shape " << shape.str() << " (" << n << " elements)");
  Tensor host = empty(shape, DType::f32, Device::cpu());
  if (n) std::memcpy(host.raw(), values.data(), values.size() * sizeof(float));
  if (dtype != DType::f32) host = host.cast(dtype);
  return device.is_cpu() ? host : host.to(device);
}

Tensor Tensor::from_vector(const std::vector<int32_t>& values, const Shape& shape, Device device) {
  const int64_t n = shape.numel("from_vector");
  KILN_CHECK(static_cast<int64_t>(values.size()) == n,
             "from_vector: " << values.size() << " values for shape " << shape.str() << " (" << n << " elements)");
  Tensor host = empty(shape, DType::i32, Device::cpu());
  if (n) std::memcpy(host.raw(), values.data(), values.size() * sizeof(int32_t));
  return device.is_cpu() ? host : host.to(device);
}

// --- views -----------------------------------------------------------------------

void* Tensor::raw() const {
  KILN_CHECK(defined(), "raw(): the tensor is undefined");
  if (!storage_->ptr) return nullptr;  // zero bytes
  return static_cast<char*>(storage_->ptr) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

Tensor Tensor::view(int64_t offset, const Shape& shape) const {
  KILN_CHECK(defined(), "view(): the tensor is undefined");
  const std::string what = label(name_);
  const int64_t n = shape.numel(what.c_str());
  KILN_CHECK(offset >= 0 && offset <= numel_ && n <= numel_ - offset,
             what << ": view of " << shape.str() << " at offset " << offset << " exceeds its " << numel_
                  << " elements " << shape_.str());
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.shape_ = shape;
  t.numel_ = n;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  KILN_CHECK(defined(), "reshape(): the tensor is undefined");
  const std::string what = label(name_);
  const int64_t n = shape.numel(what.c_str());
  KILN_CHECK(n == numel_, what << ": cannot reshape " << shape_.str() << " (" << numel_ << " elements) to "
                               << shape.str() << " (" << n << " elements)");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

// --- copies ----------------------------------------------------------------------

Tensor Tensor::to(Device d) const {
  KILN_CHECK(defined(), "to(): the tensor is undefined");
  Tensor t = empty(shape_, dtype_, d, name_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::clone() const { return to(device()); }

void Tensor::copy_from(const Tensor& src) {
  KILN_CHECK(defined() && src.defined(), "copy_from: undefined tensor");
  KILN_CHECK(src.numel_ == numel_ && src.dtype_ == dtype_,
             "copy_from: " << label(name_) << " " << shape_.str() << " " << dtype_name(dtype_) << " <- "
                           << label(src.name_) << " " << src.shape_.str() << " " << dtype_name(src.dtype_)
                           << " (numel and dtype must match)");
  const size_t bytes = nbytes();
  if (bytes == 0 || (raw() == src.raw() && device() == src.device())) return;
  const Device dd = device(), sd = src.device();
  if (!on_cuda(dd) && !on_cuda(sd)) {
    std::memmove(raw(), src.raw(), bytes);
    return;
  }
#if KILN_WITH_CUDA
  // Issue the copy on the compute stream of the CUDA side, so it is ordered
  // after the kernels that produced src (or before those that will read this).
  // cudaMemcpyDefault: unified addressing tells the direction.
  if (dd.is_cuda() && sd.is_cuda() && dd == sd) {
    // Device to device on one GPU: stream-ordered, no host wait needed.
    KILN_CUDA_CHECK(cudaMemcpyAsync(raw(), src.raw(), bytes, cudaMemcpyDefault, compute_stream(dd)));
    return;
  }
  if (sd.is_cuda() && dd.is_cuda()) {
    // Across GPUs: src must be finished before the destination's stream reads it.
    KILN_CUDA_CHECK(cudaStreamSynchronize(compute_stream(sd)));
  }
  cudaStream_t s = compute_stream(dd.is_cuda() ? dd : sd);
  KILN_CUDA_CHECK(cudaMemcpyAsync(raw(), src.raw(), bytes, cudaMemcpyDefault, s));
  // Synchronous for the host: the host buffer may be read or freed next.
  count_host_sync();
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
#endif
}

Tensor Tensor::cast(DType t) const {
  KILN_CHECK(defined(), "cast(): the tensor is undefined");
  if (t == dtype_) return clone();
  Tensor out = empty(shape_, t, device(), name_);
  const int64_t n = numel_;
  if (on_cuda(device())) {
#if KILN_WITH_CUDA
    cudaStream_t s = compute_stream(device());
    // CUDA casts produce f32 or bf16, from the other of the two or an integer type.
    bool src_ok = false;
    const bool dst_ok = visit_dtype(t, CudaFloatTypes{}, [&](auto dst) {
      using D = decltype(dst);
      src_ok = visit_dtype(dtype_, Types<float, bf16, int32_t, uint16_t, uint8_t>{}, [&](auto src) {
        using S = decltype(src);
        if constexpr (!std::is_same_v<S, D>) cast_forward(data<S>(), out.data<D>(), n, s);  // S == D returned above
      });
    });
    KILN_CHECK(dst_ok && src_ok, label(name_) << ": cast " << dtype_name(dtype_) << " -> " << dtype_name(t)
                                  << " is not supported on " << device().str()
                                  << " (CUDA casts produce f32 or bf16 from f32, bf16, i32, u16, u8)");
#endif
    return out;
  }
  bool dst_ok = false;
  const bool src_ok = visit_dtype(dtype_, HostTypes{}, [&](auto src) {
    using S = decltype(src);
    dst_ok = visit_dtype(t, HostTypes{}, [&](auto dst) { cast_forward_cpu(data<S>(), out.data<decltype(dst)>(), n); });
  });
  if (!(src_ok && dst_ok)) unsupported("cast", *this);
  return out;
}

// --- fills -----------------------------------------------------------------------

void Tensor::zero_() {
  KILN_CHECK(defined(), "zero_(): the tensor is undefined");
  if (nbytes() == 0) return;
  if (on_cuda(device())) {
#if KILN_WITH_CUDA
    KILN_CUDA_CHECK(cudaMemsetAsync(raw(), 0, nbytes(), compute_stream(device())));
#endif
    return;
  }
  std::memset(raw(), 0, nbytes());  // all-zero bits are 0 in every dtype
}

void Tensor::fill_(double value) {
  KILN_CHECK(defined(), "fill_(): the tensor is undefined");
  const int64_t n = numel_;
  bool done = false;
  if (on_cuda(device())) {
#if KILN_WITH_CUDA
    cudaStream_t s = compute_stream(device());
    done = visit_dtype(dtype_, Types<float, bf16, int32_t, uint16_t, uint8_t>{}, [&](auto tag) {
      using T = decltype(tag);
      fill_constant(data<T>(), scalar_as<T>(value), n, s);
    });
#endif
  } else {
    done = visit_dtype(dtype_, HostTypes{}, [&](auto tag) {
      using T = decltype(tag);
      fill_constant_cpu(data<T>(), scalar_as<T>(value), n);
    });
  }
  if (!done) unsupported("fill_", *this);
}

uint64_t Tensor::uniform_(uint64_t seed, uint64_t offset, float lo, float hi) {
  KILN_CHECK(defined(), "uniform_(): the tensor is undefined");
  const int64_t n = numel_;
  bool done = false;
  if (on_cuda(device())) {
#if KILN_WITH_CUDA
    cudaStream_t s = compute_stream(device());
    done = visit_dtype(dtype_, CudaFloatTypes{},
                       [&](auto tag) { fill_uniform(data<decltype(tag)>(), n, seed, offset, lo, hi, s); });
#endif
  } else {
    done = visit_dtype(dtype_, Types<float, double, bf16>{},
                       [&](auto tag) { fill_uniform_cpu(data<decltype(tag)>(), n, seed, offset, lo, hi); });
  }
  if (!done) unsupported("uniform_", *this);
  return offset + uniform_counters(n);
}

uint64_t Tensor::normal_(uint64_t seed, uint64_t offset, float mean, float stddev) {
  KILN_CHECK(defined(), "normal_(): the tensor is undefined");
  const int64_t n = numel_;
  bool done = false;
  if (on_cuda(device())) {
#if KILN_WITH_CUDA
    cudaStream_t s = compute_stream(device());
    done = visit_dtype(dtype_, CudaFloatTypes{},
                       [&](auto tag) { fill_normal(data<decltype(tag)>(), n, seed, offset, mean, stddev, s); });
#endif
  } else {
    done = visit_dtype(dtype_, Types<float, double, bf16>{},
                       [&](auto tag) { fill_normal_cpu(data<decltype(tag)>(), n, seed, offset, mean, stddev); });
  }
  if (!done) unsupported("normal_", *this);
  return offset + normal_counters(n);
}

// --- host copies -------------------------------------------------------------------

std::vector<float> Tensor::to_vector() const {
  KILN_CHECK(defined(), "to_vector(): the tensor is undefined");
  // A read of tensor data on the host: a wait for a GPU tensor, counted on
  // the CPU too (runtime/stream.h's host_sync_count) so CPU tests see the
  // reads a GPU run would wait for.
  if (device().is_cpu()) count_host_sync();
  const Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  std::vector<float> v(static_cast<size_t>(numel_));
  const void* p = host.raw();
  if (dtype_ == DType::f32) {
    if (numel_) std::memcpy(v.data(), p, nbytes());
  } else {
    for (int64_t i = 0; i < numel_; ++i) v[static_cast<size_t>(i)] = static_cast<float>(load_host(p, dtype_, i));
  }
  return v;
}

std::vector<double> Tensor::to_vector_f64() const {
  KILN_CHECK(defined(), "to_vector_f64(): the tensor is undefined");
  if (device().is_cpu()) count_host_sync();  // as to_vector
  const Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  std::vector<double> v(static_cast<size_t>(numel_));
  const void* p = host.raw();
  for (int64_t i = 0; i < numel_; ++i) v[static_cast<size_t>(i)] = load_host(p, dtype_, i);
  return v;
}

}  // namespace kiln
