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

}  // namespace kiln
