// IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, ...):
//
//   bytes 0-1   0x00 0x00
//   byte  2     element type: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
//   byte  3     number of dimensions (1 to 8 here)
//   then        one big-endian uint32 size per dimension
//   then        the elements, row-major, big-endian
//
// Files may be gzip-compressed (as distributed) or raw; zlib reads both. The
// reader trusts nothing in a file: a short header, a bad magic, an unknown
// type code, or a data section whose length disagrees with the sizes in the
// header is an InputError naming the file and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

/// IDX element type (the type code byte).
enum class IdxType : uint8_t { u8 = 0x08, i8 = 0x09, i16 = 0x0B, i32 = 0x0C, f32 = 0x0D, f64 = 0x0E };

/// Bytes per element of `t`.
size_t idx_type_size(IdxType t);
/// "u8", "i8", "i16", "i32", "f32", "f64".
const char* idx_type_name(IdxType t);

/// One IDX array in host memory.
struct IdxArray {
  IdxType type = IdxType::u8;
  std::vector<int64_t> dims;   ///< e.g. {60000, 28, 28}
  std::vector<uint8_t> bytes;  ///< elements row-major, in host byte order

  /// Product of dims (1 for no dims).
  int64_t count() const;
  /// The elements as T (T must match `type`'s size; checked).
  template <class T>
  const T* as() const;
};

/// Reads an IDX file, gzip-compressed or raw. Throws InputError naming `path`.
IdxArray read_idx(const std::string& path);

/// Parses IDX bytes already in memory; `name` names them in errors.
IdxArray parse_idx(const uint8_t* data, size_t size, const std::string& name);

/// Writes `a` as an IDX file, gzip-compressed when `gzip` (tests and tools).
/// Throws InputError naming `path` if it cannot be written.
void write_idx(const std::string& path, const IdxArray& a, bool gzip);

/// The whole file, decompressed if it is gzip (raw files are returned as
/// they are). InputError naming `path` when missing, unreadable or a
/// corrupt/truncated gzip stream.
std::vector<uint8_t> read_maybe_gzip(const std::string& path);

}  // namespace kiln
