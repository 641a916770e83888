// Label smoothing in the fused cross-entropy (kernels/cross_entropy.h): the
// CPU reference against the smoothed loss written out directly (PyTorch's
// definition), its gradient against finite differences, ε = 0 identical bit
// for bit to the plain call, padded vocabularies and ignored rows; the CUDA
// kernel against the CPU reference in fp32 and bf16.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cross_entropy.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;
using test::random_uniform_f64;

// (1 − ε)·(−log p_t) + ε·mean_c(−log p_c) over the first V columns.
double smoothed_loss(const double* row, int64_t V, int32_t t, double eps) {
  double m = row[0];
  for (int64_t c = 1; c < V; ++c) m = std::max(m, row[c]);
  double s = 0;
  for (int64_t c = 0; c < V; ++c) s += std::exp(row[c] - m);
  const double lse = m + std::log(s);
  double uniform = 0;
  for (int64_t c = 0; c < V; ++c) uniform += (lse - row[c]) / static_cast<double>(V);
  return (1 - eps) * (lse - row[t]) + eps * uniform;
}

TEST(LabelSmoothingCpu, LossMatchesTheDefinitionAndGradientTheDifferences) {
  const int64_t rows = 5, V = 7, Vp = 9;
  const float eps = 0.1f;
  const std::vector<int32_t> targets = {3, kIgnoreIndex, 0, 6, 2};
  const std::vector<double> x0 = random_uniform_f64(rows * Vp, 3, -3.0, 3.0);
  auto total = [&](const std::vector<double>& x) {
    std::vector<double> losses(rows);
    cross_entropy_forward_cpu(losses.data(), x.data(), targets.data(), rows, V, Vp, kIgnoreIndex, eps);
    double t = 0;
    for (double l : losses) t += l;
    return t;
  };
  std::vector<double> losses(rows), g = x0;
  cross_entropy_forward_backward_cpu(g.data(), losses.data(), targets.data(), rows, V, Vp, 1.0f, kIgnoreIndex, eps);
  for (int64_t r = 0; r < rows; ++r) {
    const double want = targets[r] == kIgnoreIndex ? 0.0 : smoothed_loss(x0.data() + r * Vp, V, targets[r], eps);
    EXPECT_NEAR(losses[r], want, 1e-12) << "row " << r;
    for (int64_t c = V; c < Vp; ++c) EXPECT_EQ(g[r * Vp + c], 0.0) << "padding column " << c;
  }
  // Finite differences over the real columns (padding columns have no influence and zero gradient).
  EXPECT_TRUE(test::check_gradient(total, x0, g, "smoothed cross-entropy"));
  // The gradient of each counted row sums to 0 over the vocabulary, as softmax − target distribution.
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < V; ++c) s += g[r * Vp + c];
    EXPECT_NEAR(s, 0.0, 1e-12) << "row " << r;
  }
}

TEST(LabelSmoothingCpu, ZeroIsThePlainLossBitForBit) {
  const int64_t rows = 6, V = 11;
  const std::vector<int32_t> targets = {0, 10, 5, kIgnoreIndex, 3, 7};
  const std::vector<float> x = random_uniform(rows * V, 9, -4.0f, 4.0f);
  std::vector<float> a = x, b = x, la(rows), lb(rows), fa(rows), fb(rows);
  cross_entropy_forward_backward_cpu(a.data(), la.data(), targets.data(), rows, V, V, 0.25f);
  cross_entropy_forward_backward_cpu(b.data(), lb.data(), targets.data(), rows, V, V, 0.25f, kIgnoreIndex, 0.0f);
  EXPECT_TRUE(test::bitwise_equal(a, b, "dlogits"));
  EXPECT_TRUE(test::bitwise_equal(la, lb, "losses"));
  cross_entropy_forward_cpu(fa.data(), x.data(), targets.data(), rows, V, V);
  cross_entropy_forward_cpu(fb.data(), x.data(), targets.data(), rows, V, V, kIgnoreIndex, 0.0f);
  EXPECT_TRUE(test::bitwise_equal(fa, fb, "forward losses"));
  // And the smoothed loss is larger for a confident correct prediction (it is penalized).
  std::vector<float> conf(V, 0.0f), l0(1), l1(1);
  conf[2] = 10.0f;
  const int32_t t2 = 2;
  cross_entropy_forward_cpu(l0.data(), conf.data(), &t2, 1, V, V);
  cross_entropy_forward_cpu(l1.data(), conf.data(), &t2, 1, V, V, kIgnoreIndex, 0.1f);
  EXPECT_GT(l1[0], l0[0]);
}

#if KILN_WITH_CUDA
template <typename H>
void gpu_case(int64_t rows, int64_t V, int64_t Vp, float eps) {
  const std::string what = test::storage_name<H>() + " rows " + std::to_string(rows) + " V " + std::to_string(V);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r % 5 == 4 ? kIgnoreIndex : static_cast<int32_t>((r * 7) % V);
  const std::vector<float> x = test::representable<H>(random_uniform(rows * Vp, 5 + V, -4.0f, 4.0f));
  std::vector<float> want = x, wl(rows), fl(rows);
  cross_entropy_forward_backward_cpu(want.data(), wl.data(), targets.data(), rows, V, Vp, 0.5f, kIgnoreIndex, eps);
  cross_entropy_forward_cpu(fl.data(), x.data(), targets.data(), rows, V, Vp, kIgnoreIndex, eps);
  test::DeviceBuffer<H> dl(test::to_storage<H>(x)), dl2(test::to_storage<H>(x));
  test::DeviceBuffer<float> losses(rows), flosses(rows);
  test::DeviceBuffer<int32_t> dt(targets);
  cross_entropy_forward_backward(dl.get(), losses.get(), dt.get(), rows, V, Vp, 0.5f, nullptr, kIgnoreIndex, eps);
  cross_entropy_forward(flosses.get(), dl2.get(), dt.get(), rows, V, Vp, nullptr, kIgnoreIndex, eps);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const test::Tolerance tol = std::is_same_v<H, float> ? test::Tolerance{1e-4, 1e-6} : test::Tolerance{2e-2, 1e-4};
  EXPECT_TRUE(all_close(test::to_f32(dl.to_host()), test::representable<H>(want), tol, "dlogits " + what));
  EXPECT_TRUE(all_close(losses.to_host(), wl, {1e-4, 1e-5}, "losses " + what));
  EXPECT_TRUE(all_close(flosses.to_host(), fl, {1e-4, 1e-5}, "forward losses " + what));
}

TEST(LabelSmoothingGpu, MatchesCpu) {
  KILN_REQUIRE_GPU();
  for (auto [rows, V, Vp] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{7, 10, 10}, {33, 1000, 1024},
                                                                               {5, 50257, 50304}}) {
    gpu_case<float>(rows, V, Vp, 0.1f);
    gpu_case<bf16>(rows, V, Vp, 0.1f);
    gpu_case<float>(rows, V, Vp, 0.0f);
  }
}
#else
TEST(LabelSmoothingGpu, MatchesCpu) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
