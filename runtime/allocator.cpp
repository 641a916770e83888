// CachingAllocator (see allocator.h), the host backing, allocator_for and
// PinnedBuffer. The CUDA backing lives in allocator_cuda.cpp.
#include "runtime/allocator.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "runtime/error.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {
namespace {

constexpr size_t kSmallStep = 512;
constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
constexpr size_t kLargeStep = size_t(2) << 20;   // 2 MiB
constexpr size_t kAlign = 256;
// Anything larger is certainly out of memory (and would overflow rounding).
constexpr size_t kMaxRequest = size_t(1) << 56;

size_t round_up(size_t x, size_t step) { return (x + step - 1) / step * step; }

std::string human(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) { v /= 1024.0; ++u; }
  char buf[64];
  if (u == 0) std::snprintf(buf, sizeof buf, "%zu B", bytes);
  else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

std::string bytes_str(size_t bytes) {
  std::ostringstream os;
  os << human(bytes) << " (" << bytes << " bytes)";
  return os.str();
}

/// Aligned malloc with an optional cap on the bytes outstanding.
class HostBacking : public Backing {
 public:
  explicit HostBacking(size_t limit) : limit_(limit) {}
  void* allocate(size_t bytes) override {
    const size_t size = round_up(bytes, kAlign);
    std::lock_guard<std::mutex> lock(mu_);
    if (limit_ && (size > limit_ || used_ > limit_ - size)) return nullptr;
    void* p = std::aligned_alloc(kAlign, size);
    if (!p) return nullptr;
    used_ += size;
    return p;
  }
  void release(void* p, size_t bytes) override {
    std::free(p);
    std::lock_guard<std::mutex> lock(mu_);
    used_ -= round_up(bytes, kAlign);
  }
  size_t free_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    if (limit_) return limit_ - used_;
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  }
  std::string name() const override {
    return limit_ ? "host memory (limit " + human(limit_) + ")" : "host memory";
  }

 private:
  size_t limit_;
  size_t used_ = 0;
  mutable std::mutex mu_;
};

}  // namespace

std::unique_ptr<Backing> make_host_backing(size_t limit_bytes) {
  return std::make_unique<HostBacking>(limit_bytes);
}

// --- CachingAllocator ------------------------------------------------------

CachingAllocator::CachingAllocator(std::unique_ptr<Backing> backing, bool caching)
    : backing_(std::move(backing)), caching_(caching) {
  KILN_CHECK(backing_, "CachingAllocator needs a backing");
}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    empty_cache_locked();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln: warning: emptying the %s cache at exit failed: %s\n", backing_->name().c_str(),
                 e.what());
  }
  if (!live_.empty()) {
    // Someone still holds these pointers: leaking is safer than freeing.
    std::fprintf(stderr, "kiln: warning: allocator for %s destroyed with %zu blocks (%s) still in use\n",
                 backing_->name().c_str(), live_.size(), human(stats_.in_use).c_str());
  }
}

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) return 0;
  if (bytes > kMaxRequest) return bytes;  // allocate() reports it as OOM
  if (bytes <= kSmallLimit) return round_up(bytes, kSmallStep);
  return round_up(bytes, kLargeStep);
}

void* CachingAllocator::allocate(size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes > kMaxRequest) throw OutOfMemory(oom_message_locked(bytes, bytes));
  if (!caching_) {
    // Exact sizes, so compute-sanitizer catches an overrun of even one byte.
    void* p = backing_->allocate(bytes);
    if (!p) throw OutOfMemory(oom_message_locked(bytes, bytes));
    ++stats_.backing_allocs;
    stats_.reserved += bytes;
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    stats_.in_use += bytes;
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
    Block b;
    b.ptr = p;
    b.size = bytes;
    b.stream = stream;
    live_.emplace(p, std::move(b));
    return p;
  }
  return allocate_locked(bytes, round_size(bytes), stream);
}

void* CachingAllocator::allocate_locked(size_t requested, size_t size, cudaStream_t stream) {
  process_pending_locked();
  if (void* p = take_cached_locked(size, stream)) {
    ++stats_.cache_hits;
    return p;
  }
  void* p = backing_->allocate(size);
  if (!p) {
    // Cached blocks on other streams (or of other sizes) may be what stands in
    // the way: give everything back and try once more.
    empty_cache_locked();
    p = backing_->allocate(size);
  }
  if (!p) throw OutOfMemory(oom_message_locked(requested, size));
  ++stats_.backing_allocs;
  stats_.reserved += size;
  stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  stats_.in_use += size;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  Block b;
  b.ptr = p;
  b.size = size;
  b.stream = stream;
  live_.emplace(p, std::move(b));
  return p;
}

void* CachingAllocator::take_cached_locked(size_t size, cudaStream_t stream) {
  const uintptr_t s = reinterpret_cast<uintptr_t>(stream);
  auto it = free_blocks_.lower_bound({s, size});
  if (it == free_blocks_.end() || it->first.first != s || it->first.second > size + size / 4) return nullptr;
  void* p = it->second;
  free_blocks_.erase(it);
  auto c = cached_.find(p);
  Block b = std::move(c->second);
  cached_.erase(c);
  b.used_on.clear();
  stats_.in_use += b.size;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  live_.emplace(p, std::move(b));
  return p;
}

void CachingAllocator::cache_block_locked(Block b) {
  free_blocks_.emplace(std::make_pair(reinterpret_cast<uintptr_t>(b.stream), b.size), b.ptr);
  void* p = b.ptr;
  cached_.emplace(p, std::move(b));
}

void CachingAllocator::free(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  KILN_CHECK(it != live_.end(), "CachingAllocator(" << backing_->name() << ")::free: " << p
                                                    << " was not allocated here or was already freed");
  Block b = std::move(it->second);
  live_.erase(it);
  stats_.in_use -= b.size;
  if (!caching_) {
    // cudaFree waits for the device, so other streams' work is done too.
    backing_->release(b.ptr, b.size);
    ++stats_.backing_frees;
    stats_.reserved -= b.size;
    return;
  }
  if (b.used_on.empty()) {
    cache_block_locked(std::move(b));
    return;
  }
  Pending pd;
  for (cudaStream_t s : b.used_on)
    if (void* ev = backing_->record_event(s)) pd.events.push_back(ev);
  if (pd.events.empty()) {
    cache_block_locked(std::move(b));
  } else {
    pd.block = std::move(b);
    pending_.push_back(std::move(pd));
  }
}

void CachingAllocator::record_stream(void* p, cudaStream_t stream) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  KILN_CHECK(it != live_.end(), "CachingAllocator::record_stream: " << p << " is not a live allocation");
  Block& b = it->second;
  if (stream == b.stream) return;
  for (cudaStream_t s : b.used_on)
    if (s == stream) return;
  b.used_on.push_back(stream);
}

void CachingAllocator::process_pending_locked() {
  for (size_t i = 0; i < pending_.size();) {
    bool done = true;
    for (void* ev : pending_[i].events) done = done && backing_->event_done(ev);
    if (!done) {
      ++i;
      continue;
    }
    for (void* ev : pending_[i].events) backing_->destroy_event(ev);
    cache_block_locked(std::move(pending_[i].block));
    pending_[i] = std::move(pending_.back());
    pending_.pop_back();
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  empty_cache_locked();
}

void CachingAllocator::empty_cache_locked() {
  if (!pending_.empty()) {
    backing_->synchronize();  // the other streams' work on pending blocks must finish first
    for (Pending& pd : pending_) {
      for (void* ev : pd.events) backing_->destroy_event(ev);
      backing_->release(pd.block.ptr, pd.block.size);
      ++stats_.backing_frees;
      stats_.reserved -= pd.block.size;
    }
    pending_.clear();
  }
  for (auto& kv : cached_) {
    backing_->release(kv.second.ptr, kv.second.size);
    ++stats_.backing_frees;
    stats_.reserved -= kv.second.size;
  }
  cached_.clear();
  free_blocks_.clear();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_in_use = stats_.in_use;
  stats_.peak_reserved = stats_.reserved;
}

std::string CachingAllocator::oom_message_locked(size_t requested, size_t rounded) const {
  std::ostringstream os;
  os << "out of memory on " << backing_->name() << ": requested " << bytes_str(requested);
  if (rounded != requested) os << ", rounded to " << rounded << " bytes";
  os << "; free on the device: " << bytes_str(backing_->free_bytes()) << "; kiln's allocator: in use "
     << bytes_str(stats_.in_use) << ", reserved " << bytes_str(stats_.reserved)
     << (caching_ ? " after emptying its cache" : " (caching off)")
     << ". Reduce the batch size or model size, or free tensors that are no longer needed.";
  return os.str();
}

// --- process-wide allocators -------------------------------------------------

namespace {

bool caching_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("KILN_NO_CACHING_ALLOCATOR");
    const bool bypass = e && *e && std::string(e) != "0";
    if (bypass) std::fprintf(stderr, "kiln: KILN_NO_CACHING_ALLOCATOR=%s: every allocation goes to the system\n", e);
    return !bypass;
  }();
  return enabled;
}

}  // namespace

CachingAllocator& allocator_for(Device d) {
  // Never destroyed: tensors in static objects may be freed after main
  // returns, and the CUDA runtime may already be torn down by then.
  static std::mutex mu;
  static CachingAllocator* cpu = nullptr;
  static std::unordered_map<int, CachingAllocator*> cuda;
  std::lock_guard<std::mutex> lock(mu);
  if (d.is_cpu()) {
    if (!cpu) cpu = new CachingAllocator(make_host_backing(0), caching_enabled());
    return *cpu;
  }
  KILN_CHECK(d.index >= 0 && d.index < cuda_device_count(),
             "no device " << d.str() << " (" << cuda_device_count() << " CUDA devices"
                          << (cuda_available() ? "" : ": " + cuda_unavailable_reason()) << ")");
  auto it = cuda.find(d.index);
  if (it == cuda.end()) it = cuda.emplace(d.index, new CachingAllocator(make_cuda_backing(d.index), caching_enabled())).first;
  return *it->second;
}

// --- PinnedBuffer --------------------------------------------------------------

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
#if KILN_WITH_CUDA
  if (cuda_available()) {
    if (cudaMallocHost(&ptr_, bytes) == cudaSuccess) {
      pinned_ = true;
      return;
    }
    cudaGetLastError();  // clear it; fall back to pageable memory below
    ptr_ = nullptr;
    static bool warned = false;
    if (!warned) {
      warned = true;
      std::fprintf(stderr, "kiln: warning: cudaMallocHost(%s) failed; using pageable memory (slower copies)\n",
                   human(bytes).c_str());
    }
  }
#endif
  ptr_ = std::aligned_alloc(4096, round_up(bytes, 4096));
  if (!ptr_) throw OutOfMemory("PinnedBuffer: out of host memory allocating " + bytes_str(bytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (!ptr_) return;
#if KILN_WITH_CUDA
  if (pinned_) {
    KILN_CUDA_WARN(cudaFreeHost(ptr_));
    return;
  }
#endif
  std::free(ptr_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), pinned_(o.pinned_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
  o.pinned_ = false;
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    PinnedBuffer tmp(std::move(o));
    std::swap(ptr_, tmp.ptr_);
    std::swap(bytes_, tmp.bytes_);
    std::swap(pinned_, tmp.pinned_);
  }
  return *this;
}

}  // namespace kiln
