#include "runtime/allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/philox.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"
#include "tests/harness/harness.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {
namespace {

constexpr size_t kMiB = size_t(1) << 20;

cudaStream_t fake_stream(uintptr_t id) { return reinterpret_cast<cudaStream_t>(id); }

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << part << "' not found in: " << text;
}

TEST(Allocator, RoundSizeClasses) {
  EXPECT_EQ(CachingAllocator::round_size(0), 0u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(kMiB), kMiB);
  EXPECT_EQ(CachingAllocator::round_size(kMiB + 1), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::round_size(3 * kMiB), 4 * kMiB);
  EXPECT_EQ(CachingAllocator::round_size(4 * kMiB), 4 * kMiB);
}

TEST(Allocator, ReusesFreedBlocksOnTheSameStream) {
  CachingAllocator a(make_host_backing());
  void* p = a.allocate(1000);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  std::memset(p, 1, 1000);
  a.free(p);
  void* q = a.allocate(900);  // same 1024-byte class
  EXPECT_EQ(p, q);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.backing_allocs, 1u);
  EXPECT_EQ(s.cache_hits, 1u);
  EXPECT_EQ(s.in_use, 1024u);
  a.free(q);
  EXPECT_EQ(a.stats().in_use, 0u);
  EXPECT_EQ(a.stats().reserved, 1024u);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_EQ(a.stats().backing_frees, 1u);
}

TEST(Allocator, DoesNotReuseAcrossStreams) {
  CachingAllocator a(make_host_backing());
  void* p = a.allocate(4096, fake_stream(0x100));
  a.free(p);
  void* q = a.allocate(4096, fake_stream(0x200));
  EXPECT_NE(p, q);
  EXPECT_EQ(a.stats().backing_allocs, 2u);
  void* r = a.allocate(4096, fake_stream(0x100));
  EXPECT_EQ(p, r);
  a.free(q);
  a.free(r);
}

TEST(Allocator, BestFitWithBoundedWaste) {
  CachingAllocator a(make_host_backing());
  void* big = a.allocate(8 * kMiB);
  a.free(big);
  void* small = a.allocate(2 * kMiB);  // 8 MiB is > 25% too large: a fresh block
  EXPECT_NE(small, big);
  void* close = a.allocate(7 * kMiB);  // rounds to 8 MiB: reuses
  EXPECT_EQ(close, big);
  a.free(small);
  a.free(close);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
}

TEST(Allocator, StatsReturnToBaselineAfter1000Cycles) {
  CachingAllocator a(make_host_backing());
  const AllocatorStats base = a.stats();
  size_t reserved_after_first = 0;
  for (int cycle = 0; cycle < 1000; ++cycle) {
    std::vector<void*> ps;
    for (int j = 0; j < 6; ++j) {
      // The same varied sizes each cycle: 1 B .. ~3 MiB.
      const size_t bytes = 1 + (philox4x32(7, static_cast<uint64_t>(j)).v[0] % (3 * kMiB));
      ps.push_back(a.allocate(bytes));
    }
    for (void* p : ps) a.free(p);
    if (cycle == 0) reserved_after_first = a.stats().reserved;
    EXPECT_EQ(a.stats().in_use, base.in_use);
  }
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.in_use, base.in_use);
  EXPECT_EQ(s.reserved, reserved_after_first) << "the cache grew although the pattern repeats";
  EXPECT_EQ(s.backing_allocs, 6u);
  EXPECT_EQ(s.cache_hits, 6u * 999u);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, base.reserved);
  EXPECT_EQ(a.stats().backing_frees, a.stats().backing_allocs);
}

TEST(Allocator, TensorsReturnMemoryToTheProcessAllocator) {
  CachingAllocator& a = allocator_for(Device::cpu());
  const AllocatorStats base = a.stats();
  for (int i = 0; i < 1000; ++i) {
    Tensor t = Tensor::empty(Shape{1 + i % 37, 129}, DType::f32, Device::cpu(), "cycle");
    Tensor v = t.view(3, Shape{5});
    (void)v;
  }
  EXPECT_EQ(a.stats().in_use, base.in_use);
}

TEST(Allocator, OomMessageNamesTheNumbersAndTheAllocatorStaysUsable) {
  CachingAllocator a(make_host_backing(8 * kMiB));
  void* held = a.allocate(4 * kMiB);
  void* cached = a.allocate(2 * kMiB);
  a.free(cached);  // 2 MiB now sits in the cache
  try {
    a.allocate(6 * kMiB);
    FAIL() << "6 MiB fit in an 8 MiB limit with 4 MiB held";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "out of memory"));
    EXPECT_TRUE(contains(msg, "requested 6.00 MiB (6291456 bytes)"));
    EXPECT_TRUE(contains(msg, "free on the device: 4.00 MiB (4194304 bytes)"));
    EXPECT_TRUE(contains(msg, "in use 4.00 MiB (4194304 bytes)"));
    EXPECT_TRUE(contains(msg, "reserved 4.00 MiB (4194304 bytes)"));
  }
  // The retry emptied the cache; the held block is intact and more fits.
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.in_use, 4 * kMiB);
  EXPECT_EQ(s.reserved, 4 * kMiB);
  void* more = a.allocate(4 * kMiB);
  ASSERT_NE(more, nullptr);
  std::memset(more, 0, 4 * kMiB);
  a.free(more);
  a.free(held);
  void* all = a.allocate(8 * kMiB);  // needs the cache emptied again, transparently
  EXPECT_NE(all, nullptr);
  a.free(all);
}

TEST(Allocator, OomRetryEmptiesOtherStreamsCache) {
  CachingAllocator a(make_host_backing(8 * kMiB));
  void* p = a.allocate(6 * kMiB, fake_stream(1));
  a.free(p);
  // Another stream cannot take the cached block; only emptying the cache
  // leaves room.
  void* q = a.allocate(4 * kMiB, fake_stream(2));
  EXPECT_NE(q, nullptr);
  EXPECT_EQ(a.stats().backing_frees, 1u);
  a.free(q);
}

TEST(Allocator, HugeRequestsAreOutOfMemory) {
  CachingAllocator a(make_host_backing());
  EXPECT_THROW(a.allocate(~size_t(0) / 2), OutOfMemory);
  EXPECT_THROW(a.allocate(~size_t(0)), OutOfMemory);
  void* p = a.allocate(100);
  EXPECT_NE(p, nullptr);
  a.free(p);
}

TEST(Allocator, ZeroBytesAndNull) {
  CachingAllocator a(make_host_backing());
  EXPECT_EQ(a.allocate(0), nullptr);
  a.free(nullptr);
  EXPECT_EQ(a.stats().backing_allocs, 0u);
}

TEST(Allocator, FreeingForeignPointersIsAnError) {
  CachingAllocator a(make_host_backing());
  int x = 0;
  EXPECT_THROW(a.free(&x), Error);
  void* p = a.allocate(10);
  a.free(p);
  EXPECT_THROW(a.free(p), Error);  // double free
}

TEST(Allocator, BypassModeGoesToTheBackingEveryTime) {
  CachingAllocator a(make_host_backing(), /*caching=*/false);
  EXPECT_FALSE(a.caching());
  for (int i = 0; i < 10; ++i) {
    void* p = a.allocate(1000);
    EXPECT_EQ(a.stats().in_use, 1000u);  // exact sizes, no rounding
    a.free(p);
  }
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.backing_allocs, 10u);
  EXPECT_EQ(s.backing_frees, 10u);
  EXPECT_EQ(s.reserved, 0u);
  EXPECT_EQ(s.cache_hits, 0u);
}

// KILN_NO_CACHING_ALLOCATOR is read once per process, so the check runs in a
// fresh child process (the threadsafe death-test style re-executes the binary).
TEST(Allocator, EnvironmentSwitchBypassesTheProcessAllocators) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("KILN_NO_CACHING_ALLOCATOR", "1", 1);
        CachingAllocator& a = allocator_for(Device::cpu());
        void* p = a.allocate(1000);
        a.free(p);
        const AllocatorStats s = a.stats();
        std::exit(!a.caching() && s.backing_frees == 1 && s.reserved == 0 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "KILN_NO_CACHING_ALLOCATOR=1");
  EXPECT_TRUE(allocator_for(Device::cpu()).caching());  // this process was started without it
}

TEST(Allocator, PeaksAndReset) {
  CachingAllocator a(make_host_backing());
  void* p = a.allocate(kMiB);
  void* q = a.allocate(kMiB);
  a.free(p);
  a.free(q);
  EXPECT_EQ(a.stats().peak_in_use, 2 * kMiB);
  a.reset_peak();
  EXPECT_EQ(a.stats().peak_in_use, 0u);
  EXPECT_EQ(a.stats().peak_reserved, 2 * kMiB);
}

TEST(Allocator, RecordStreamOnTheHostKeepsBlocksReusable) {
  CachingAllocator a(make_host_backing());
  void* p = a.allocate(4096, fake_stream(1));
  a.record_stream(p, fake_stream(2));  // the host backing has no events
  a.free(p);
  EXPECT_EQ(a.allocate(4096, fake_stream(1)), p);
  a.free(p);
  EXPECT_THROW(a.record_stream(p, fake_stream(2)), Error);  // not live
}

TEST(PinnedBuffer, AllocatesMovesAndFrees) {
  PinnedBuffer b(12345);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(b.size(), 12345u);
  EXPECT_EQ(b.pinned(), cuda_available());
  std::memset(b.data(), 7, b.size());
  PinnedBuffer c(std::move(b));
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(static_cast<unsigned char*>(c.data())[12344], 7);
  PinnedBuffer d;
  d = std::move(c);
  EXPECT_EQ(d.size(), 12345u);
  EXPECT_EQ(PinnedBuffer(0).data(), nullptr);
}

// --- GPU ---------------------------------------------------------------------

TEST(AllocatorGpu, ReuseAndStatsBackToBaseline) {
  KILN_REQUIRE_GPU();
  CachingAllocator a(make_cuda_backing(0));
  const cudaStream_t s = compute_stream(Device::cuda(0));
  const size_t sizes[5] = {kMiB / 2, 2 * kMiB, 4 * kMiB, 6 * kMiB, 8 * kMiB};
  for (int cycle = 0; cycle < 1000; ++cycle) {
    void* p = a.allocate(sizes[cycle % 5], s);
    void* q = a.allocate(777, s);
    a.free(q);
    a.free(p);
    EXPECT_EQ(a.stats().in_use, 0u);
  }
  const AllocatorStats st = a.stats();
  EXPECT_EQ(st.backing_allocs, 6u);  // the 5 classes of p + the one of q
  EXPECT_EQ(st.cache_hits, 2000u - 6u);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
}

TEST(AllocatorGpu, OomMessageAndStillUsable) {
  KILN_REQUIRE_GPU();
  CachingAllocator a(make_cuda_backing(0));
  void* held = a.allocate(64 * kMiB);
  const size_t too_much = a.backing().free_bytes() + (size_t(64) << 30);
  try {
    a.allocate(too_much);
    FAIL() << "allocating more than the GPU has succeeded";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "out of memory on cuda:0"));
    EXPECT_TRUE(contains(msg, "(" + std::to_string(too_much) + " bytes)"));
    EXPECT_TRUE(contains(msg, "free on the device"));
    EXPECT_TRUE(contains(msg, "in use 64.00 MiB"));
    EXPECT_TRUE(contains(msg, "reserved 64.00 MiB"));
  }
  void* p = a.allocate(kMiB);  // still usable, and CUDA's error state is clear
  EXPECT_NE(p, nullptr);
#if KILN_WITH_CUDA
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
#endif
  Tensor t = Tensor::full(Shape{1000}, 3.0, DType::f32, Device::cuda(0));
  EXPECT_EQ(t.to_vector()[999], 3.0f);
  a.free(p);
  a.free(held);
}

TEST(AllocatorGpu, RecordStreamDefersReuseUntilTheOtherStreamIsDone) {
  KILN_REQUIRE_GPU();
  CachingAllocator a(make_cuda_backing(0));
  Stream s1(Device::cuda(0)), s2(Device::cuda(0));
  void* p = a.allocate(kMiB, s1.get());
  a.record_stream(p, s2.get());
  a.free(p);
  s2.synchronize();
  void* q = a.allocate(kMiB, s1.get());  // s2 is idle: the event has completed
  EXPECT_EQ(p, q);
  a.free(q);
}

TEST(PinnedBufferGpu, IsPageLocked) {
  KILN_REQUIRE_GPU();
  PinnedBuffer b(1 << 20);
  EXPECT_TRUE(b.pinned());
#if KILN_WITH_CUDA
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, b.data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
#endif
}

}  // namespace
}  // namespace kiln
