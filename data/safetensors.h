// safetensors: the weight format Hugging Face and PyTorch users already have.
//
//   [8 bytes]  N, little-endian uint64
//   [N bytes]  JSON header: {"__metadata__": {str: str},            (optional)
//                            name: {"dtype": "F32", "shape": [2, 3],
//                                   "data_offsets": [begin, end]}, ...}
//              padded with spaces so the data starts 8-byte aligned
//   [rest]     the byte buffer; offsets are relative to its start, tensors
//              row-major, little-endian, tiling it exactly (no gaps, no overlap)
//
// The reader treats every file as hostile: a bad length, malformed JSON, an
// unknown dtype, an overflowing shape, offsets that are out of range, overlap,
// leave gaps or disagree with dtype·shape, duplicate names — each is an
// InputError naming the file and (where there is one) the tensor. Nothing in
// a file can make the reader allocate more than the file's size plus its
// header, recurse deeply or read out of bounds.
//
// The core API is on host bytes; Tensor helpers are in safetensors_tensor.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

/// Element types safetensors names that kiln reads and writes. A superset of
/// kiln::DType (I64 appears in files written by PyTorch, e.g. position ids).
enum class StDType : uint8_t { f64, f32, f16, bf16, i64, i32, u16, u8 };

/// Bytes per element.
size_t st_dtype_size(StDType t);
/// The name in the header: "F64", "F32", "F16", "BF16", "I64", "I32", "U16", "U8".
const char* st_dtype_name(StDType t);
/// Parses a header dtype name; false for anything else.
bool st_dtype_parse(const std::string& name, StDType* out);

/// Largest header the reader accepts (GPT-2 XL's header is ~40 KB).
constexpr uint64_t kSafetensorsMaxHeader = 100ull * 1000 * 1000;

/// One tensor to write: host bytes, not owned (must stay alive during the call).
struct StTensorView {
  std::string name;
  StDType dtype = StDType::f32;
  std::vector<int64_t> shape;  ///< {} for a 0-d (scalar) tensor
  const void* data = nullptr;  ///< may be null when nbytes == 0
  size_t nbytes = 0;           ///< must equal numel(shape) · st_dtype_size(dtype)
};

/// One tensor read from a file. Its bytes live in the file's shared buffer
/// (`data` is not aligned for the element type: memcpy out of it).
struct StTensor {
  StDType dtype = StDType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
  /// Copies the bytes out (convenient for tests and small tensors).
  std::vector<uint8_t> bytes() const { return std::vector<uint8_t>(data, data + nbytes); }
};

/// A parsed file: tensors by name (std::map, so iteration is sorted) and the
/// optional string metadata. Copies share the underlying buffer.
struct SafetensorsFile {
  std::string path;  ///< what error messages call it
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
  std::shared_ptr<const std::vector<uint8_t>> buffer;  ///< the whole file

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  /// The tensor called `name`; InputError naming the file and tensor if absent.
  const StTensor& at(const std::string& name) const;
};

/// Builds the exact bytes of a safetensors file: tensors sorted by name, laid
/// out back to back in that order, metadata first in the header, header padded
/// with spaces to a multiple of 8. Throws Error on duplicate or empty names,
/// negative dims, or nbytes that disagree with dtype and shape (a caller bug).
std::string serialize_safetensors_header(const std::vector<StTensorView>& tensors,
                                         const std::map<std::string, std::string>& metadata = {});

/// Writes `path` atomically (runtime/atomic_file.h): a crash leaves the old
/// file or the complete new one. Returns the number of bytes written.
uint64_t write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

/// Reads and validates a whole file. InputError names the file (and tensor).
SafetensorsFile read_safetensors(const std::string& path);

/// Validates and indexes bytes already in memory (the file's whole contents);
/// `what` names them in errors. The result keeps `bytes` alive.
SafetensorsFile parse_safetensors(std::shared_ptr<const std::vector<uint8_t>> bytes, const std::string& what);

}  // namespace kiln
