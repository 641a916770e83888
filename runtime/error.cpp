// Error formatting for GPU and MPI library calls. Each builds one message:
//   "<call> failed: <library error string> (code N) at file:line on cuda:D"
#include "runtime/error.h"

#include <mpi.h>

#if KILN_WITH_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>
#endif

namespace kiln::detail {
namespace {

std::string device_suffix() {
#if KILN_WITH_CUDA
  int dev = -1;
  if (cudaGetDevice(&dev) == cudaSuccess) return " on cuda:" + std::to_string(dev);
#endif
  return "";
}

[[noreturn]] void throw_lib(const char* lib, const char* call, int code, const std::string& text,
                            const char* file, int line) {
  std::ostringstream os;
  os << lib << " call `" << call << "` failed: " << text << " (code " << code << ") at "
     << where(file, line) << device_suffix();
  if (lib == std::string("CUDA") && code == 2 /* cudaErrorMemoryAllocation */)
    throw OutOfMemory(os.str());
  throw Error(os.str());
}

}  // namespace

void fail_cuda(const char* call, int code, const char* file, int line) {
#if KILN_WITH_CUDA
  cudaGetLastError();  // clear the sticky-free error so the process stays usable
  throw_lib("CUDA", call, code, cudaGetErrorString(static_cast<cudaError_t>(code)), file, line);
#else
  throw_lib("CUDA", call, code, "CUDA is not compiled into this build", file, line);
#endif
}

void fail_cublas(const char* call, int code, const char* file, int line) {
#if KILN_WITH_CUDA
  throw_lib("cuBLAS", call, code, cublasLtGetStatusString(static_cast<cublasStatus_t>(code)), file, line);
#else
  throw_lib("cuBLAS", call, code, "CUDA is not compiled into this build", file, line);
#endif
}

void fail_cudnn(const char* call, int code, const char* file, int line) {
#if KILN_WITH_CUDA
  throw_lib("cuDNN", call, code, cudnnGetErrorString(static_cast<cudnnStatus_t>(code)), file, line);
#else
  throw_lib("cuDNN", call, code, "CUDA is not compiled into this build", file, line);
#endif
}

void fail_nccl(const char* call, int code, const char* file, int line) {
#if KILN_WITH_CUDA
  throw_lib("NCCL", call, code, ncclGetErrorString(static_cast<ncclResult_t>(code)), file, line);
#else
  throw_lib("NCCL", call, code, "CUDA is not compiled into this build", file, line);
#endif
}

void fail_mpi(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "unknown MPI error");
  throw_lib("MPI", call, code, text, file, line);
}

void warn_cuda(const char* call, int code, const char* file, int line) noexcept {
#if KILN_WITH_CUDA
  std::fprintf(stderr, "kiln: warning: CUDA call `%s` failed: %s (code %d) at %s:%d\n", call,
               cudaGetErrorString(static_cast<cudaError_t>(code)), code, file, line);
#else
  std::fprintf(stderr, "kiln: warning: CUDA call `%s` failed (code %d) at %s:%d\n", call, code, file, line);
#endif
}

}  // namespace kiln::detail
