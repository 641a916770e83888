// Stream / Event RAII and the per-device compute stream (see stream.h).
#include "runtime/stream.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "runtime/device_guard.h"
#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {

namespace {
std::atomic<int64_t> g_host_syncs{0};

void require_cuda_device(Device d, const char* what) {
  KILN_CHECK(d.index >= 0 && d.index < cuda_device_count(),
             what << ": no device " << d.str() << " (" << cuda_device_count() << " CUDA devices"
                  << (cuda_available() ? "" : ": " + cuda_unavailable_reason()) << ")");
}
}  // namespace

// --- Stream ------------------------------------------------------------------

Stream::Stream(Device d, bool non_blocking) : device_(d) {
  if (d.is_cpu()) return;
  require_cuda_device(d, "Stream");
#if KILN_WITH_CUDA
  detail::CudaDeviceGuard guard(d.index);
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
#endif
}

Stream::~Stream() {
#if KILN_WITH_CUDA
  if (stream_) KILN_CUDA_WARN(cudaStreamDestroy(stream_));
#endif
}

Stream::Stream(Stream&& o) noexcept : stream_(o.stream_), device_(o.device_) {
  o.stream_ = nullptr;
  o.device_ = Device::cpu();
}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    Stream tmp(std::move(o));
    std::swap(stream_, tmp.stream_);
    std::swap(device_, tmp.device_);
  }
  return *this;
}

int64_t host_sync_count() { return g_host_syncs.load(std::memory_order_relaxed); }

void count_host_sync() { g_host_syncs.fetch_add(1, std::memory_order_relaxed); }

void Stream::synchronize() const {
  count_host_sync();
#if KILN_WITH_CUDA
  if (stream_) KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
}

// --- Event -------------------------------------------------------------------

Event::Event(Device d, bool timing) : device_(d) {
  if (d.is_cpu()) return;
  require_cuda_device(d, "Event");
#if KILN_WITH_CUDA
  detail::CudaDeviceGuard guard(d.index);
  cudaEvent_t e = nullptr;
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  event_ = e;
#else
  (void)timing;
#endif
}

Event::~Event() {
#if KILN_WITH_CUDA
  if (event_) KILN_CUDA_WARN(cudaEventDestroy(static_cast<cudaEvent_t>(event_)));
#endif
}

Event::Event(Event&& o) noexcept : event_(o.event_), device_(o.device_) {
  o.event_ = nullptr;
  o.device_ = Device::cpu();
}

Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    Event tmp(std::move(o));
    std::swap(event_, tmp.event_);
    std::swap(device_, tmp.device_);
  }
  return *this;
}

void Event::record(cudaStream_t s) {
#if KILN_WITH_CUDA
  if (event_) KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), s));
#else
  (void)s;
#endif
}

void Event::wait(cudaStream_t s) const {
#if KILN_WITH_CUDA
  if (event_) KILN_CUDA_CHECK(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(event_), 0));
#else
  (void)s;
#endif
}

void Event::synchronize() const {
  count_host_sync();
#if KILN_WITH_CUDA
  if (event_) KILN_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
#endif
}

bool Event::done() const {
#if KILN_WITH_CUDA
  if (!event_) return true;
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (e == cudaErrorNotReady) return false;
  KILN_CUDA_CHECK(e);
#endif
  return true;
}

float Event::elapsed_ms(const Event& start) const {
  KILN_CHECK(event_ && start.event_, "Event::elapsed_ms: CPU events carry no time (time the host with a clock)");
  float ms = 0.0f;
#if KILN_WITH_CUDA
  KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.event_),
                                       static_cast<cudaEvent_t>(event_)));
#endif
  return ms;
}

// --- compute streams -----------------------------------------------------------

cudaStream_t compute_stream(Device d) {
  if (d.is_cpu()) return nullptr;
  require_cuda_device(d, "compute_stream");
  // One per device for the life of the process (never destroyed: the CUDA
  // runtime may be gone by the time static destructors run). A blocking
  // stream, so code that still uses the legacy default stream (cudaMemcpy,
  // cudaMemset) stays ordered with it.
  static std::mutex mu;
  static std::unordered_map<int, Stream*> streams;
  std::lock_guard<std::mutex> lock(mu);
  auto it = streams.find(d.index);
  if (it == streams.end()) it = streams.emplace(d.index, new Stream(d, /*non_blocking=*/false)).first;
  return it->second->get();
}

}  // namespace kiln

namespace kiln {

void synchronize_device(Device d) {
  count_host_sync();
  if (d.is_cpu()) return;
  require_cuda_device(d, "synchronize_device");
#if KILN_WITH_CUDA
  detail::CudaDeviceGuard guard(d.index);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
#endif
}

void copy_to_device_async(void* dst, const void* src, size_t bytes, Device device, cudaStream_t stream) {
  if (bytes == 0) return;
  KILN_CHECK(dst && src, "copy_to_device_async: null pointer");
  if (device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if KILN_WITH_CUDA
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
#else
  (void)stream;
  KILN_CHECK(false, "copy_to_device_async: " << device.str() << " in a build without CUDA");
#endif
}

}  // namespace kiln
