// The CUDA backing of the caching allocator: cudaMalloc / cudaFree on one
// device, cudaMemGetInfo for OOM messages, events for record_stream.
#include <cstdio>
#include <string>

#include "runtime/allocator.h"
#include "runtime/device_guard.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {

#if KILN_WITH_CUDA
namespace {

class CudaBacking : public Backing {
 public:
  explicit CudaBacking(int device) : device_(device) {}

  void* allocate(size_t bytes) override {
    detail::CudaDeviceGuard guard(device_);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it so the next call succeeds
      return nullptr;
    }
    KILN_CUDA_CHECK(e);
    return p;
  }
  void release(void* p, size_t) override {
    detail::CudaDeviceGuard guard(device_);
    KILN_CUDA_CHECK(cudaFree(p));
  }
  size_t free_bytes() const override {
    try {
      detail::CudaDeviceGuard guard(device_);
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
        cudaGetLastError();
        return 0;
      }
      return free;
    } catch (const Error&) {
      return 0;  // only used in messages
    }
  }
  std::string name() const override { return "cuda:" + std::to_string(device_); }

  void* record_event(cudaStream_t stream) override {
    detail::CudaDeviceGuard guard(device_);
    cudaEvent_t ev = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaEventRecord(ev, stream));
    return ev;
  }
  bool event_done(void* event) override {
    const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (e == cudaErrorNotReady) return false;  // not an error, and not recorded as one
    KILN_CUDA_CHECK(e);
    return true;
  }
  void destroy_event(void* event) override { KILN_CUDA_WARN(cudaEventDestroy(static_cast<cudaEvent_t>(event))); }
  void synchronize() override {
    detail::CudaDeviceGuard guard(device_);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
  }

 private:
  int device_;
};

}  // namespace

std::unique_ptr<Backing> make_cuda_backing(int device) {
  KILN_CHECK(device >= 0 && device < cuda_device_count(),
             "make_cuda_backing: no device cuda:" << device << " (" << cuda_device_count() << " CUDA devices)");
  return std::make_unique<CudaBacking>(device);
}

#else

std::unique_ptr<Backing> make_cuda_backing(int device) {
  KILN_CHECK(false, "make_cuda_backing(" << device << "): this kiln was built without CUDA");
}

#endif

}  // namespace kiln
