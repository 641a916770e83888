#include "data/safetensors_tensor.h"

#include <cstring>
#include <set>
#include <sstream>

#include "runtime/error.h"

namespace kiln {

namespace {

// The float dtypes Tensor::cast converts between (f16 has no cast yet).
bool is_floating(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f64; }

std::string shape_of(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ")";
  return os.str();
}

}  // namespace

StDType to_st_dtype(DType t) {
  switch (t) {
    case DType::f32: return StDType::f32;
    case DType::bf16: return StDType::bf16;
    case DType::f16: return StDType::f16;
    case DType::i32: return StDType::i32;
    case DType::u16: return StDType::u16;
    case DType::u8: return StDType::u8;
    case DType::f64: return StDType::f64;
  }
  KILN_CHECK(false, "unknown dtype " << static_cast<int>(t));
}

DType to_kiln_dtype(StDType t, const std::string& what) {
  switch (t) {
    case StDType::f32: return DType::f32;
    case StDType::bf16: return DType::bf16;
    case StDType::f16: return DType::f16;
    case StDType::i32: return DType::i32;
    case StDType::u16: return DType::u16;
    case StDType::u8: return DType::u8;
    case StDType::f64: return DType::f64;
    case StDType::i64: break;
  }
  throw InputError(what + ": dtype " + st_dtype_name(t) + " has no kiln tensor type (kiln has F64, F32, F16, BF16, " +
                   "I32, U16, U8)");
}

StHostViews::StHostViews(const std::vector<NamedTensor>& tensors) {
  keep_.reserve(tensors.size());
  views_.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    KILN_CHECK(t.defined(), "tensor '" << name << "' is undefined and cannot be written");
    keep_.push_back(t.device().is_cpu() ? t : t.to(Device::cpu()));
    const Tensor& h = keep_.back();
    StTensorView v;
    v.name = name;
    v.dtype = to_st_dtype(h.dtype());
    v.shape = h.shape().vec();
    v.data = h.nbytes() ? h.raw() : nullptr;
    v.nbytes = h.nbytes();
    views_.push_back(std::move(v));
  }
}

uint64_t write_named_tensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  StHostViews host(tensors);
  return write_safetensors(path, host.views(), metadata);
}

Tensor to_tensor(const StTensor& t, Device device, const std::string& what) {
  DType dt = to_kiln_dtype(t.dtype, what);
  if (t.shape.size() > static_cast<size_t>(kMaxDims)) {
    throw InputError(what + ": " + std::to_string(t.shape.size()) + " dims " + shape_of(t.shape) +
                     ", kiln tensors have at most " + std::to_string(kMaxDims));
  }
  Tensor host = Tensor::empty(Shape(t.shape), dt, Device::cpu(), what);
  KILN_CHECK(host.nbytes() == t.nbytes, what << ": " << host.nbytes() << " bytes vs " << t.nbytes);
  if (t.nbytes) std::memcpy(host.raw(), t.data, t.nbytes);  // file bytes are unaligned: copy, never alias
  return device.is_cpu() ? host : host.to(device);
}

void load_into(const SafetensorsFile& file, const std::string& name, Tensor& dst) {
  const StTensor& src = file.at(name);
  const std::string what = file.path + ": tensor '" + name + "'";
  KILN_CHECK(dst.defined(), what << ": destination tensor is undefined");
  std::vector<int64_t> want = dst.shape().vec();
  if (src.shape != want) {
    throw InputError(what + ": shape " + shape_of(src.shape) + " in the file, the model expects " + shape_of(want));
  }
  Tensor t = to_tensor(src, Device::cpu(), what);
  if (t.dtype() != dst.dtype()) {
    if (!is_floating(t.dtype()) || !is_floating(dst.dtype())) {
      throw InputError(what + ": dtype " + st_dtype_name(src.dtype) + " in the file, the model expects " +
                       dtype_name(dst.dtype()));
    }
    t = t.cast(dst.dtype());
  }
  dst.copy_from(t);
}

void load_tensors(const SafetensorsFile& file, const std::vector<NamedTensor>& tensors, bool strict) {
  std::set<std::string> taken;
  for (const auto& [name, t] : tensors) {
    Tensor dst = t;  // shares storage: writing dst writes the caller's tensor
    load_into(file, name, dst);
    taken.insert(name);
  }
  if (!strict) return;
  for (const auto& kv : file.tensors) {
    if (!taken.count(kv.first)) {
      throw InputError(file.path + ": tensor '" + kv.first + "' matches no parameter of the model (" +
                       std::to_string(tensors.size()) + " parameters; is this checkpoint from another model?)");
    }
  }
}

}  // namespace kiln
