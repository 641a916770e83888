// Shared pieces of the fuzz drivers (tests/fuzz/README.md). Each driver
// defines LLVMFuzzerTestOneInput: the parser under test must either accept
// the input or throw kiln::InputError; anything else (another exception, a
// sanitizer report, an abort, a timeout, an allocation past libFuzzer's
// -malloc_limit_mb) is a finding. Where a parser has an oracle (a round trip,
// every byte of a view readable), the driver checks it and aborts on a
// mismatch.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/error.h"

namespace kiln::fuzz {

/// The input cut at each "\n===\n" (drivers whose parser reads several files
/// or a file and extra arguments take them in that order; missing parts are
/// empty).
inline std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t parts) {
  std::string_view s(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> out;
  constexpr std::string_view kSep = "\n===\n";
  while (out.size() + 1 < parts) {
    const size_t p = s.find(kSep);
    if (p == std::string_view::npos) break;
    out.push_back(s.substr(0, p));
    s.remove_prefix(p + kSep.size());
  }
  out.push_back(s);
  while (out.size() < parts) out.emplace_back();
  return out;
}

/// Bytes as a file the parser can open by path, without touching the disk:
/// an anonymous memory file (memfd) named by /proc/self/fd/N.
class MemFile {
 public:
  MemFile(std::string_view bytes, const char* name) {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ < 0) std::abort();
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

/// Reads every byte (so a view past the end of its buffer is an ASan
/// report) and returns something that depends on them all.
inline uint64_t touch(const void* p, size_t n) {
  const auto* b = static_cast<const volatile uint8_t*>(p);
  uint64_t h = 0;
  for (size_t i = 0; i < n; ++i) h = h * 31 + b[i];
  return h;
}

/// A broken oracle: print why and abort (libFuzzer saves the input).
[[noreturn]] inline void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz finding: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace kiln::fuzz
