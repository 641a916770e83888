// Fill and cast CPU references on the CPU pool: every value depends on its
// index alone, so the tensors must be identical at 1, 2 and 3 threads,
// including the odd tails of the 4-wide (uniform) and 2-wide (normal) Philox
// blocks. (Their known answers and statistics are in tests/runtime/rng_test.cpp.)
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cast.h"
#include "kernels/fill.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

TEST(FillCastCpu, ResultsDoNotDependOnTheThreadCount) {
  for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{100003}, int64_t{262147}}) {
    EXPECT_TRUE(test::same_at_thread_counts([&] {
      std::vector<float> out(3 * n);
      fill_uniform_cpu(out.data(), n, 42, 7, -2.0f, 3.0f);
      fill_normal_cpu(out.data() + n, n, 42, 9, 0.5f, 2.0f);
      fill_constant_cpu(out.data() + 2 * n, 1.25f, n);
      return out;
    }, "fill n=" + std::to_string(n)));
    EXPECT_TRUE(test::same_at_thread_counts([&] {
      std::vector<double> src(n);
      fill_normal_cpu(src.data(), n, 3, 0, 0.0f, 100.0f);
      std::vector<float> f(n);
      std::vector<bf16> h(n);
      std::vector<int32_t> i(n);
      cast_forward_cpu(src.data(), f.data(), n);
      cast_forward_cpu(f.data(), h.data(), n);
      cast_forward_cpu(src.data(), i.data(), n);
      std::vector<double> out(src);
      for (int64_t k = 0; k < n; ++k) out.push_back(static_cast<double>(f[k]) + bf16_to_float(h[k]) + i[k]);
      return out;
    }, "cast n=" + std::to_string(n)));
  }
}

}  // namespace
}  // namespace kiln
