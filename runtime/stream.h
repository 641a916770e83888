// RAII CUDA streams and events. In the CPU build (or on the CPU device) they
// are empty handles whose operations are no-ops, so callers need no #ifs.
#pragma once

#include "kernels/common.h"
#include "runtime/device.h"

namespace kiln {

class Stream {
 public:
  Stream() = default;                 ///< the null handle (CPU / legacy default stream)
  explicit Stream(Device d, bool non_blocking = true);
  ~Stream();
  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  Device device() const { return device_; }
  /// Waits for the stream's work (counted by host_sync_count). A null handle
  /// waits for nothing: to wait for a device's work use synchronize_device.
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
  Device device_ = Device::cpu();
};

class Event {
 public:
  Event() = default;
  /// timing=false creates a lighter event for cross-stream ordering.
  explicit Event(Device d, bool timing = false);
  ~Event();
  Event(Event&& o) noexcept;
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t s);
  /// Makes stream s wait for this event (no host block).
  void wait(cudaStream_t s) const;
  void synchronize() const;
  /// True once the work before the last record() has finished (or nothing
  /// was recorded, or on the CPU). Never blocks, so it is not counted.
  bool done() const;
  /// Milliseconds between start's record and this event's.
  float elapsed_ms(const Event& start) const;

 private:
  void* event_ = nullptr;  // cudaEvent_t
  Device device_ = Device::cpu();
};

/// The stream compute on device d runs on in this process (created once per
/// device, never destroyed). A blocking stream, so it stays ordered with
/// anything still issued on the legacy default stream. nullptr for the CPU.
cudaStream_t compute_stream(Device d);

/// Waits until every stream of device d is idle (cudaDeviceSynchronize; a
/// no-op for the CPU, but counted there too). What timing and the trainer's
/// log window use: a default-constructed Stream synchronizes nothing.
void synchronize_device(Device d);

/// Copies `bytes` from host memory to device memory on `stream` without
/// waiting (page-locked `src` makes it truly asynchronous: PinnedBuffer).
/// The caller keeps src alive and unchanged until the copy is done (record
/// an Event after it). On the CPU (dst on the host) it is a plain memcpy.
void copy_to_device_async(void* dst, const void* src, size_t bytes, Device device, cudaStream_t stream);

/// Host waits on a device this process has made: Stream::synchronize,
/// Event::synchronize, synchronize_device, and reads of tensor data to the
/// host (Tensor::to_vector, to_vector_f64, copies to or from a GPU, which
/// wait). They count on the CPU backend too, where they cost nothing, so a
/// CPU test can check that code which must not wait on a GPU (a training
/// step between log windows) asks for no such wait. Thread-safe.
int64_t host_sync_count();
/// Counts one host wait (for the waits made outside this file).
void count_host_sync();

}  // namespace kiln
