// Element types of kiln tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace kiln {

enum class DType : uint8_t { f32, bf16, f16, i32, u16, u8, f64 };

/// Bytes per element.
size_t dtype_size(DType t);
/// "f32", "bf16", ... (the names configs and error messages use).
const char* dtype_name(DType t);
/// Parses a dtype name; throws InputError naming `what` on anything else.
DType parse_dtype(const std::string& name, const std::string& what);

/// Compile-time map from C++ element type to DType (for Tensor::data<T>()).
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::u16; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };

}  // namespace kiln
