// kiln's one error header: check macros for CUDA, cuBLAS(Lt), cuDNN, NCCL and
// MPI calls, and KILN_CHECK for our own invariants. Every macro is a
// do { } while (0) statement and throws kiln::Error naming the failing call,
// file, line and (for GPU calls) the current device. *_WARN variants print
// instead of throwing, for destructors.
//
// Header-only and free of framework types, so kernels/ may include it too.
#pragma once

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

/// Every error kiln reports: bad input, failed library call, broken invariant.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// Allocation failure that leaves the process usable (caches are dropped and
/// the request can be retried smaller).
class OutOfMemory : public Error {
 public:
  explicit OutOfMemory(const std::string& what) : Error(what) {}
};

/// Bad user input (config, file, command line): the CLI exits with status 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what) {}
};

namespace detail {

inline std::string where(const char* file, int line) {
  std::ostringstream os;
  os << file << ":" << line;
  return os.str();
}

[[noreturn]] inline void fail(const char* file, int line, const char* cond, const std::string& msg) {
  std::ostringstream os;
  os << msg;
  if (cond && *cond) os << " [check `" << cond << "` failed at " << where(file, line) << "]";
  throw Error(os.str());
}

// Defined in runtime/error_gpu.cpp (CUDA build) so this header does not pull
// in every GPU library's headers; each names the library's own error string.
[[noreturn]] void fail_cuda(const char* call, int code, const char* file, int line);
[[noreturn]] void fail_cublas(const char* call, int code, const char* file, int line);
[[noreturn]] void fail_cudnn(const char* call, int code, const char* file, int line);
[[noreturn]] void fail_nccl(const char* call, int code, const char* file, int line);
[[noreturn]] void fail_mpi(const char* call, int code, const char* file, int line);
void warn_cuda(const char* call, int code, const char* file, int line) noexcept;

}  // namespace detail
}  // namespace kiln

/// KILN_CHECK(cond, "message " << value): throws kiln::Error with the message.
#define KILN_CHECK(cond, msg)                                        \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::ostringstream kiln_os_;                                   \
      kiln_os_ << msg;                                               \
      ::kiln::detail::fail(__FILE__, __LINE__, #cond, kiln_os_.str()); \
    }                                                                \
  } while (0)

/// KILN_INPUT_CHECK(cond, msg): like KILN_CHECK but throws InputError, for
/// problems in what the user gave us (message must name the file/key).
#define KILN_INPUT_CHECK(cond, msg)               \
  do {                                            \
    if (!(cond)) {                                \
      std::ostringstream kiln_os_;                \
      kiln_os_ << msg;                            \
      throw ::kiln::InputError(kiln_os_.str());   \
    }                                             \
  } while (0)

#define KILN_CUDA_CHECK(call)                                                       \
  do {                                                                              \
    int kiln_e_ = static_cast<int>(call);                                           \
    if (kiln_e_ != 0) ::kiln::detail::fail_cuda(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

/// For destructors and other places that must not throw.
#define KILN_CUDA_WARN(call)                                                        \
  do {                                                                              \
    int kiln_e_ = static_cast<int>(call);                                           \
    if (kiln_e_ != 0) ::kiln::detail::warn_cuda(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

#define KILN_CUBLAS_CHECK(call)                                                       \
  do {                                                                                \
    int kiln_e_ = static_cast<int>(call);                                             \
    if (kiln_e_ != 0) ::kiln::detail::fail_cublas(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

#define KILN_CUDNN_CHECK(call)                                                       \
  do {                                                                               \
    int kiln_e_ = static_cast<int>(call);                                            \
    if (kiln_e_ != 0) ::kiln::detail::fail_cudnn(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

#define KILN_NCCL_CHECK(call)                                                       \
  do {                                                                              \
    int kiln_e_ = static_cast<int>(call);                                           \
    if (kiln_e_ != 0) ::kiln::detail::fail_nccl(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

#define KILN_MPI_CHECK(call)                                                       \
  do {                                                                             \
    int kiln_e_ = (call);                                                          \
    if (kiln_e_ != 0) ::kiln::detail::fail_mpi(#call, kiln_e_, __FILE__, __LINE__); \
  } while (0)

/// After every kernel launch: catches bad launch configurations at the launch
/// site instead of at the next synchronizing call.
#define KILN_LAUNCH_CHECK() KILN_CUDA_CHECK(cudaGetLastError())
