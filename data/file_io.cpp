#include "data/file_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "runtime/error.h"

namespace kiln {

std::string read_file(const std::string& path) {
  std::error_code ec;
  KILN_INPUT_CHECK(!std::filesystem::is_directory(path, ec), path << ": is a directory, expected a file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  KILN_INPUT_CHECK(f != nullptr, path << ": cannot open: " << std::strerror(errno));
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  KILN_INPUT_CHECK(!failed, path << ": read error: " << std::strerror(err));
  return out;
}

void make_directories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KILN_INPUT_CHECK(!ec, dir << ": cannot create directory: " << ec.message());
  KILN_INPUT_CHECK(std::filesystem::is_directory(dir, ec), dir << ": exists and is not a directory");
}

}  // namespace kiln
