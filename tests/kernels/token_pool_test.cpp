// Token pooling (cls gather and mean): CPU reference against hand-computed
// values and finite differences, bad windows rejected; CUDA forward and
// backward bit for bit equal to the CPU (fp32 and bf16 storage) over odd
// shapes.
#include "kernels/token_pool.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::random_uniform;

TEST(TokenPoolCpu, HandComputed) {
  // B = 2, T = 3, C = 2.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60};
  std::vector<float> cls(4), mean(4);
  token_pool_forward_cpu(cls.data(), x.data(), 2, 3, 2, 0, 1);
  EXPECT_EQ(cls, (std::vector<float>{1, 2, 10, 20}));
  token_pool_forward_cpu(mean.data(), x.data(), 2, 3, 2, 1, 2);  // tokens 1 and 2
  EXPECT_EQ(mean, (std::vector<float>{4, 5, 40, 50}));
  const std::vector<float> dout = {2, 4, 6, 8};
  std::vector<float> dx(12, -1.0f);
  token_pool_backward_cpu(dx.data(), dout.data(), 2, 3, 2, 1, 2);
  EXPECT_EQ(dx, (std::vector<float>{0, 0, 1, 2, 1, 2, 0, 0, 3, 4, 3, 4}));
  token_pool_backward_cpu(dx.data(), dout.data(), 2, 3, 2, 0, 1);
  EXPECT_EQ(dx, (std::vector<float>{2, 4, 0, 0, 0, 0, 6, 8, 0, 0, 0, 0}));
}

TEST(TokenPoolCpu, BackwardMatchesFiniteDifferences) {
  struct W {
    int64_t B, T, C, first, count;
  };
  for (const W& k : {W{3, 5, 4, 0, 1}, W{2, 7, 3, 1, 6}, W{1, 1, 1, 0, 1}, W{4, 6, 5, 0, 6}, W{2, 9, 2, 3, 4}}) {
    const size_t n = static_cast<size_t>(k.B * k.T * k.C);
    const std::vector<double> x = test::random_uniform_f64(n, 7 + n), w = test::random_uniform_f64(k.B * k.C, 8);
    std::vector<double> dx(n, 5.0);  // written, not accumulated
    token_pool_backward_cpu(dx.data(), w.data(), k.B, k.T, k.C, k.first, k.count);
    auto loss = [&](const std::vector<double>& v) {
      std::vector<double> out(k.B * k.C);
      token_pool_forward_cpu(out.data(), v.data(), k.B, k.T, k.C, k.first, k.count);
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
      return l;
    };
    EXPECT_TRUE(test::check_gradient(loss, x, dx,
                                     "pool dx T " + std::to_string(k.T) + " window " + std::to_string(k.first) + "+" +
                                         std::to_string(k.count)));
  }
}

TEST(TokenPoolCpu, RejectsBadWindows) {
  std::vector<float> x(12), out(4);
  EXPECT_THROW(token_pool_forward_cpu(out.data(), x.data(), 2, 3, 2, 0, 0), Error);
  EXPECT_THROW(token_pool_forward_cpu(out.data(), x.data(), 2, 3, 2, 2, 2), Error);
  EXPECT_THROW(token_pool_backward_cpu(x.data(), out.data(), 2, 3, 2, -1, 1), Error);
  EXPECT_THROW(token_pool_forward_cpu(out.data(), x.data(), 2, 0, 2, 0, 1), Error);
  EXPECT_NO_THROW(token_pool_forward_cpu(out.data(), x.data(), 0, 3, 2, 0, 3));  // empty batch
}

#if KILN_WITH_CUDA
struct Case {
  int64_t B, T, C, first, count;
};

std::string case_str(const Case& k) {
  return "(B " + std::to_string(k.B) + ", T " + std::to_string(k.T) + ", C " + std::to_string(k.C) + ", window " +
         std::to_string(k.first) + "+" + std::to_string(k.count) + ")";
}

template <typename H>
void check_gpu(const Case& k) {
  const size_t n = static_cast<size_t>(k.B * k.T * k.C);
  const std::vector<float> x = test::representable<H>(random_uniform(n, 40 + n));
  const std::vector<float> dout = test::representable<H>(random_uniform(k.B * k.C, 41));
  std::vector<float> want(k.B * k.C), want_dx(n);
  token_pool_forward_cpu(want.data(), x.data(), k.B, k.T, k.C, k.first, k.count);
  token_pool_backward_cpu(want_dx.data(), dout.data(), k.B, k.T, k.C, k.first, k.count);
  test::DeviceBuffer<H> dx_in(test::to_storage<H>(x)), dout_in(test::to_storage<H>(dout)), out(want.size()),
      dx(n);
  out.poison();
  dx.poison();
  const std::string what = test::storage_name<H>() + " " + case_str(k);
  token_pool_forward(out.get(), dx_in.get(), k.B, k.T, k.C, k.first, k.count, nullptr);
  token_pool_backward(dx.get(), dout_in.get(), k.B, k.T, k.C, k.first, k.count, nullptr);
  // Same fp32 sum in the same order and one division; bf16 rounds it as representable() does.
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(out.to_host()), test::representable<H>(want), "forward " + what));
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(dx.to_host()), test::representable<H>(want_dx), "backward " + what));
}

TEST(TokenPoolGpu, MatchesCpuBitForBit) {
  KILN_REQUIRE_GPU();
  const std::vector<Case> cases = {{1, 1, 1, 0, 1},    {0, 4, 8, 0, 4},     {3, 7, 33, 0, 1},    {3, 7, 33, 1, 6},
                                   {5, 50, 64, 0, 1},  {5, 50, 64, 1, 49},  {256, 49, 96, 0, 49}, {2, 197, 768, 0, 1},
                                   {7, 31, 509, 2, 29}};
  for (const Case& k : cases) {
    check_gpu<float>(k);
    check_gpu<bf16>(k);
  }
}
#endif

}  // namespace
}  // namespace kiln
