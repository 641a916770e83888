// The caching allocator: device (and host) memory is taken from the system
// once and reused, because cudaMalloc/cudaFree synchronize the device and cost
// tens of microseconds each.
//
// Blocks are rounded up to size classes (512 B steps up to 1 MiB, 2 MiB steps
// above) and cached per (device, stream) after free: a block freed is reused
// only by allocations on the stream it was allocated on, which is safe without
// events because that stream executes in order. A request takes the smallest
// cached block on its stream that fits with at most 25% to spare. A block that
// other streams also used must be declared with record_stream (as in PyTorch);
// it is then reused only once those streams' work has finished.
//
// When the backing allocation fails, the cache is emptied and the request
// retried once; if it still fails, OutOfMemory is thrown with the requested,
// free, in-use and reserved bytes, and the allocator remains usable.
//
// KILN_NO_CACHING_ALLOCATOR=1 (read once, by allocator_for) bypasses the
// cache so that compute-sanitizer sees every allocation at its exact size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/common.h"
#include "runtime/device.h"

namespace kiln {

struct AllocatorStats {
  size_t in_use = 0;         ///< bytes handed out and not yet freed (rounded sizes)
  size_t reserved = 0;       ///< bytes obtained from the backing (in use + cached)
  size_t peak_in_use = 0;    ///< high-water mark of in_use
  size_t peak_reserved = 0;  ///< high-water mark of reserved
  size_t backing_allocs = 0; ///< calls to cudaMalloc / host malloc
  size_t backing_frees = 0;  ///< calls to cudaFree / host free
  size_t cache_hits = 0;     ///< allocations served from the cache
};

/// Where the bytes really come from. CUDA: cudaMalloc/cudaFree on one device.
/// Host: aligned malloc with an optional byte limit (so the CPU backend can be
/// capped like a GPU, and the OOM path is testable without a GPU).
class Backing {
 public:
  virtual ~Backing() = default;
  /// Returns nullptr when out of memory (never throws for OOM).
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p, size_t bytes) = 0;
  /// Free bytes on the device as the system sees them (for OOM messages).
  virtual size_t free_bytes() const = 0;
  virtual std::string name() const = 0;

  // Stream-ordering hooks for record_stream (CUDA events); the host backing
  // has no streams and keeps these defaults.
  /// An event recorded on `stream` now (nullptr when there is nothing to wait for).
  virtual void* record_event(cudaStream_t stream) { return nullptr; }
  /// True once the work before the event has finished.
  virtual bool event_done(void* event) { return true; }
  virtual void destroy_event(void* event) {}
  /// Waits for all work on the device (before memory goes back to the system).
  virtual void synchronize() {}
};

std::unique_ptr<Backing> make_host_backing(size_t limit_bytes = 0 /* 0 = unlimited */);
std::unique_ptr<Backing> make_cuda_backing(int device);

class CachingAllocator {
 public:
  explicit CachingAllocator(std::unique_ptr<Backing> backing, bool caching = true);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// Returns at least `bytes` bytes (256-byte aligned) usable on `stream`.
  /// bytes == 0 returns nullptr.
  void* allocate(size_t bytes, cudaStream_t stream = nullptr);
  /// Returns p to the cache (or to the backing when caching is off).
  void free(void* p);
  /// Marks p as also used by work on `stream` (not the one it was allocated
  /// on): when p is freed, it is reused only after that stream's work queued
  /// so far has finished. No-op for the host backing and for stream == the
  /// allocation stream.
  void record_stream(void* p, cudaStream_t stream);
  /// Returns every cached (unused) block to the backing.
  void empty_cache();
  AllocatorStats stats() const;
  void reset_peak();
  /// The size class a request of `bytes` is rounded to.
  static size_t round_size(size_t bytes);
  bool caching() const { return caching_; }
  const Backing& backing() const { return *backing_; }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;
    cudaStream_t stream = nullptr;
    std::vector<cudaStream_t> used_on;  // other streams (record_stream)
  };
  // A freed block waiting for events on the other streams that used it.
  struct Pending {
    Block block;
    std::vector<void*> events;
  };
  void* allocate_locked(size_t requested, size_t size, cudaStream_t stream);
  void* take_cached_locked(size_t size, cudaStream_t stream);
  void cache_block_locked(Block b);
  void process_pending_locked();
  void empty_cache_locked();
  std::string oom_message_locked(size_t requested, size_t rounded) const;

  std::unique_ptr<Backing> backing_;
  bool caching_;
  mutable std::mutex mu_;
  // Cached blocks by (stream, size): lower_bound finds the best fit on a stream.
  std::multimap<std::pair<uintptr_t, size_t>, void*> free_blocks_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<void*, Block> cached_;
  std::vector<Pending> pending_;
  AllocatorStats stats_;
};

/// The process-wide allocator for a device (created on first use).
CachingAllocator& allocator_for(Device d);

/// Page-locked host memory for fast, asynchronous host<->device copies (data
/// loading). Falls back to ordinary memory when there is no GPU.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  bool pinned() const { return pinned_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
};

}  // namespace kiln
