// Dropout: the mask is philox_uniform(seed, offset, i) < 1 - p on both
// backends. CPU: identity at p = 0, zeros at p = 1, kept fraction within
// statistical bounds, exact 1/keep scaling, forward/backward masks equal,
// offset bookkeeping. GPU: bit-identical to the CPU in fp32 and bf16.
#include "kernels/dropout.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/philox.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::random_uniform;

TEST(DropoutCpu, ZeroProbabilityIsIdentity) {
  for (int64_t n : test::standard_sizes()) {
    const std::vector<float> x = random_uniform(n, 1);
    std::vector<float> y(n, -7.0f);
    dropout_forward_cpu(y.data(), x.data(), n, 0.0f, 42, 0);
    EXPECT_TRUE(test::bitwise_equal(y, x, "p=0 n=" + std::to_string(n)));
  }
}

TEST(DropoutCpu, ProbabilityOneDropsEverything) {
  const int64_t n = 1001;
  const std::vector<float> x = random_uniform(n, 2);
  std::vector<float> y(n, -7.0f);
  dropout_forward_cpu(y.data(), x.data(), n, 1.0f, 42, 0);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], 0.0f) << "element " << i;
}

TEST(DropoutCpu, KeptFractionAndScale) {
  const int64_t n = 1 << 20;
  const std::vector<float> x(n, 1.0f);
  for (float p : {0.1f, 0.5f, 0.9f}) {
    std::vector<float> y(n);
    dropout_forward_cpu(y.data(), x.data(), n, p, 1234, 0);
    const float scale = 1.0f / (1.0f - p);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (y[i] != 0.0f) {
        ++kept;
        ASSERT_EQ(y[i], scale) << "p=" << p << " element " << i << " is not x / keep";
      }
    }
    // Binomial(n, 1 - p): 6 standard deviations.
    const double frac = static_cast<double>(kept) / n, keep = 1.0 - p;
    const double sigma = std::sqrt(keep * (1 - keep) / n);
    EXPECT_NEAR(frac, keep, 6 * sigma) << "p=" << p;
    // The mean is preserved in expectation: E[y] = x.
    EXPECT_NEAR(frac * scale, 1.0, 6 * sigma * scale) << "p=" << p;
  }
}

TEST(DropoutCpu, MaskIsThePhiloxDefinition) {
  const int64_t n = 4097;
  const float p = 0.3f;
  const std::vector<float> x(n, 2.0f);
  std::vector<float> y(n);
  dropout_forward_cpu(y.data(), x.data(), n, p, 99, 17);
  for (int64_t i = 0; i < n; ++i) {
    const bool kept = philox_uniform(99, 17, static_cast<uint64_t>(i)) < 1.0f - p;
    ASSERT_EQ(y[i] != 0.0f, kept) << "element " << i;
  }
}

TEST(DropoutCpu, BackwardRegeneratesTheForwardMask) {
  const int64_t n = 3001;
  const float p = 0.25f;
  const std::vector<float> x = random_uniform(n, 3, 0.5f, 1.5f), dy = random_uniform(n, 4, 0.5f, 1.5f);
  std::vector<float> y(n), dx(n);
  dropout_forward_cpu(y.data(), x.data(), n, p, 7, 100);
  dropout_backward_cpu(dx.data(), dy.data(), n, p, 7, 100);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i] != 0.0f, dx[i] != 0.0f) << "element " << i;
    if (dx[i] != 0.0f) {
      ASSERT_EQ(dx[i], dy[i] * (1.0f / 0.75f)) << "element " << i;
    }
  }
  // Another seed or offset gives another mask.
  std::vector<float> other(n);
  dropout_backward_cpu(other.data(), dy.data(), n, p, 8, 100);
  EXPECT_NE(0, std::memcmp(other.data(), dx.data(), n * sizeof(float)));
  dropout_backward_cpu(other.data(), dy.data(), n, p, 7, 101);
  EXPECT_NE(0, std::memcmp(other.data(), dx.data(), n * sizeof(float)));
}

TEST(DropoutCpu, OffsetsChainWithoutOverlap) {
  // Two calls over n and m elements at offset and offset + dropout_counters(n)
  // draw the same numbers as one call over n + m (n a multiple of 4).
  const int64_t n = 1024, m = 333;
  const std::vector<float> x(n + m, 1.0f);
  std::vector<float> whole(n + m), parts(n + m);
  dropout_forward_cpu(whole.data(), x.data(), n + m, 0.5f, 5, 10);
  dropout_forward_cpu(parts.data(), x.data(), n, 0.5f, 5, 10);
  dropout_forward_cpu(parts.data() + n, x.data() + n, m, 0.5f, 5, 10 + dropout_counters(n));
  EXPECT_TRUE(test::bitwise_equal(parts, whole, "chained offsets"));
  EXPECT_EQ(dropout_counters(0), 0u);
  EXPECT_EQ(dropout_counters(1), 1u);
  EXPECT_EQ(dropout_counters(4), 1u);
  EXPECT_EQ(dropout_counters(5), 2u);
}

TEST(DropoutCpu, FloatAndDoubleShareTheMask) {
  const int64_t n = 999;
  const std::vector<float> x(n, 1.0f);
  const std::vector<double> xd(n, 1.0);
  std::vector<float> y(n);
  std::vector<double> yd(n);
  dropout_forward_cpu(y.data(), x.data(), n, 0.4f, 11, 3);
  dropout_forward_cpu(yd.data(), xd.data(), n, 0.4f, 11, 3);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i] != 0.0f, yd[i] != 0.0) << "element " << i;
}

TEST(DropoutCpu, RejectsBadProbability) {
  float x = 1.0f, y = 0.0f;
  EXPECT_THROW(dropout_forward_cpu(&y, &x, 1, -0.1f, 0, 0), Error);
  EXPECT_THROW(dropout_forward_cpu(&y, &x, 1, 1.5f, 0, 0), Error);
  EXPECT_THROW(dropout_backward_cpu(&y, &x, 1, NAN, 0, 0), Error);
}

#if KILN_WITH_CUDA
// The GPU output must equal the CPU reference bit for bit: same mask, same
// fp32 product, same rounding to the storage type.
template <typename H>
void check_matches_cpu(int64_t n, float p, size_t offset, uint64_t seed, uint64_t rng_offset) {
  const std::vector<float> x = test::representable<H>(random_uniform(n, seed, -3.0f, 3.0f));
  std::vector<float> want(n), want_bwd(n);
  dropout_forward_cpu(want.data(), x.data(), n, p, seed, rng_offset);
  dropout_backward_cpu(want_bwd.data(), x.data(), n, p, seed, rng_offset);
  const std::vector<H> want_h = test::to_storage<H>(want);
  test::OffsetBuffer<H> dx(test::to_storage<H>(x), offset), dy(n, offset), dback(n, offset);
  dropout_forward(dy.get(), dx.get(), n, p, seed, rng_offset, nullptr);
  dropout_backward(dback.get(), dx.get(), n, p, seed, rng_offset, nullptr);
  const std::string what = "dropout " + test::storage_name<H>() + " n=" + std::to_string(n) + " p=" +
                           std::to_string(p) + " offset=" + std::to_string(offset);
  const std::vector<H> got = dy.to_host(), got_bwd = dback.to_host();
  ASSERT_EQ(got.size(), want_h.size());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(0, std::memcmp(&got[i], &want_h[i], sizeof(H)))
        << what << ": element " << i << " got " << test::to_f32(std::vector<H>{got[i]})[0] << " want " << want[i];
    ASSERT_EQ(0, std::memcmp(&got_bwd[i], &want_h[i], sizeof(H))) << what << " backward: element " << i;
  }
  // Determinism: a second launch gives the same bits.
  dropout_forward(dback.get(), dx.get(), n, p, seed, rng_offset, nullptr);
  EXPECT_EQ(0, std::memcmp(dback.to_host().data(), got.data(), n * sizeof(H))) << what << " rerun";
}

template <typename H>
void check_all(void) {
  std::vector<int64_t> sizes = test::standard_sizes();
  sizes.push_back((1 << 20) + 7);
  for (int64_t n : sizes)
    for (size_t offset : {size_t{0}, size_t{1}})
      for (float p : {0.0f, 0.1f, 0.5f, 1.0f}) check_matches_cpu<H>(n, p, offset, 1000 + n, 12345);
}
#endif

TEST(DropoutGpu, MatchesCpuBitForBitF32) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  check_all<float>();
#endif
}

TEST(DropoutGpu, MatchesCpuBitForBitBf16) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  check_all<bf16>();
#endif
}

TEST(DropoutGpu, OddRngOffsetsStillMatch) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  // Offsets that are not multiples of anything: each group of 4 still maps
  // to counter offset + i / 4.
  for (uint64_t rng_offset : {uint64_t{1}, uint64_t{3}, uint64_t{0xFFFFFFFFull}, uint64_t{0x123456789ull}})
    check_matches_cpu<float>(4097, 0.3f, 0, 77, rng_offset);
#endif
}

TEST(DropoutGpu, RejectsBadProbability) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  EXPECT_THROW(dropout_forward(static_cast<float*>(nullptr), nullptr, 4, 2.0f, 0, 0, nullptr), Error);
#endif
}

// --- CPU threads --------------------------------------------------------------

TEST(DropoutCpu, ResultsDoNotDependOnTheThreadCount) {
  const int64_t n = 100003;
  const std::vector<float> x = random_uniform(n, 81);
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<float> out(2 * n);
    dropout_forward_cpu(out.data(), x.data(), n, 0.3f, 1234, 77);
    dropout_backward_cpu(out.data() + n, x.data(), n, 0.3f, 1234, 77);
    return out;
  }, "dropout"));
}

}  // namespace
}  // namespace kiln
