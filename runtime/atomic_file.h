// Crash-safe file replacement: readers, and a machine that loses power or a
// process killed with -9, see either the old file or the complete new one,
// never a prefix.
//
// The recipe (POSIX): write `<path>.tmp.<pid>` in the same directory (rename
// is only atomic within one filesystem), fsync it, rename it over `path`,
// fsync the directory so the rename itself is durable. On any error the
// temporary file is removed and kiln::Error names the path and errno's text.
//
// What a crash can leave behind is a stale `<path>.tmp.<pid>`; the target is
// never touched until the rename.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

/// One atomic replacement of `path`, written in pieces:
///   AtomicFile f(path); f.write(a, n); f.write(b, m); f.commit();
/// Destroying it without commit() (an exception on the way) removes the
/// temporary file and leaves `path` as it was.
class AtomicFile {
 public:
  /// Creates (truncates) `<path>.tmp.<pid>`; throws Error naming it on failure.
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends n bytes (retries partial writes and EINTR). Throws Error naming
  /// the target and errno's text (ENOSPC, EFBIG, EIO, ...) and removes the
  /// temporary file.
  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }

  /// fsync, close, rename over the target, fsync the directory. After it
  /// returns the new contents are durable. Throws Error (temporary removed).
  void commit();
  /// Drops what was written (removes the temporary); the target is untouched.
  void abort() noexcept;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }
  uint64_t bytes_written() const { return written_; }

 private:
  [[noreturn]] void fail(const char* what, int err);

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool done_ = false;
};

/// Replaces `path` with `n` bytes atomically (AtomicFile in one call).
void write_file_atomic(const std::string& path, const void* data, size_t n);
void write_file_atomic(const std::string& path, const std::string& contents);

/// fsyncs a directory so that creations/renames/removals in it are durable.
/// Throws Error naming it.
void fsync_directory(const std::string& dir);

/// The directory part of `path` ("." when it has none).
std::string parent_directory(const std::string& path);

}  // namespace kiln
