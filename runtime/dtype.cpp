#include "runtime/dtype.h"

#include "runtime/error.h"

namespace kiln {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::u16: return 2;
    case DType::u8: return 1;
    case DType::f64: return 8;
  }
  KILN_CHECK(false, "unknown dtype " << static_cast<int>(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::u16: return "u16";
    case DType::u8: return "u8";
    case DType::f64: return "f64";
  }
  return "?";
}

DType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "f32" || name == "fp32" || name == "float32") return DType::f32;
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  if (name == "f16" || name == "fp16" || name == "float16") return DType::f16;
  if (name == "i32" || name == "int32") return DType::i32;
  if (name == "u16" || name == "uint16") return DType::u16;
  if (name == "u8" || name == "uint8") return DType::u8;
  if (name == "f64" || name == "fp64" || name == "float64") return DType::f64;
  throw InputError(what + ": unknown dtype '" + name + "' (expected f32, bf16, f16, i32, u16, u8 or f64)");
}

}  // namespace kiln
