// Philox: known answers, determinism, CPU == GPU bit for bit, and the
// statistics of the uniform and normal streams.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/fill.h"
#include "runtime/philox.h"
#include "runtime/tensor.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

::testing::AssertionResult same_words(Philox4 got, Philox4 want) {
  for (int i = 0; i < 4; ++i)
    if (got.v[i] != want.v[i])
      return ::testing::AssertionFailure() << "word " << i << ": got 0x" << std::hex << got.v[i] << ", want 0x"
                                           << want.v[i];
  return ::testing::AssertionSuccess();
}

// Random123's published known-answer vectors for Philox4x32-10.
TEST(Philox, KnownAnswers) {
  EXPECT_TRUE(same_words(philox4x32_10({{0, 0, 0, 0}}, 0, 0), {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}));
  EXPECT_TRUE(same_words(philox4x32_10({{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff),
                         {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}));
  EXPECT_TRUE(same_words(philox4x32_10({{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0),
                         {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}));
  // The (seed, counter) form puts the counter in the low words and the seed in the key.
  EXPECT_TRUE(same_words(philox4x32(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull),
                         philox4x32_10({{0x243f6a88, 0x85a308d3, 0, 0}}, 0xa4093822, 0x299f31d0)));
}

TEST(Philox, ElementLayout) {
  const uint64_t seed = 42, offset = 1000;
  for (uint64_t i = 0; i < 16; ++i) {
    const Philox4 r = philox4x32(seed, offset + i / 4);
    EXPECT_EQ(philox_uniform(seed, offset, i), static_cast<float>(r.v[i % 4] >> 8) / 16777216.0f);
  }
  // Normal element i uses counter offset + i/2, words 2(i%2) and 2(i%2)+1.
  const Philox4 r = philox4x32(seed, offset + 3);
  EXPECT_EQ(philox_normal(seed, offset, 7), philox_words_to_normal(r.v[2], r.v[3]));
}

// The polynomials behind Box-Muller against libm, over their whole domain.
TEST(Philox, LogAndSinCosAreAccurate) {
  double worst_log = 0, worst_trig = 0;
  for (uint32_t k = 1; k <= (1u << 24); k += 97) {
    const float u = static_cast<float>(k) / 16777216.0f;
    const double ref = std::log(static_cast<double>(u));
    const double err = std::fabs(kiln_logf(u) - ref);
    worst_log = std::max(worst_log, ref == 0.0 ? err : err / std::max(std::fabs(ref), 1e-3));
    float s, c;
    kiln_sincos_2pi(u, &s, &c);
    const double a = 2.0 * M_PI * static_cast<double>(u);
    worst_trig = std::max({worst_trig, std::fabs(s - std::sin(a)), std::fabs(c - std::cos(a))});
  }
  EXPECT_EQ(kiln_logf(1.0f), 0.0f);
  EXPECT_LT(worst_log, 1e-6) << "relative error of kiln_logf";
  EXPECT_LT(worst_trig, 2e-6) << "absolute error of kiln_sincos_2pi";
}

TEST(Rng, SameSeedSameNumbersDifferentSeedOtherNumbers) {
  const Device c = Device::cpu();
  Tensor a = Tensor::empty(Shape{1001}, DType::f32, c), b = Tensor::empty(Shape{1001}, DType::f32, c);
  a.normal_(5, 0);
  b.normal_(5, 0);
  EXPECT_TRUE(test::bitwise_equal(a.to_vector(), b.to_vector(), "same seed"));
  b.normal_(6, 0);
  EXPECT_FALSE(test::bitwise_equal(a.to_vector(), b.to_vector(), "other seed"));
  b.normal_(5, 1);
  EXPECT_FALSE(test::bitwise_equal(a.to_vector(), b.to_vector(), "other offset"));
}

TEST(Rng, ReturnedOffsetsContinueTheStream) {
  // Split at a multiple of 4: the two fills give exactly the one long fill.
  const Device c = Device::cpu();
  for (bool normal : {false, true}) {
    Tensor whole = Tensor::empty(Shape{100}, DType::f32, c);
    Tensor parts = Tensor::empty(Shape{100}, DType::f32, c);
    Tensor head = parts.view(0, Shape{40}), tail = parts.view(40, Shape{60});
    if (normal) {
      EXPECT_EQ(whole.normal_(9, 10), 10u + 50u);
      const uint64_t next = head.normal_(9, 10);
      EXPECT_EQ(next, 10u + 20u);
      tail.normal_(9, next);
    } else {
      EXPECT_EQ(whole.uniform_(9, 10), 10u + 25u);
      const uint64_t next = head.uniform_(9, 10);
      EXPECT_EQ(next, 10u + 10u);
      tail.uniform_(9, next);
    }
    EXPECT_TRUE(test::bitwise_equal(whole.to_vector(), parts.to_vector(), normal ? "normal" : "uniform"));
  }
  Tensor odd = Tensor::empty(Shape{7}, DType::f32, c);
  EXPECT_EQ(odd.uniform_(1, 0), 2u);
  EXPECT_EQ(odd.normal_(1, 0), 4u);
}

TEST(Rng, FillMatchesThePerElementDefinition) {
  const int64_t n = 1003;
  std::vector<float> u(n), z(n);
  fill_uniform_cpu(u.data(), n, 77, 5, -2.0f, 3.0f);
  fill_normal_cpu(z.data(), n, 77, 5, 1.0f, 0.5f);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(u[i], fmaf(philox_uniform(77, 5, static_cast<uint64_t>(i)), 5.0f, -2.0f)) << i;
    ASSERT_EQ(z[i], fmaf(philox_normal(77, 5, static_cast<uint64_t>(i)), 0.5f, 1.0f)) << i;
  }
  // bf16 and f64 are the float values rounded / widened.
  std::vector<bf16> zb(n);
  std::vector<double> zd(n);
  fill_normal_cpu(zb.data(), n, 77, 5, 1.0f, 0.5f);
  fill_normal_cpu(zd.data(), n, 77, 5, 1.0f, 0.5f);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(zb[i].bits, float_to_bf16(z[i]).bits);
    ASSERT_EQ(zd[i], static_cast<double>(z[i]));
  }
}

struct Moments {
  double mean = 0, var = 0, skew = 0, kurt = 0, min = 1e300, max = -1e300;
};
Moments moments(const std::vector<float>& v) {
  Moments m;
  const double n = static_cast<double>(v.size());
  for (float x : v) {
    m.mean += x;
    m.min = std::min(m.min, static_cast<double>(x));
    m.max = std::max(m.max, static_cast<double>(x));
  }
  m.mean /= n;
  double m2 = 0, m3 = 0, m4 = 0;
  for (float x : v) {
    const double d = x - m.mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m.var = m2 / n;
  m.skew = (m3 / n) / std::pow(m.var, 1.5);
  m.kurt = (m4 / n) / (m.var * m.var);
  return m;
}

TEST(Rng, UniformStatistics) {
  Tensor t = Tensor::empty(Shape{1000000}, DType::f32, Device::cpu());
  t.uniform_(1234, 0);
  const std::vector<float> v = t.to_vector();
  const Moments m = moments(v);
  // Standard error of the mean is sqrt(1/12 / 1e6) = 2.9e-4: allow 5 of them.
  EXPECT_NEAR(m.mean, 0.5, 1.5e-3);
  EXPECT_NEAR(m.var, 1.0 / 12.0, 1e-3);
  EXPECT_GE(m.min, 0.0);
  EXPECT_LT(m.max, 1.0);
  // Each tenth of [0, 1) gets 1e5 ± 5·300 values.
  int bins[10] = {0};
  for (float x : v) ++bins[static_cast<int>(x * 10.0f)];
  for (int b : bins) EXPECT_NEAR(b, 100000, 1500);
  Tensor r = Tensor::empty(Shape{100000}, DType::f32, Device::cpu());
  r.uniform_(1, 0, -3.0f, -1.0f);
  const Moments mr = moments(r.to_vector());
  EXPECT_GE(mr.min, -3.0);
  EXPECT_LE(mr.max, -1.0);
  EXPECT_NEAR(mr.mean, -2.0, 0.01);
}

TEST(Rng, NormalStatistics) {
  Tensor t = Tensor::empty(Shape{1000000}, DType::f32, Device::cpu());
  t.normal_(99, 12345);
  const std::vector<float> v = t.to_vector();
  const Moments m = moments(v);
  EXPECT_NEAR(m.mean, 0.0, 5e-3);   // standard error 1e-3
  EXPECT_NEAR(m.var, 1.0, 7e-3);    // standard error sqrt(2/n) = 1.4e-3
  EXPECT_NEAR(m.skew, 0.0, 0.015);  // standard error sqrt(6/n) = 2.4e-3
  EXPECT_NEAR(m.kurt, 3.0, 0.03);   // standard error sqrt(24/n) = 4.9e-3
  EXPECT_LT(std::max(-m.min, m.max), 6.5);  // u1 >= 2^-24 caps |z| at 5.77
  size_t within1 = 0, within2 = 0;
  for (float x : v) {
    within1 += std::fabs(x) < 1.0f;
    within2 += std::fabs(x) < 2.0f;
  }
  EXPECT_NEAR(within1 / 1e6, 0.682689, 3e-3);
  EXPECT_NEAR(within2 / 1e6, 0.954500, 2e-3);
  // Neighbours are uncorrelated (the two normals of one counter included).
  double c = 0;
  for (size_t i = 0; i + 1 < v.size(); ++i) c += static_cast<double>(v[i]) * v[i + 1];
  EXPECT_NEAR(c / 1e6, 0.0, 5e-3);
  Tensor s = Tensor::empty(Shape{100000}, DType::f32, Device::cpu());
  s.normal_(3, 0, 2.0f, 0.5f);
  const Moments ms = moments(s.to_vector());
  EXPECT_NEAR(ms.mean, 2.0, 0.01);
  EXPECT_NEAR(std::sqrt(ms.var), 0.5, 0.01);
}

// --- GPU ---------------------------------------------------------------------

TEST(RngGpu, CpuAndGpuStreamsAreBitwiseEqual) {
  KILN_REQUIRE_GPU();
  const Device g = Device::cuda(0), c = Device::cpu();
  std::vector<int64_t> sizes = test::standard_sizes();
  sizes.push_back(1000003);
  const uint64_t seeds[] = {0, 1, 0xdeadbeefcafef00dull};
  const uint64_t offsets[] = {0, 3, (uint64_t(1) << 40) + 5};
  for (int64_t n : sizes) {
    for (uint64_t seed : seeds) {
      for (uint64_t off : offsets) {
        for (DType t : {DType::f32, DType::bf16}) {
          const std::string what = "n=" + std::to_string(n) + " seed=" + std::to_string(seed) + " offset=" +
                                   std::to_string(off) + " " + dtype_name(t);
          Tensor hu = Tensor::empty(Shape{n}, t, c), du = Tensor::empty(Shape{n}, t, g);
          EXPECT_EQ(hu.uniform_(seed, off, -0.5f, 2.0f), du.uniform_(seed, off, -0.5f, 2.0f));
          ASSERT_TRUE(test::bitwise_equal(du.to_vector(), hu.to_vector(), "uniform " + what));
          Tensor hn = Tensor::empty(Shape{n}, t, c), dn = Tensor::empty(Shape{n}, t, g);
          EXPECT_EQ(hn.normal_(seed, off, 0.1f, 0.02f), dn.normal_(seed, off, 0.1f, 0.02f));
          ASSERT_TRUE(test::bitwise_equal(dn.to_vector(), hn.to_vector(), "normal " + what));
        }
      }
    }
  }
}

TEST(RngGpu, ViewsDrawTheirOwnStream) {
  KILN_REQUIRE_GPU();
  Tensor d = Tensor::zeros(Shape{64}, DType::f32, Device::cuda(0));
  d.view(7, Shape{33}).normal_(4, 2);
  Tensor h = Tensor::empty(Shape{33}, DType::f32, Device::cpu());
  h.normal_(4, 2);
  std::vector<float> all = d.to_vector();
  EXPECT_TRUE(test::bitwise_equal(std::vector<float>(all.begin() + 7, all.begin() + 40), h.to_vector(), "view"));
  EXPECT_EQ(all[6], 0.0f);
  EXPECT_EQ(all[40], 0.0f);
}

}  // namespace
}  // namespace kiln
