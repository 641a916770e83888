#include "data/crc32.h"

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime/error.h"

namespace kiln {

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const Bytef* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  // zlib's length argument is a uInt (32 bits): feed large buffers in pieces.
  while (n > 0) {
    uInt chunk = n > (size_t(1) << 30) ? uInt(1) << 30 : static_cast<uInt>(n);
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

uint32_t crc32_file(const std::string& path, uint64_t* size) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    throw InputError("cannot open '" + path + "': " + std::strerror(err));
  }
  std::vector<unsigned char> buf(size_t(1) << 20);
  uint32_t crc = 0;
  uint64_t total = 0;
  for (;;) {
    size_t got = std::fread(buf.data(), 1, buf.size(), f);
    crc = crc32_update(crc, buf.data(), got);
    total += got;
    if (got < buf.size()) break;
  }
  bool bad = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  if (bad) throw InputError("cannot read '" + path + "': " + std::strerror(err));
  if (size) *size = total;
  return crc;
}

std::string crc32_hex(uint32_t crc) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", crc);
  return s;
}

}  // namespace kiln
