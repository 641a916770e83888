// CRC-32 (the zlib / PNG / gzip polynomial) over buffers and files, for
// checkpoint manifests. Kept in data/ because data/ is the layer that links
// zlib; runtime/ has no need for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

/// CRC-32 of n bytes, continuing from `crc` (0 to start):
/// crc32_update(crc32_update(0, a, n), b, m) == CRC of a followed by b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);
inline uint32_t crc32_of(const void* data, size_t n) { return crc32_update(0, data, n); }

/// CRC-32 and size of a file, read in 1 MiB pieces. Throws InputError naming
/// the file when it cannot be opened or read.
uint32_t crc32_file(const std::string& path, uint64_t* size = nullptr);

/// "0x1234abcd" (the form manifests store, so a person can compare it with
/// `crc32 FILE` or Python's zlib.crc32).
std::string crc32_hex(uint32_t crc);

}  // namespace kiln
