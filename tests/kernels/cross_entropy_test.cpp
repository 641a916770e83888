// Fused softmax cross-entropy: CPU reference checked against known values,
// the softmax reference, finite differences, ignore_index, a padded
// vocabulary, all-ignored batches and bad targets; CUDA launchers against the
// CPU reference in fp32 and bf16 for vocabularies of 1 to 50304 columns,
// padded and not, misaligned, forward-only, and run-to-run determinism.
#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/softmax.h"
#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::all_close;
using test::check_gradient;
using test::random_uniform;
using test::random_uniform_f64;

std::string shape_str(int64_t rows, int64_t V, int64_t Vp) {
  return "(" + std::to_string(rows) + ", V " + std::to_string(V) + ", Vp " + std::to_string(Vp) + ")";
}

/// Targets in [0, V); rows r with r % ignore_every == 1 % ignore_every are
/// ignored (every 5th from row 1 by default; ignore_every = 1: all rows; 0: none).
std::vector<int32_t> make_targets(int64_t rows, int64_t V, uint64_t seed, int64_t ignore_every = 5) {
  std::vector<int32_t> t(rows);
  const std::vector<float> u = random_uniform(rows, seed, 0.0f, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    t[r] = static_cast<int32_t>(std::min<int64_t>(V - 1, static_cast<int64_t>(u[r] * static_cast<float>(V))));
    if (ignore_every > 0 && r % ignore_every == 1 % ignore_every) t[r] = kIgnoreIndex;
  }
  return t;
}

/// (rows, Vp) logits: random in the first V columns, `pad` in the rest.
std::vector<float> make_logits(int64_t rows, int64_t V, int64_t Vp, uint64_t seed, float pad) {
  const std::vector<float> real = random_uniform(rows * V, seed, -8.0f, 8.0f);
  std::vector<float> l(rows * Vp, pad);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < V; ++c) l[r * Vp + c] = real[r * V + c];
  return l;
}

// --- CPU reference -------------------------------------------------------------

TEST(CrossEntropyCpu, UniformLogits) {
  const int64_t rows = 2, V = 10;
  std::vector<float> logits(rows * V, 3.0f), losses(rows);
  const std::vector<int32_t> targets = {4, 9};
  cross_entropy_forward_backward_cpu(logits.data(), losses.data(), targets.data(), rows, V, V, 0.5f);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_NEAR(losses[r], std::log(10.0), 1e-6);
    for (int64_t c = 0; c < V; ++c)
      EXPECT_NEAR(logits[r * V + c], 0.5 * (0.1 - (c == targets[r] ? 1.0 : 0.0)), 1e-7);
  }
}

TEST(CrossEntropyCpu, LossIsMinusLogSoftmax) {
  const int64_t rows = 6, V = 257;
  const std::vector<float> logits = make_logits(rows, V, V, 1, 0.0f);
  const std::vector<int32_t> targets = make_targets(rows, V, 2, 0);
  std::vector<float> probs(rows * V), losses(rows);
  softmax_forward_cpu(probs.data(), logits.data(), rows, V);
  cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), rows, V, V);
  for (int64_t r = 0; r < rows; ++r) EXPECT_NEAR(losses[r], -std::log(probs[r * V + targets[r]]), 1e-5);
}

TEST(CrossEntropyCpu, GradientMatchesFiniteDifferences) {
  for (auto s : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 1}, {1, 2, 2}, {3, 7, 8}, {6, 33, 128}, {4, 130, 256}}) {
    const int64_t rows = std::get<0>(s), V = std::get<1>(s), Vp = std::get<2>(s);  // captured by lambdas (C++17: not as structured bindings)
    const std::vector<double> x = random_uniform_f64(rows * Vp, 10 + V, -3.0, 3.0);
    const std::vector<int32_t> targets = make_targets(rows, V, 11 + V, 3);
    const int64_t valid = cross_entropy_count_valid(targets.data(), rows);
    const float scale = cross_entropy_mean_scale(valid);
    auto loss = [&](const std::vector<double>& v) {  // scale · Σ losses: the mean over valid rows
      std::vector<double> l(rows);
      cross_entropy_forward_cpu(l.data(), v.data(), targets.data(), rows, V, Vp);
      double s = 0;
      for (double e : l) s += e;
      return s * static_cast<double>(scale);
    };
    std::vector<double> grad = x, losses(rows);
    cross_entropy_forward_backward_cpu(grad.data(), losses.data(), targets.data(), rows, V, Vp, scale);
    test::GradCheckOptions opt;
    opt.rtol = 1e-6;
    opt.atol = 1e-9;
    EXPECT_TRUE(check_gradient(loss, x, grad, "dlogits " + shape_str(rows, V, Vp), opt));
  }
}

TEST(CrossEntropyCpu, IgnoredRowsAndPaddingAreNeverRead) {
  const int64_t rows = 5, V = 50, Vp = 128;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> padded = make_logits(rows, V, Vp, 3, nan);  // NaN padding
  std::vector<int32_t> targets = make_targets(rows, V, 4, 2);    // rows 1, 3 ignored
  for (int64_t c = 0; c < Vp; ++c) padded[1 * Vp + c] = nan;     // an ignored row full of NaN
  std::vector<float> compact(rows * V);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < V; ++c) compact[r * V + c] = padded[r * Vp + c];

  std::vector<float> lp(rows), lc(rows);
  cross_entropy_forward_backward_cpu(padded.data(), lp.data(), targets.data(), rows, V, Vp, 0.25f);
  cross_entropy_forward_backward_cpu(compact.data(), lc.data(), targets.data(), rows, V, V, 0.25f);
  EXPECT_EQ(lp, lc);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < V; ++c) EXPECT_EQ(padded[r * Vp + c], compact[r * V + c]) << r << ", " << c;
    for (int64_t c = V; c < Vp; ++c) EXPECT_EQ(padded[r * Vp + c], 0.0f) << "padding gradient " << r << ", " << c;
    if (targets[r] == kIgnoreIndex) {
      EXPECT_EQ(lp[r], 0.0f);
      for (int64_t c = 0; c < V; ++c) EXPECT_EQ(padded[r * Vp + c], 0.0f) << "ignored row gradient";
    }
  }
}

TEST(CrossEntropyCpu, AllIgnoredGivesZerosNotNan) {
  const int64_t rows = 4, V = 9, Vp = 16;
  std::vector<float> logits = make_logits(rows, V, Vp, 5, 1.0f), losses(rows, 7.0f);
  const std::vector<int32_t> targets(rows, kIgnoreIndex);
  const int64_t valid = cross_entropy_count_valid(targets.data(), rows);
  EXPECT_EQ(valid, 0);
  const float scale = cross_entropy_mean_scale(valid);
  EXPECT_EQ(scale, 0.0f);
  cross_entropy_forward_backward_cpu(logits.data(), losses.data(), targets.data(), rows, V, Vp, scale);
  EXPECT_EQ(losses, std::vector<float>(rows, 0.0f));
  EXPECT_EQ(logits, std::vector<float>(rows * Vp, 0.0f));
}

TEST(CrossEntropyCpu, BadTargetsThrowWithoutTouchingLogits) {
  const int64_t rows = 3, V = 5;
  std::vector<float> logits = make_logits(rows, V, V, 6, 0.0f), losses(rows);
  const std::vector<float> before = logits;
  for (int32_t bad : {-1, 5, 1000}) {
    const std::vector<int32_t> targets = {0, 2, bad};
    EXPECT_THROW(cross_entropy_forward_backward_cpu(logits.data(), losses.data(), targets.data(), rows, V, V, 1.0f),
                 Error);
    EXPECT_EQ(logits, before) << "target " << bad;
    EXPECT_THROW(cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), rows, V, V), Error);
  }
  EXPECT_THROW(cross_entropy_forward_cpu(losses.data(), logits.data(), std::vector<int32_t>(3, 0).data(), rows, 0, 0),
               Error);
  EXPECT_THROW(cross_entropy_forward_cpu(losses.data(), logits.data(), std::vector<int32_t>(3, 0).data(), rows, 5, 4),
               Error);
}

TEST(CrossEntropyCpu, ForwardOnlyMatchesFusedAndCustomIgnoreIndex) {
  const int64_t rows = 7, V = 33, Vp = 40;
  std::vector<float> logits = make_logits(rows, V, Vp, 7, -1.0f), losses(rows), fused_losses(rows);
  std::vector<int32_t> targets = make_targets(rows, V, 8, 3);
  cross_entropy_forward_cpu(losses.data(), logits.data(), targets.data(), rows, V, Vp);
  std::vector<float> g = logits;
  cross_entropy_forward_backward_cpu(g.data(), fused_losses.data(), targets.data(), rows, V, Vp, 1.0f);
  EXPECT_EQ(losses, fused_losses);
  // A different ignore_index: -100 is then an error, -1 is ignored.
  for (auto& t : targets)
    if (t == kIgnoreIndex) t = -1;
  std::vector<float> l2(rows);
  cross_entropy_forward_cpu(l2.data(), logits.data(), targets.data(), rows, V, Vp, -1);
  EXPECT_EQ(l2, losses);
  EXPECT_EQ(cross_entropy_count_valid(targets.data(), rows, -1), cross_entropy_count_valid(targets.data(), rows) - 2);
}

// --- CUDA vs CPU ----------------------------------------------------------------

#if KILN_WITH_CUDA
using test::OffsetBuffer;

template <typename H>
void ce_case(int64_t rows, int64_t V, int64_t Vp, size_t offset, int64_t ignore_every = 5) {
  const std::string what = test::storage_name<H>() + " " + shape_str(rows, V, Vp) + " offset " + std::to_string(offset);
  // NaN padding: the kernel must never read it.
  const std::vector<float> logits =
      test::representable<H>(make_logits(rows, V, Vp, 20 + V, std::numeric_limits<float>::quiet_NaN()));
  const std::vector<int32_t> targets = make_targets(rows, V, 21 + V, ignore_every);
  const float scale = cross_entropy_mean_scale(cross_entropy_count_valid(targets.data(), rows));

  std::vector<float> want_grad = logits, want_loss(rows);
  cross_entropy_forward_backward_cpu(want_grad.data(), want_loss.data(), targets.data(), rows, V, Vp, scale);

  OffsetBuffer<H> d_logits(test::to_storage<H>(logits), offset);
  test::DeviceBuffer<int32_t> d_targets(targets);
  test::DeviceBuffer<float> d_loss(rows), d_loss_fwd(rows);
  d_loss.poison();
  d_loss_fwd.poison();
  cross_entropy_forward(d_loss_fwd.get(), d_logits.get(), d_targets.get(), rows, V, Vp, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(d_logits.to_host()), test::to_f32(test::to_storage<H>(logits)),
                                  "forward-only leaves logits alone, " + what));
  cross_entropy_forward_backward(d_logits.get(), d_loss.get(), d_targets.get(), rows, V, Vp, scale, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());

  // Losses are fp32 from the same (representable) logits in both dtypes.
  EXPECT_TRUE(all_close(d_loss.to_host(), want_loss, {1e-5, 1e-5}, "losses " + what));
  EXPECT_TRUE(all_close(d_loss_fwd.to_host(), want_loss, {1e-5, 1e-5}, "forward-only losses " + what));
  const test::Tolerance grad_tol = std::is_same_v<H, float> ? test::Tolerance{2e-5, 1e-9} : test::Tolerance{1.6e-2, 1e-9};
  EXPECT_TRUE(all_close(test::to_f32(d_logits.to_host()), want_grad, grad_tol, "dlogits " + what));
}

int64_t round_up_128(int64_t v) { return (v + 127) / 128 * 128; }

TEST(CrossEntropyGpu, MatchesCpu) {
  KILN_REQUIRE_GPU();
  for (int64_t V : {1, 2, 31, 33, 127, 768, 1000, 4097, 16411, 50257})
    for (int64_t Vp : {V, round_up_128(V)}) {
      if (Vp == V && V == 50257) continue;  // covered below with its padding
      for (int64_t rows : {1, 6, 37}) {
        ce_case<float>(rows, V, Vp, 0);
        ce_case<bf16>(rows, V, Vp, 0);
      }
    }
  // GPT-2's padded vocabulary, and an unpadded one of the same size.
  ce_case<float>(64, 50257, 50304, 0);
  ce_case<bf16>(64, 50257, 50304, 0);
  ce_case<bf16>(9, 50304, 50304, 0);
}

TEST(CrossEntropyGpu, Misaligned) {
  KILN_REQUIRE_GPU();
  for (int64_t V : {3, 33, 1000, 4097, 50257}) {
    ce_case<float>(5, V, V, 1);
    ce_case<bf16>(5, V, V, 1);
    ce_case<bf16>(5, V, round_up_128(V), 1);
  }
}

TEST(CrossEntropyGpu, AllIgnoredAndBadTargets) {
  KILN_REQUIRE_GPU();
  const int64_t rows = 4, V = 50257, Vp = 50304;
  ce_case<float>(rows, V, Vp, 0, 1);  // every row ignored, against the CPU
  // Every row ignored, scale 0: losses and gradients exactly 0, no NaN.
  std::vector<float> logits = make_logits(rows, V, Vp, 30, 1.0f);
  test::DeviceBuffer<bf16> d_logits(test::to_bf16(logits));
  test::DeviceBuffer<int32_t> d_all_ignored(std::vector<int32_t>(rows, kIgnoreIndex));
  test::DeviceBuffer<float> d_loss(rows);
  d_loss.poison();
  cross_entropy_forward_backward(d_logits.get(), d_loss.get(), d_all_ignored.get(), rows, V, Vp,
                                 cross_entropy_mean_scale(0), nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(test::bitwise_equal(d_loss.to_host(), std::vector<float>(rows, 0.0f), "all-ignored losses"));
  EXPECT_TRUE(test::bitwise_equal(test::from_bf16(d_logits.to_host()), std::vector<float>(rows * Vp, 0.0f),
                                  "all-ignored dlogits"));
  // A target outside [0, V) (here inside the padding) gives a NaN loss for its row only.
  const std::vector<int32_t> bad = {3, V + 5, kIgnoreIndex, 0};
  test::DeviceBuffer<float> f_logits(logits);
  test::DeviceBuffer<int32_t> d_bad(bad);
  cross_entropy_forward_backward(f_logits.get(), d_loss.get(), d_bad.get(), rows, V, Vp, 1.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> l = d_loss.to_host();
  EXPECT_FALSE(std::isnan(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
  EXPECT_EQ(l[2], 0.0f);
  EXPECT_FALSE(std::isnan(l[3]));
}

TEST(CrossEntropyGpu, RunsAreBitIdentical) {
  KILN_REQUIRE_GPU();
  const int64_t rows = 64, V = 50257, Vp = 50304;
  const std::vector<float> logits = make_logits(rows, V, Vp, 40, 0.0f);
  const std::vector<int32_t> targets = make_targets(rows, V, 41);
  const float scale = cross_entropy_mean_scale(cross_entropy_count_valid(targets.data(), rows));
  test::DeviceBuffer<int32_t> d_targets(targets);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    test::DeviceBuffer<bf16> b_logits(test::to_bf16(logits));
    test::DeviceBuffer<float> f_logits(logits), b_loss(rows), f_loss(rows);
    cross_entropy_forward_backward(b_logits.get(), b_loss.get(), d_targets.get(), rows, V, Vp, scale, nullptr);
    cross_entropy_forward_backward(f_logits.get(), f_loss.get(), d_targets.get(), rows, V, Vp, scale, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> all = test::from_bf16(b_logits.to_host());
    for (const auto& v : {b_loss.to_host(), f_logits.to_host(), f_loss.to_host()}) all.insert(all.end(), v.begin(), v.end());
    runs.push_back(std::move(all));
  }
  EXPECT_TRUE(test::bitwise_equal(runs[0], runs[1], "two runs"));
}
#else
TEST(CrossEntropyGpu, MatchesCpu) { KILN_REQUIRE_GPU(); }
#endif

// --- CPU threads --------------------------------------------------------------

template <typename T>
void check_cross_entropy_thread_counts(float smoothing) {
  const int64_t rows = 97, V = 1001, Vp = 1024;
  const std::vector<float> lf = random_uniform(rows * Vp, 51, -10.0f, 10.0f);
  const std::vector<T> logits(lf.begin(), lf.end());
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r % 7 == 3 ? kIgnoreIndex : static_cast<int32_t>((r * 37) % V);
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out = logits;
    out.resize(rows * Vp + 2 * rows);
    cross_entropy_forward_cpu(out.data() + rows * Vp + rows, logits.data(), targets.data(), rows, V, Vp,
                              kIgnoreIndex, smoothing);
    cross_entropy_forward_backward_cpu(out.data(), out.data() + rows * Vp, targets.data(), rows, V, Vp, 0.01f,
                                       kIgnoreIndex, smoothing);
    return out;
  }, "cross-entropy, smoothing " + std::to_string(smoothing)));
}

TEST(CrossEntropyCpu, ResultsDoNotDependOnTheThreadCount) {
  for (float smoothing : {0.0f, 0.1f}) {
    check_cross_entropy_thread_counts<float>(smoothing);
    check_cross_entropy_thread_counts<double>(smoothing);
  }
}

}  // namespace
}  // namespace kiln
