// The CPU backend's one thread pool: every threaded CPU op (the kernels'
// CPU references, the OpenBLAS GEMM split in runtime/blas.cpp) runs on it, so
// there is never a second pool spinning against the first (what PyTorch's
// OpenMP threads do to OpenBLAS's unless OMP_WAIT_POLICY=PASSIVE).
//
//   parallel_for(n, min_per_part, [&](int64_t lo, int64_t hi) { ... });
//
// splits [0, n) into at most cpu_pool_threads() contiguous parts (static
// partitioning: part p is [n·p/P, n·(p+1)/P), P parts, no work stealing) and
// runs them at once, the caller taking part 0. Ops keep their results
// independent of the thread count by giving each element or row to exactly
// one part (elementwise and row-wise ops), or by reducing over fixed blocks
// whose boundaries depend on the shape only, then adding the block sums in
// order (see the kernels that reduce). At a fixed thread count every result
// is deterministic.
//
// Workers spin for a short while after a region (the next op of a training
// step usually follows within microseconds), then sleep on a condition
// variable, so an idle process costs nothing. A region started from inside a
// region, or from a second thread while the pool is busy, runs serially on
// its caller: same result, no deadlock.
//
// Header-only and free of framework types (like runtime/error.h), so
// kernels/ may include it: the pool is a function-local static, one per
// process.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "runtime/error.h"

namespace kiln {
namespace detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

/// CPUs this process may run on (its affinity mask), at least 1.
inline int available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

class ThreadPool {
 public:
  /// task(ctx, part, parts) for part in [0, parts).
  using Task = void (*)(void* ctx, int part, int parts);

  static ThreadPool& instance() {
    // Never destroyed: workers may still be asleep when static destructors
    // run, and nothing may tear the pool down under a late caller.
    alignas(ThreadPool) static unsigned char storage[sizeof(ThreadPool)];
    static ThreadPool* pool = new (storage) ThreadPool();
    return *pool;
  }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  /// Sets the pool size (callers + workers). Waits for a running region.
  void set_threads(int n) {
    KILN_CHECK(n >= 1, "set_cpu_threads(" << n << "): need at least one thread");
    std::lock_guard<std::mutex> config(config_m_);
    lock_busy();
    stop_workers();
    threads_.store(n, std::memory_order_relaxed);
    busy_.store(false, std::memory_order_release);
  }

  /// Runs task on `parts` parts (1 <= parts <= threads()); returns when all
  /// finished, rethrowing the first exception a part threw.
  void run(Task task, void* ctx, int parts) {
    if (parts <= 1 || in_region() || !try_lock_busy()) {
      RegionGuard g;
      for (int p = 0; p < parts; ++p) task(ctx, p, parts);  // serially, same partition
      return;
    }
    if (parts > threads()) parts = threads();
    start_workers_locked();
    task_ = task;
    ctx_ = ctx;
    parts_ = parts;
    error_ = nullptr;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(m_);
      cv_.notify_all();
    }
    {
      RegionGuard g;
      run_part(0);
    }
    // Wait for the workers: spin (they finish within microseconds of us on
    // a balanced split), yielding now and then in case one was descheduled.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if ((spins & 255) == 255) std::this_thread::yield();
      else cpu_relax();
    }
    std::exception_ptr err = error_;
    busy_.store(false, std::memory_order_release);
    if (err) std::rethrow_exception(err);
  }

  /// True on a thread currently running a part of a region.
  static bool& in_region() {
    static thread_local bool flag = false;
    return flag;
  }

 private:
  ThreadPool() : threads_(available_cpus()) {}

  struct RegionGuard {
    bool was;
    RegionGuard() : was(in_region()) { in_region() = true; }
    ~RegionGuard() { in_region() = was; }
  };

  bool try_lock_busy() {
    bool expected = false;
    return busy_.compare_exchange_strong(expected, true, std::memory_order_acquire);
  }
  void lock_busy() {
    while (!try_lock_busy()) std::this_thread::yield();
  }

  void run_part(int part) {
    if (part >= parts_) return;
    try {
      task_(ctx_, part, parts_);
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  // Called with busy_ held: creates threads() - 1 workers if missing.
  void start_workers_locked() {
    const int want = threads() - 1;
    if (static_cast<int>(workers_.size()) == want) return;
    stop_workers();
    stop_ = false;
    // The epoch now, not when the thread gets to run: a worker must not miss
    // the region about to start.
    const uint64_t now = epoch_.load(std::memory_order_relaxed);
    for (int w = 0; w < want; ++w) workers_.emplace_back([this, w, now] { worker_loop(w + 1, now); });
  }

  // Called with busy_ held (no region running).
  void stop_workers() {
    if (workers_.empty()) return;
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      epoch_.fetch_add(1, std::memory_order_seq_cst);
      cv_.notify_all();
    }
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
  }

  void worker_loop(int part, uint64_t seen) {
    for (;;) {
      // Spin about 100 µs for the next region, then sleep.
      uint64_t e = seen;
      auto start = std::chrono::steady_clock::now();
      for (int spins = 0;; ++spins) {
        e = epoch_.load(std::memory_order_acquire);
        if (e != seen) break;
        if ((spins & 63) == 63 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinMicros))
          break;
        cpu_relax();
      }
      if (e == seen) {
        std::unique_lock<std::mutex> lk(m_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return epoch_.load(std::memory_order_seq_cst) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        e = epoch_.load(std::memory_order_acquire);
      }
      seen = e;
      {
        std::lock_guard<std::mutex> lk(m_);
        if (stop_) return;
      }
      {
        RegionGuard g;
        run_part(part);
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static constexpr int kSpinMicros = 100;

  std::atomic<int> threads_;
  std::atomic<bool> busy_{false};
  std::mutex config_m_;
  std::vector<std::thread> workers_;
  // The region being run (written before epoch_ is bumped, read after).
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int parts_ = 1;
  std::exception_ptr error_;
  std::mutex error_m_;
  alignas(64) std::atomic<uint64_t> epoch_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by m_
};

}  // namespace detail

/// CPUs this process may run on: its affinity mask (a container's cpuset or
/// mpirun's binding), not the machine's core count; at least 1.
inline int available_cpus() { return detail::available_cpus(); }

/// Threads the CPU ops use (the caller plus the pool's workers). Defaults to
/// the CPUs in this process's affinity mask; the trainer sets it from the
/// config's `threads` through set_cpu_threads (runtime/blas.h).
inline int cpu_pool_threads() { return detail::ThreadPool::instance().threads(); }

/// Sets the pool size (>= 1); workers are (re)started on the next region.
inline void set_cpu_pool_threads(int n) { detail::ThreadPool::instance().set_threads(n); }

/// Part p of [0, n) split into `parts` contiguous ranges: [begin, end).
inline int64_t split_begin(int64_t n, int parts, int p) { return n / parts * p + std::min<int64_t>(p, n % parts); }

/// Parts parallel_for would use for n items at least min_per_part each.
inline int parallel_parts(int64_t n, int64_t min_per_part) {
  if (min_per_part < 1) min_per_part = 1;
  const int64_t by_work = n / min_per_part;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cpu_pool_threads(), by_work)));
}

/// fn(part, parts) on `parts` threads at once (part 0 on the caller).
template <typename Fn>
void parallel_run(int parts, Fn&& fn) {
  if (parts <= 1) {
    fn(0, 1);
    return;
  }
  using F = std::remove_reference_t<Fn>;
  detail::ThreadPool::instance().run(
      [](void* ctx, int part, int n) { (*static_cast<F*>(ctx))(part, n); }, const_cast<void*>(static_cast<const void*>(&fn)),
      parts);
}

/// fn(lo, hi) over [0, n) in contiguous parts of at least min_per_part items
/// (one part, on the caller, when n < 2·min_per_part): the static partition
/// described at the top of this file.
template <typename Fn>
void parallel_for(int64_t n, int64_t min_per_part, Fn&& fn) {
  if (n <= 0) return;
  const int parts = parallel_parts(n, min_per_part);
  if (parts == 1) {
    fn(int64_t{0}, n);
    return;
  }
  parallel_run(parts, [&](int p, int np) {
    const int64_t lo = split_begin(n, np, p), hi = split_begin(n, np, p + 1);
    if (lo < hi) fn(lo, hi);
  });
}

}  // namespace kiln
