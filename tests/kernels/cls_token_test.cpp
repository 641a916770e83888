// Token assembly (class token + position embedding): CPU reference against
// hand-computed values and finite differences for x, cls and pos, with and
// without a class token or positions, accumulation into the gradients, odd
// shapes; CUDA forward and backward bit for bit equal to the CPU (fp32 and
// bf16 storage, aligned and misaligned) and deterministic.
#include "kernels/cls_token.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::random_uniform;
using test::random_uniform_f64;

TEST(ClsTokenCpu, HandComputed) {
  // B = 2, N = 2, C = 2.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, cls = {10, 20}, pos = {100, 200, 300, 400, 500, 600};
  std::vector<float> out(2 * 3 * 2);
  cls_token_forward_cpu(out.data(), x.data(), cls.data(), pos.data(), 2, 2, 2);
  EXPECT_EQ(out, (std::vector<float>{110, 220, 301, 402, 503, 604, 110, 220, 305, 406, 507, 608}));
  std::vector<float> plain(2 * 2 * 2);  // no class token, no positions: a copy
  cls_token_forward_cpu<float>(plain.data(), x.data(), nullptr, nullptr, 2, 2, 2);
  EXPECT_EQ(plain, x);

  const std::vector<float> dout = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  std::vector<float> dx(8, -1.0f), dcls = {1000, 2000}, dpos(6, 0.5f);
  cls_token_backward_cpu(dx.data(), dcls.data(), dpos.data(), dout.data(), 2, 2, 2, true);
  EXPECT_EQ(dx, (std::vector<float>{3, 4, 5, 6, 9, 10, 11, 12}));
  EXPECT_EQ(dcls, (std::vector<float>{1008, 2010}));  // accumulated
  EXPECT_EQ(dpos, (std::vector<float>{8.5, 10.5, 12.5, 14.5, 16.5, 18.5}));
}

// L = Σ w ⊙ out; finite differences for each input.
void check_fd(int64_t B, int64_t N, int64_t C, bool with_cls, bool with_pos, uint64_t seed) {
  const int64_t P = with_cls ? 1 : 0, T = P + N;
  const std::vector<double> x = random_uniform_f64(B * N * C, seed), cls = random_uniform_f64(C, seed + 1),
                            pos = random_uniform_f64(T * C, seed + 2), w = random_uniform_f64(B * T * C, seed + 3);
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& cv, const std::vector<double>& pv) {
    std::vector<double> out(B * T * C);
    cls_token_forward_cpu(out.data(), xv.data(), with_cls ? cv.data() : nullptr, with_pos ? pv.data() : nullptr, B,
                          N, C);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
    return l;
  };
  std::vector<double> dx(x.size(), 0.0), dcls(cls.size(), 0.0), dpos(pos.size(), 0.0);
  cls_token_backward_cpu(dx.data(), with_cls ? dcls.data() : nullptr, with_pos ? dpos.data() : nullptr, w.data(), B,
                         N, C, with_cls);
  const std::string what = "B " + std::to_string(B) + " N " + std::to_string(N) + " C " + std::to_string(C) +
                           (with_cls ? " cls" : "") + (with_pos ? " pos" : "");
  EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(v, cls, pos); }, x, dx,
                                   "dx " + what));
  if (with_cls) {
    EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(x, v, pos); }, cls, dcls,
                                     "dcls " + what));
  }
  if (with_pos) {
    EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(x, cls, v); }, pos, dpos,
                                     "dpos " + what));
  }
}

TEST(ClsTokenCpu, BackwardMatchesFiniteDifferences) {
  check_fd(3, 5, 4, true, true, 1);
  check_fd(2, 7, 3, false, true, 2);
  check_fd(1, 1, 1, true, false, 3);
  check_fd(4, 2, 5, false, false, 4);
}

TEST(ClsTokenCpu, EmptyBatchLeavesGradients) {
  std::vector<float> dcls(3, 1.0f), dpos(3 * 5, 2.0f);
  cls_token_backward_cpu<float>(nullptr, dcls.data(), dpos.data(), nullptr, 0, 4, 3, true);
  EXPECT_EQ(dcls, std::vector<float>(3, 1.0f));
  EXPECT_EQ(dpos, std::vector<float>(15, 2.0f));
}

#if KILN_WITH_CUDA
struct Case {
  int64_t B, N, C;
  bool cls, pos;
};

// C = 1 and odd C (scalar path), C a multiple of 4 but not 8 (vector for
// fp32 only), ViT widths; N = 0 (only the class token), primes.
const std::vector<Case>& gpu_cases() {
  static const std::vector<Case> c = {
      {1, 1, 1, true, true},     {0, 5, 8, true, true},      {2, 0, 8, true, true},     {3, 7, 33, true, true},
      {5, 31, 12, false, true},  {2, 49, 64, true, true},    {256, 49, 64, true, true}, {256, 16, 96, false, true},
      {7, 13, 509, true, false}, {3, 197, 768, true, true},  {4, 3, 5, false, false}};
  return c;
}

std::string case_str(const Case& k) {
  return "(B " + std::to_string(k.B) + ", N " + std::to_string(k.N) + ", C " + std::to_string(k.C) +
         (k.cls ? ", cls" : "") + (k.pos ? ", pos" : "") + ")";
}

template <typename H>
void check_gpu(const Case& k, size_t offset) {
  const int64_t P = k.cls ? 1 : 0, T = P + k.N;
  const std::vector<float> x = test::representable<H>(random_uniform(k.B * k.N * k.C, 30 + k.C));
  const std::vector<float> cls = test::representable<H>(random_uniform(k.C, 31));
  const std::vector<float> pos = test::representable<H>(random_uniform(T * k.C, 32));
  const std::vector<float> dout = test::representable<H>(random_uniform(k.B * T * k.C, 33));
  std::vector<float> want(k.B * T * k.C), want_dx(k.B * k.N * k.C), want_dcls(k.C, 0.25f), want_dpos(T * k.C, 0.5f);
  cls_token_forward_cpu(want.data(), x.data(), k.cls ? cls.data() : nullptr, k.pos ? pos.data() : nullptr, k.B, k.N,
                        k.C);
  cls_token_backward_cpu(want_dx.data(), k.cls ? want_dcls.data() : nullptr, k.pos ? want_dpos.data() : nullptr,
                         dout.data(), k.B, k.N, k.C, k.cls);

  test::OffsetBuffer<H> dx_in(test::to_storage<H>(x), offset), dcls_in(test::to_storage<H>(cls), offset),
      dpos_in(test::to_storage<H>(pos), offset), ddout(test::to_storage<H>(dout), offset),
      dout_fwd(want.size(), offset), ddx(want_dx.size(), offset);
  const std::string what = test::storage_name<H>() + " " + case_str(k) + " offset " + std::to_string(offset);
  cls_token_forward(dout_fwd.get(), dx_in.get(), k.cls ? dcls_in.get() : nullptr, k.pos ? dpos_in.get() : nullptr,
                    k.B, k.N, k.C, nullptr);
  // The same one fp32 add per element; bf16 rounds that sum to nearest even
  // as representable() does.
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(dout_fwd.to_host()), test::representable<H>(want), "forward " + what));

  for (int rep = 0; rep < 2; ++rep) {  // twice: deterministic, and accumulating from the same start
    test::DeviceBuffer<float> gcls(std::vector<float>(k.C, 0.25f)), gpos(std::vector<float>(T * k.C, 0.5f));
    ddx.poison();
    cls_token_backward(ddx.get(), k.cls ? gcls.get() : nullptr, k.pos ? gpos.get() : nullptr, ddout.get(), k.B, k.N,
                       k.C, k.cls, nullptr);
    EXPECT_TRUE(test::bitwise_equal(test::to_f32(ddx.to_host()), want_dx, "dx " + what));
    // The batch sums read bf16 values exactly and add in fp32 in the CPU's order.
    if (k.cls) {
      EXPECT_TRUE(test::bitwise_equal(gcls.to_host(), want_dcls, "dcls " + what));
    }
    if (k.pos) {
      EXPECT_TRUE(test::bitwise_equal(gpos.to_host(), want_dpos, "dpos " + what));
    }
  }
}

TEST(ClsTokenGpu, MatchesCpu) {
  KILN_REQUIRE_GPU();
  for (const Case& k : gpu_cases())
    for (size_t offset : {0, 1}) {
      check_gpu<float>(k, offset);
      check_gpu<bf16>(k, offset);
    }
}
#endif

}  // namespace
}  // namespace kiln
