#include "data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "runtime/error.h"

namespace kiln {

size_t idx_type_size(IdxType t) {
  switch (t) {
    case IdxType::u8:
    case IdxType::i8: return 1;
    case IdxType::i16: return 2;
    case IdxType::i32:
    case IdxType::f32: return 4;
    case IdxType::f64: return 8;
  }
  return 0;
}

const char* idx_type_name(IdxType t) {
  switch (t) {
    case IdxType::u8: return "u8";
    case IdxType::i8: return "i8";
    case IdxType::i16: return "i16";
    case IdxType::i32: return "i32";
    case IdxType::f32: return "f32";
    case IdxType::f64: return "f64";
  }
  return "?";
}

static bool valid_type_code(uint8_t c) {
  return c == 0x08 || c == 0x09 || c == 0x0B || c == 0x0C || c == 0x0D || c == 0x0E;
}

int64_t IdxArray::count() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

template <class T>
const T* IdxArray::as() const {
  KILN_CHECK(sizeof(T) == idx_type_size(type),
             "IdxArray::as: element size " << sizeof(T) << " does not match type " << idx_type_name(type));
  return reinterpret_cast<const T*>(bytes.data());
}
template const uint8_t* IdxArray::as<uint8_t>() const;
template const int8_t* IdxArray::as<int8_t>() const;
template const int16_t* IdxArray::as<int16_t>() const;
template const int32_t* IdxArray::as<int32_t>() const;
template const float* IdxArray::as<float>() const;
template const double* IdxArray::as<double>() const;

static bool host_is_little_endian() {
  const uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

/// Reverses each `elem`-byte element in place (big-endian <-> little-endian).
static void swap_elements(uint8_t* p, size_t n_bytes, size_t elem) {
  if (elem == 1 || !host_is_little_endian()) return;
  for (size_t i = 0; i + elem <= n_bytes; i += elem)
    for (size_t a = 0, b = elem - 1; a < b; ++a, --b) std::swap(p[i + a], p[i + b]);
}

/// ISIZE from a gzip file's trailer (0 when not gzip or unreadable); capped
/// by 64x the compressed size so a corrupt trailer cannot force a huge
/// allocation.
static size_t gzip_size_hint(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return 0;
  unsigned char head[2] = {0, 0}, tail[4] = {0, 0, 0, 0};
  size_t hint = 0;
  if (std::fread(head, 1, 2, f) == 2 && head[0] == 0x1f && head[1] == 0x8b && std::fseek(f, -4, SEEK_END) == 0) {
    const long compressed = std::ftell(f) + 4;
    if (std::fread(tail, 1, 4, f) == 4) {
      hint = size_t{tail[0]} | size_t{tail[1]} << 8 | size_t{tail[2]} << 16 | size_t{tail[3]} << 24;
      hint = std::min(hint, static_cast<size_t>(compressed) * 64);
    }
  }
  std::fclose(f);
  return hint;
}

std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path + ": is a directory, expected a file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw InputError(path + ": cannot open (" + std::strerror(errno ? errno : ENOENT) + ")");
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  // gzip's trailer holds the uncompressed size mod 2^32: a good first guess
  // (exact for every MNIST-family file), which saves regrowing a 47 MB
  // buffer; a wrong guess (raw file, > 4 GiB, lying trailer) only costs growth.
  size_t used = 0;
  out.resize(std::max<size_t>(gzip_size_hint(path) + 1, size_t{1} << 16));
  for (;;) {
    if (used == out.size()) out.resize(out.size() * 2);
    const size_t want = std::min<size_t>(out.size() - used, size_t{1} << 30);
    const int got = gzread(f, out.data() + used, static_cast<unsigned>(want));
    if (got < 0) {
      int err = 0;
      const std::string msg = gzerror(f, &err);
      gzclose(f);
      throw InputError(path + ": corrupt gzip data (" + msg + ")");
    }
    if (got == 0) break;
    used += static_cast<size_t>(got);
  }
  int err = Z_OK;
  const std::string msg = gzerror(f, &err);
  // A gzip stream cut short reads as a short file plus Z_BUF_ERROR
  // ("unexpected end of file"); report it rather than a confusing size error.
  if (err != Z_OK && err != Z_STREAM_END) {
    gzclose(f);
    throw InputError(path + ": truncated or corrupt gzip data (" + msg + ")");
  }
  const int rc = gzclose(f);
  if (rc != Z_OK) throw InputError(path + ": truncated or corrupt gzip data (zlib error " + std::to_string(rc) + ")");
  out.resize(used);
  return out;
}

IdxArray parse_idx(const uint8_t* data, size_t size, const std::string& name) {
  if (size < 4)
    throw InputError(name + ": too short for an IDX header (" + std::to_string(size) +
                     " bytes; expected at least 4)");
  char magic[32];
  std::snprintf(magic, sizeof(magic), "%02x %02x %02x %02x", data[0], data[1], data[2], data[3]);
  if (data[0] != 0 || data[1] != 0)
    throw InputError(name + ": not an IDX file: magic bytes " + magic +
                     " (expected 00 00, then a type code and a dimension count)");
  if (!valid_type_code(data[2]))
    throw InputError(name + ": unknown IDX element type code " + std::string(magic + 6, 2) + " in magic " + magic +
                     " (expected 08 u8, 09 i8, 0b i16, 0c i32, 0d f32 or 0e f64)");
  IdxArray a;
  a.type = static_cast<IdxType>(data[2]);
  const int ndim = data[3];
  if (ndim < 1 || ndim > 8)
    throw InputError(name + ": IDX header has " + std::to_string(ndim) + " dimensions (expected 1 to 8)");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (size < header)
    throw InputError(name + ": truncated IDX header: " + std::to_string(ndim) + " dimensions need " +
                     std::to_string(header) + " header bytes, file has " + std::to_string(size));
  const size_t elem = idx_type_size(a.type);
  // Overflow-safe product: any file we can hold is far below 2^62 bytes.
  uint64_t count = 1;
  bool huge = false;
  std::ostringstream shape;
  for (int i = 0; i < ndim; ++i) {
    const uint8_t* p = data + 4 + 4 * i;
    const uint64_t d = (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | uint64_t{p[3]};
    a.dims.push_back(static_cast<int64_t>(d));
    shape << (i ? " x " : "") << d;
    if (d != 0 && count > (uint64_t{1} << 62) / d) huge = true;
    count *= d;
  }
  const uint64_t have = size - header;
  if (huge || count > (uint64_t{1} << 62) / elem || count * elem != have) {
    std::string want = huge ? "more than 2^62" : std::to_string(count * elem);
    const bool short_file = huge || have < count * elem;
    const std::string what = short_file ? "truncated" : "longer than its header says";
    throw InputError(name + ": " + what + ": header promises " + shape.str() + " " + idx_type_name(a.type) +
                     " elements = " + want + " data bytes, file has " + std::to_string(have));
  }
  a.bytes.assign(data + header, data + size);
  swap_elements(a.bytes.data(), a.bytes.size(), elem);
  return a;
}

IdxArray read_idx(const std::string& path) {
  const std::vector<uint8_t> bytes = read_maybe_gzip(path);
  return parse_idx(bytes.data(), bytes.size(), path);
}

void write_idx(const std::string& path, const IdxArray& a, bool gzip) {
  KILN_CHECK(!a.dims.empty() && a.dims.size() <= 8, "write_idx: " << a.dims.size() << " dimensions");
  const size_t elem = idx_type_size(a.type);
  KILN_CHECK(static_cast<uint64_t>(a.count()) * elem == a.bytes.size(),
             "write_idx: " << a.bytes.size() << " bytes for " << a.count() << " elements of " << elem);
  std::vector<uint8_t> out;
  out.reserve(4 + 4 * a.dims.size() + a.bytes.size());
  out.push_back(0);
  out.push_back(0);
  out.push_back(static_cast<uint8_t>(a.type));
  out.push_back(static_cast<uint8_t>(a.dims.size()));
  for (int64_t d : a.dims) {
    KILN_CHECK(d >= 0 && d <= 0xFFFFFFFFll, "write_idx: dimension " << d << " does not fit 32 bits");
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(d) >> s));
  }
  const size_t header = out.size();
  out.insert(out.end(), a.bytes.begin(), a.bytes.end());
  swap_elements(out.data() + header, a.bytes.size(), elem);

  bool ok = true;
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    if (!f) throw InputError(path + ": cannot create (" + std::strerror(errno ? errno : EACCES) + ")");
    size_t done = 0;
    while (ok && done < out.size()) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(out.size() - done, size_t{1} << 30));
      ok = gzwrite(f, out.data() + done, chunk) == static_cast<int>(chunk);
      done += chunk;
    }
    ok = (gzclose(f) == Z_OK) && ok;
  } else {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw InputError(path + ": cannot create (" + std::strerror(errno) + ")");
    ok = std::fwrite(out.data(), 1, out.size(), f) == out.size();
    ok = (std::fclose(f) == 0) && ok;
  }
  if (!ok) throw InputError(path + ": write failed");
}

}  // namespace kiln
