// Global gradient norm and clip scale: CPU reference and CUDA two-pass
// reduction against a double-precision sum; clip scale edge cases; GPU
// determinism; the device-side scale feeding the optimizer.
#include "kernels/norm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/optimizer.h"
#include "runtime/philox.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::random_uniform;

double norm_in_double(const std::vector<std::vector<float>>& ts) {
  double s = 0;
  for (const auto& t : ts)
    for (float x : t) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

std::vector<NormTensor> views(const std::vector<std::vector<float>>& ts) {
  std::vector<NormTensor> v;
  for (const auto& t : ts) v.push_back({t.data(), static_cast<int64_t>(t.size())});
  return v;
}

TEST(NormCpu, MatchesDoubleSum) {
  std::vector<std::vector<float>> ts;
  for (int64_t n : test::standard_sizes()) ts.push_back(random_uniform(n, 10 + n, -3.0f, 3.0f));
  const auto v = views(ts);
  const double want = norm_in_double(ts);
  EXPECT_NEAR(global_norm_cpu(v.data(), static_cast<int64_t>(v.size())), want, 1e-6 * want);
  std::vector<std::vector<double>> td;
  std::vector<NormTensorT<double>> vd;
  for (const auto& t : ts) td.emplace_back(t.begin(), t.end());
  for (const auto& t : td) vd.push_back({t.data(), static_cast<int64_t>(t.size())});
  EXPECT_NEAR(global_norm_cpu(vd.data(), static_cast<int64_t>(vd.size())), want, 1e-12 * want);
}

// Lists long enough to be split over the CPU pool (blocks of 16384, tensors
// that end inside a block, empty ones between): the same norm at 1, 2 and 3
// threads, close to the plain double sum; a NaN in a late block reaches the
// norm and the flag at every thread count.
TEST(NormCpu, SameAtThreadCounts) {
  std::vector<std::vector<float>> ts;
  for (int64_t n : {100000, 0, 1, 16384, 16385, 0, 70001, 5}) ts.push_back(random_uniform(n, 30 + n, -2.0f, 2.0f));
  const auto v = views(ts);
  auto run = [&] {
    return std::vector<float>{global_norm_cpu(v.data(), static_cast<int64_t>(v.size()))};
  };
  EXPECT_TRUE(test::same_at_thread_counts(run, "global_norm_cpu"));
  const double want = norm_in_double(ts);
  EXPECT_NEAR(run()[0], want, 1e-6 * want);
  std::vector<std::vector<double>> td;
  for (const auto& t : ts) td.emplace_back(t.begin(), t.end());
  std::vector<NormTensorT<double>> vd;
  for (const auto& t : td) vd.push_back({t.data(), static_cast<int64_t>(t.size())});
  auto run64 = [&] { return std::vector<double>{global_norm_cpu(vd.data(), static_cast<int64_t>(vd.size()))}; };
  EXPECT_TRUE(test::same_at_thread_counts(run64, "global_norm_cpu f64"));
  EXPECT_NEAR(run64()[0], want, 1e-12 * want);

  ts[6][60000] = NAN;
  const auto vn = views(ts);
  auto run_nan = [&] {
    float norm = 0, scale = 0, flag = 0;
    global_norm_clip_cpu(&norm, &scale, &flag, vn.data(), static_cast<int64_t>(vn.size()), 1.0);
    return std::vector<float>{norm, scale, flag};
  };
  EXPECT_TRUE(test::same_at_thread_counts(run_nan, "global_norm_clip_cpu with NaN"));
  const std::vector<float> r = run_nan();
  EXPECT_TRUE(std::isnan(r[0]));
  EXPECT_EQ(r[1], 1.0f);
  EXPECT_EQ(r[2], 1.0f);
}

TEST(NormCpu, HandComputedAndEmpty) {
  const std::vector<float> a = {3.0f}, b = {0.0f, 4.0f};
  const std::vector<NormTensor> v = {{a.data(), 1}, {nullptr, 0}, {b.data(), 2}};
  EXPECT_EQ(global_norm_cpu(v.data(), 3), 5.0f);
  EXPECT_EQ(global_norm_cpu<float>(nullptr, 0), 0.0f);
  const float nan = NAN;
  const NormTensor bad{&nan, 1};
  EXPECT_TRUE(std::isnan(global_norm_cpu(&bad, 1)));
}

// The CPU counterpart of global_norm_clip: norm, scale computed in double,
// and the non-finite flag raised (never lowered).
TEST(NormCpu, ClipAndNonFiniteFlag) {
  const std::vector<float> a = {3.0f, 4.0f};
  const std::vector<NormTensor> v = {{a.data(), 2}};
  float norm = 0, scale = 0, flag = 0;
  global_norm_clip_cpu(&norm, &scale, &flag, v.data(), 1, 1.0);
  EXPECT_EQ(norm, 5.0f);
  EXPECT_EQ(scale, static_cast<float>(1.0 / (5.0 + 1e-6)));
  EXPECT_EQ(flag, 0.0f);
  global_norm_clip_cpu(&norm, &scale, &flag, v.data(), 1, 0.0);  // clipping off
  EXPECT_EQ(scale, 1.0f);
  const std::vector<float> bad = {1.0f, INFINITY};
  const std::vector<NormTensor> vb = {{a.data(), 2}, {bad.data(), 2}};
  global_norm_clip_cpu(&norm, &scale, &flag, vb.data(), 2, 1.0);
  EXPECT_TRUE(std::isinf(norm));
  EXPECT_EQ(flag, 1.0f);
  global_norm_clip_cpu<float>(&norm, nullptr, &flag, v.data(), 1, 1.0);
  EXPECT_EQ(flag, 1.0f);  // sticky: a finite norm does not lower it
}

TEST(NormCpu, ClipScale) {
  EXPECT_EQ(clip_scale_from_norm(0.5f, 1.0f), 1.0f);           // under the limit: untouched
  EXPECT_EQ(clip_scale_from_norm(0.0f, 1.0f), 1.0f);
  EXPECT_FLOAT_EQ(clip_scale_from_norm(4.0f, 1.0f), 0.25f);    // 1 / (4 + 1e-6)
  EXPECT_EQ(clip_scale_from_norm(4.0f, 1.0f), 1.0f / (4.0f + 1e-6f));
  EXPECT_EQ(clip_scale_from_norm(INFINITY, 1.0f), 0.0f);
  EXPECT_TRUE(std::isnan(clip_scale_from_norm(NAN, 1.0f)));   // as torch.clamp: NaN stays NaN
  EXPECT_NEAR(clip_scale_from_norm(2.0, 1.0), 1.0 / (2.0 + 1e-6), 1e-15);
}

#if KILN_WITH_CUDA
// Tensors as slices of one device array, 0..3 elements apart so some miss
// 16-byte alignment; the gaps hold 1e30, which would blow up the norm if a
// kernel read past a tensor.
struct Layout {
  std::vector<std::vector<float>> host;
  std::vector<int64_t> offsets;
  std::vector<float> flat;
};

Layout make_layout(const std::vector<int64_t>& sizes, uint64_t seed) {
  Layout l;
  int64_t total = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    total += static_cast<int64_t>(k % 4);
    l.offsets.push_back(total);
    total += sizes[k];
  }
  l.flat.assign(total + 1, 1e30f);
  for (size_t k = 0; k < sizes.size(); ++k) {
    l.host.push_back(random_uniform(sizes[k], seed + k, -2.0f, 2.0f));
    std::copy(l.host[k].begin(), l.host[k].end(), l.flat.begin() + l.offsets[k]);
  }
  return l;
}

struct DeviceTensors {
  Layout layout;
  test::DeviceBuffer<float> buf;
  std::vector<NormTensor> views;

  DeviceTensors(const std::vector<int64_t>& sizes, uint64_t seed) : layout(make_layout(sizes, seed)), buf(layout.flat) {
    for (size_t k = 0; k < sizes.size(); ++k) views.push_back({buf.get() + layout.offsets[k], sizes[k]});
  }
  int64_t count() const { return static_cast<int64_t>(views.size()); }
};

float device_norm(const DeviceTensors& d) {
  test::DeviceBuffer<float> norm(1), ws(kNormPartials);
  norm.poison();
  global_norm(norm.get(), d.views.data(), d.count(), ws.get(), nullptr);
  return norm.to_host()[0];
}

std::vector<int64_t> gpu_sizes() {
  std::vector<int64_t> s = test::standard_sizes();
  s.push_back(16384 * 3 + 1);
  s.push_back((1 << 22) + 3);
  return s;
}
#endif

TEST(NormGpu, MatchesDoubleSum) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (int64_t n : gpu_sizes()) {  // one tensor at a time, then all together
    DeviceTensors d({n}, 40 + n);
    const double want = norm_in_double(d.layout.host);
    EXPECT_NEAR(device_norm(d), want, 1e-5 * want + 1e-30) << "n=" << n;
  }
  DeviceTensors all(gpu_sizes(), 50);
  const double want = norm_in_double(all.layout.host);
  EXPECT_NEAR(device_norm(all), want, 1e-5 * want);
  EXPECT_NEAR(global_norm_cpu(views(all.layout.host).data(), all.count()), want, 1e-6 * want);
#endif
}

TEST(NormGpu, ManyTensorsTakeSeveralLaunches) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  std::vector<int64_t> sizes(2 * kNormTensorsPerLaunch + 5);
  for (size_t k = 0; k < sizes.size(); ++k) sizes[k] = static_cast<int64_t>(philox_uniform(9, 0, k) * 100.0f);
  DeviceTensors d(sizes, 60);
  const double want = norm_in_double(d.layout.host);
  EXPECT_NEAR(device_norm(d), want, 1e-5 * want);
#endif
}

TEST(NormGpu, EmptyListGivesZeroAndScaleOne) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  test::DeviceBuffer<float> norm(1), scale(1), ws(kNormPartials);
  norm.poison();
  scale.poison();
  ws.poison();  // stale partials must not leak into the result
  global_norm_clip(norm.get(), scale.get(), nullptr, 0, 1.0f, ws.get(), nullptr);
  EXPECT_EQ(norm.to_host()[0], 0.0f);
  EXPECT_EQ(scale.to_host()[0], 1.0f);
  const std::vector<NormTensor> empties = {{nullptr, 0}, {nullptr, 0}};
  global_norm(norm.get(), empties.data(), 2, ws.get(), nullptr);
  EXPECT_EQ(norm.to_host()[0], 0.0f);
#endif
}

TEST(NormGpu, DeterministicAndClipScaleOnDevice) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  DeviceTensors d(gpu_sizes(), 70);
  test::DeviceBuffer<float> norm(1), scale(1), ws(kNormPartials);
  const float max_norm = 1.0f;
  global_norm_clip(norm.get(), scale.get(), d.views.data(), d.count(), max_norm, ws.get(), nullptr);
  const float n1 = norm.to_host()[0], s1 = scale.to_host()[0];
  global_norm_clip(norm.get(), scale.get(), d.views.data(), d.count(), max_norm, ws.get(), nullptr);
  EXPECT_TRUE(test::bitwise_equal({norm.to_host()[0], scale.to_host()[0]}, {n1, s1}, "norm and scale rerun"));
  EXPECT_EQ(s1, clip_scale_from_norm(n1, max_norm));
  EXPECT_LT(s1, 1.0f);  // these gradients are far above max_norm
  // A generous limit leaves the gradients alone.
  global_norm_clip(norm.get(), scale.get(), d.views.data(), d.count(), 1e9f, ws.get(), nullptr);
  EXPECT_EQ(scale.to_host()[0], 1.0f);
  EXPECT_THROW(global_norm_clip(norm.get(), scale.get(), d.views.data(), d.count(), 0.0f, ws.get(), nullptr), Error);
#endif
}

TEST(NormGpu, ClipScaleFeedsTheOptimizerWithoutHostSync) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  // SGD without momentum: p ← p - lr · scale · g, with scale read on the device.
  const int64_t n = 4097;
  const std::vector<float> p0 = random_uniform(n, 80), g = random_uniform(n, 81, -5.0f, 5.0f);
  test::DeviceBuffer<float> dp(p0), dg(g), norm(1), scale(1), ws(kNormPartials);
  const NormTensor view{dg.get(), n};
  global_norm_clip(norm.get(), scale.get(), &view, 1, 2.0f, ws.get(), nullptr);
  OptimizerTensor t{dp.get(), dg.get(), nullptr, nullptr, nullptr, n, 0.0f};
  SgdConfig cfg;
  cfg.lr = 0.1f;
  cfg.grad_scale_ptr = scale.get();
  sgd_step(&t, 1, cfg, nullptr);
  const float s = scale.to_host()[0];
  const double want_norm = norm_in_double({g});
  EXPECT_NEAR(s, 2.0 / (want_norm + 1e-6), 1e-5 * s);
  const std::vector<float> p = dp.to_host();
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(p[i], p0[i] - 0.1f * (g[i] * s), 1e-6f) << "element " << i;
#endif
}

// Pass 1 and pass 2 apart give the one-call result (what ZeRO-1 runs with
// an all-reduce of the partials between them), and the flag is raised for a
// non-finite norm and never lowered; the optimizer then skips on the device.
TEST(NormGpu, PartialsFinishAndNonFiniteFlagSkipTheStep) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  DeviceTensors d(gpu_sizes(), 90);
  test::DeviceBuffer<float> norm(1), scale(1), flag(std::vector<float>{0.0f}), ws(kNormPartials);
  global_norm_clip(norm.get(), scale.get(), d.views.data(), d.count(), 1.0f, ws.get(), nullptr, flag.get());
  const float n1 = norm.to_host()[0], s1 = scale.to_host()[0];
  EXPECT_EQ(flag.to_host()[0], 0.0f);
  test::DeviceBuffer<float> partials(kNormPartials);
  global_norm_partials(partials.get(), d.views.data(), d.count(), nullptr);
  global_norm_finish(norm.get(), scale.get(), flag.get(), partials.get(), 1.0f, nullptr);
  EXPECT_TRUE(test::bitwise_equal({norm.to_host()[0], scale.to_host()[0]}, {n1, s1}, "two passes apart"));
  global_norm_finish(norm.get(), scale.get(), nullptr, partials.get(), 0.0f, nullptr);
  EXPECT_EQ(scale.to_host()[0], 1.0f);  // clipping off

  const int64_t n = 33;
  std::vector<float> g = random_uniform(n, 91);
  g[7] = NAN;
  const std::vector<float> p0 = random_uniform(n, 92);
  test::DeviceBuffer<float> dg(g), dp(p0);
  const NormTensor view{dg.get(), n};
  global_norm(norm.get(), &view, 1, ws.get(), nullptr, flag.get());
  EXPECT_EQ(flag.to_host()[0], 1.0f);
  OptimizerTensor t{dp.get(), dg.get(), nullptr, nullptr, nullptr, n, 0.0f};
  SgdConfig cfg;
  cfg.lr = 0.1f;
  cfg.skip = flag.get();
  sgd_step(&t, 1, cfg, nullptr);
  EXPECT_TRUE(test::bitwise_equal(dp.to_host(), p0, "skipped SGD step"));
  global_norm(norm.get(), d.views.data(), d.count(), ws.get(), nullptr, flag.get());  // finite again
  EXPECT_EQ(flag.to_host()[0], 1.0f);
#endif
}

}  // namespace
}  // namespace kiln
