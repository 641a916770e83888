#include "runtime/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/error.h"

namespace kiln {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

std::string parent_directory(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error("cannot open directory '" + dir + "' to fsync it: " + errno_text(err));
  }
  // Some filesystems (and some FUSE mounts) do not support fsync on a
  // directory; EINVAL there means "nothing to make durable", not failure.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    throw Error("fsync of directory '" + dir + "' failed: " + errno_text(err));
  }
  ::close(fd);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  KILN_CHECK(!path.empty(), "AtomicFile: empty path");
  temp_ = path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int err = errno;
    done_ = true;  // nothing to clean up
    throw Error("cannot write '" + path_ + "': creating temporary '" + temp_ + "' failed: " + errno_text(err));
  }
}

AtomicFile::~AtomicFile() { abort(); }

void AtomicFile::abort() noexcept {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_.c_str());
}

void AtomicFile::fail(const char* what, int err) {
  abort();
  throw Error("cannot write '" + path_ + "': " + what + " failed: " + errno_text(err) + " (temporary '" + temp_ +
              "' removed; the file is unchanged)");
}

void AtomicFile::write(const void* data, size_t n) {
  KILN_CHECK(!done_, "AtomicFile '" << path_ << "': write after commit/abort");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // Linux writes at most ~2 GiB per call; a partial write is not an error.
    size_t chunk = n < (size_t(1) << 30) ? n : (size_t(1) << 30);
    ssize_t w = ::write(fd_, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write", errno);
    }
    if (w == 0) fail("write", EIO);
    p += w;
    n -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
}

void AtomicFile::commit() {
  KILN_CHECK(!done_, "AtomicFile '" << path_ << "': commit after commit/abort");
  // Data must be on disk before the rename publishes it; otherwise a power
  // loss can leave the new name pointing at an empty or partial file.
  if (::fsync(fd_) != 0) fail("fsync", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close", errno);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) fail("rename", errno);
  done_ = true;  // the temporary is now the target: nothing left to remove
  fsync_directory(parent_directory(path_));
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, contents.data(), contents.size());
}

}  // namespace kiln
