// LayerNorm: CPU reference checked for normalization, float-vs-double
// agreement, the residual variant and finite differences of the backward;
// CUDA launchers against the CPU reference in fp32 and bf16 over many row
// lengths (warp path, block path, streamed rows, global accumulators),
// misaligned pointers, aliasing, accumulation and run-to-run determinism.
#include "kernels/layernorm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/thread_counts.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::all_close;
using test::check_gradient;
using test::random_uniform;
using test::random_uniform_f64;

constexpr float kEps = 1e-5f;

std::string shape_str(int64_t rows, int64_t C) { return "(" + std::to_string(rows) + ", " + std::to_string(C) + ")"; }

// --- CPU reference -------------------------------------------------------------

TEST(LayerNormCpu, ForwardNormalizesRows) {
  for (int64_t C : test::standard_sizes()) {
    if (C < 2) continue;
    const int64_t rows = 3;
    // A large mean (100) checks the two-pass variance (one-pass E[x²] - E[x]² loses it in float).
    const std::vector<float> x = random_uniform(rows * C, 1, 99.0f, 101.0f);
    const std::vector<float> w(C, 1.0f), b(C, 0.0f);
    std::vector<float> y(rows * C), mean(rows), rstd(rows);
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, 1e-12f);
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, q = 0, xs = 0;
      for (int64_t c = 0; c < C; ++c) {
        s += y[r * C + c];
        q += static_cast<double>(y[r * C + c]) * y[r * C + c];
        xs += x[r * C + c];
      }
      EXPECT_NEAR(s / C, 0.0, 1e-4) << "row mean of y, " << shape_str(rows, C);
      EXPECT_NEAR(q / C, 1.0, 1e-3) << "row variance of y, " << shape_str(rows, C);
      EXPECT_NEAR(mean[r], xs / C, 1e-4) << "saved mean, " << shape_str(rows, C);
    }
  }
}

TEST(LayerNormCpu, ZeroWidthRowsAndNullStats) {
  std::vector<float> mean(2, -1.0f), rstd(2, -1.0f);
  layernorm_forward_cpu<float>(nullptr, mean.data(), rstd.data(), nullptr, nullptr, nullptr, 2, 0, 0.25f);
  EXPECT_EQ(mean[0], 0.0f);
  EXPECT_EQ(rstd[1], 2.0f);  // 1 / sqrt(0 + 0.25)
  // mean/rstd may be null (inference).
  const std::vector<float> x = {1, 2, 3}, w = {1, 1, 1}, b = {0, 0, 0};
  std::vector<float> y(3);
  layernorm_forward_cpu(y.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr), x.data(), w.data(),
                        b.data(), 1, 3, 0.0f);
  EXPECT_NEAR(y[0], -std::sqrt(1.5), 1e-6);
  EXPECT_NEAR(y[1], 0.0, 1e-6);
}

TEST(LayerNormCpu, FloatMatchesDouble) {
  for (int64_t C : test::standard_sizes()) {
    const int64_t rows = 4;
    const std::vector<float> x = random_uniform(rows * C, 2, -2.0f, 3.0f), w = random_uniform(C, 3),
                             b = random_uniform(C, 4);
    std::vector<float> y(rows * C), mean(rows), rstd(rows);
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, kEps);
    std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(b.begin(), b.end());
    std::vector<double> yd(rows * C), meand(rows), rstdd(rows);
    layernorm_forward_cpu(yd.data(), meand.data(), rstdd.data(), xd.data(), wd.data(), bd.data(), rows, C, kEps);
    EXPECT_TRUE(all_close(y, std::vector<float>(yd.begin(), yd.end()), {1e-5, 1e-6}, "y " + shape_str(rows, C)));
    EXPECT_TRUE(all_close(rstd, std::vector<float>(rstdd.begin(), rstdd.end()), {1e-6, 0}, "rstd"));
  }
}

TEST(LayerNormCpu, ResidualIsAddThenNormalize) {
  const int64_t rows = 5, C = 33;
  const std::vector<float> x = random_uniform(rows * C, 5), r = random_uniform(rows * C, 6), w = random_uniform(C, 7),
                           b = random_uniform(C, 8);
  std::vector<float> sum(rows * C), y(rows * C), mean(rows), rstd(rows);
  residual_layernorm_forward_cpu(sum.data(), y.data(), mean.data(), rstd.data(), x.data(), r.data(), w.data(),
                                 b.data(), rows, C, kEps);
  std::vector<float> want_sum(rows * C), want_y(rows * C), want_mean(rows), want_rstd(rows);
  for (int64_t i = 0; i < rows * C; ++i) want_sum[i] = x[i] + r[i];
  layernorm_forward_cpu(want_y.data(), want_mean.data(), want_rstd.data(), want_sum.data(), w.data(), b.data(), rows,
                        C, kEps);
  EXPECT_EQ(sum, want_sum);
  EXPECT_EQ(y, want_y);
  EXPECT_EQ(mean, want_mean);
  EXPECT_EQ(rstd, want_rstd);
  // sum may alias x (the residual stream updated in place).
  std::vector<float> xs = x;
  residual_layernorm_forward_cpu(xs.data(), y.data(), mean.data(), rstd.data(), xs.data(), r.data(), w.data(), b.data(),
                                 rows, C, kEps);
  EXPECT_EQ(xs, want_sum);
}

// L(x, w, b) = Σ LayerNorm(x; w, b) ⊙ u for fixed random u: its gradient is the
// backward at dy = u.
struct LnProblem {
  int64_t rows, C;
  std::vector<double> x, w, b, u;
  LnProblem(int64_t rows_, int64_t C_, uint64_t seed)
      : rows(rows_),
        C(C_),
        x(random_uniform_f64(rows_ * C_, seed, -2.0, 2.0)),
        w(random_uniform_f64(C_, seed + 1, 0.5, 1.5)),
        b(random_uniform_f64(C_, seed + 2)),
        u(random_uniform_f64(rows_ * C_, seed + 3)) {}
  double loss(const std::vector<double>& xv, const std::vector<double>& wv, const std::vector<double>& bv) const {
    std::vector<double> y(rows * C);
    layernorm_forward_cpu<double>(y.data(), nullptr, nullptr, xv.data(), wv.data(), bv.data(), rows, C, kEps);
    double l = 0;
    for (int64_t i = 0; i < rows * C; ++i) l += y[i] * u[i];
    return l;
  }
};

TEST(LayerNormCpu, BackwardMatchesFiniteDifferences) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {1, 2}, {2, 3}, {3, 7}, {4, 33}, {2, 64}};
  for (auto [rows, C] : shapes) {
    LnProblem p(rows, C, 10 + rows * 100 + C);
    std::vector<double> y(rows * C), mean(rows), rstd(rows);
    layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), p.x.data(), p.w.data(), p.b.data(), rows, C, kEps);
    std::vector<double> dx(rows * C), dw(C, 0.0), db(C, 0.0);
    layernorm_backward_cpu<double>(dx.data(), dw.data(), db.data(), p.u.data(), p.x.data(), p.w.data(), mean.data(),
                                   rstd.data(), nullptr, rows, C);
    test::GradCheckOptions opt;
    opt.rtol = 1e-6;
    opt.atol = 1e-8;
    const std::string s = shape_str(rows, C);
    EXPECT_TRUE(check_gradient([&](const std::vector<double>& v) { return p.loss(v, p.w, p.b); }, p.x, dx, "dx " + s,
                               opt));
    EXPECT_TRUE(check_gradient([&](const std::vector<double>& v) { return p.loss(p.x, v, p.b); }, p.w, dw,
                               "dweight " + s, opt));
    EXPECT_TRUE(check_gradient([&](const std::vector<double>& v) { return p.loss(p.x, p.w, v); }, p.b, db,
                               "dbias " + s, opt));
  }
}

TEST(LayerNormCpu, BackwardAccumulatesAndAddsResidualGradient) {
  const int64_t rows = 3, C = 31;
  const std::vector<float> x = random_uniform(rows * C, 20), dy = random_uniform(rows * C, 21),
                           w = random_uniform(C, 22), dres = random_uniform(rows * C, 23);
  std::vector<float> y(rows * C), mean(rows), rstd(rows);
  const std::vector<float> b(C, 0.0f);
  layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, kEps);

  std::vector<float> dx(rows * C), dw(C, 0.0f), db(C, 0.0f);
  layernorm_backward_cpu<float>(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), nullptr, rows, C);
  // += : starting from dw0/db0 adds the same amounts.
  const std::vector<float> dw0 = random_uniform(C, 24), db0 = random_uniform(C, 25);
  std::vector<float> dx2(rows * C), dw2 = dw0, db2 = db0;
  layernorm_backward_cpu<float>(dx2.data(), dw2.data(), db2.data(), dy.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), dres.data(), rows, C);
  std::vector<float> want_dw(C), want_db(C), want_dx(rows * C);
  for (int64_t c = 0; c < C; ++c) {
    want_dw[c] = dw0[c] + dw[c];
    want_db[c] = db0[c] + db[c];
  }
  for (int64_t i = 0; i < rows * C; ++i) want_dx[i] = dx[i] + dres[i];
  EXPECT_TRUE(all_close(dw2, want_dw, {1e-6, 1e-6}, "dweight accumulates"));
  EXPECT_TRUE(all_close(db2, want_db, {1e-6, 1e-6}, "dbias accumulates"));
  EXPECT_TRUE(all_close(dx2, want_dx, {1e-6, 1e-6}, "dx adds dresidual"));
  // dx may alias dresidual and dy.
  std::vector<float> inplace = dres, dw3(C, 0.0f), db3(C, 0.0f);
  layernorm_backward_cpu<float>(inplace.data(), dw3.data(), db3.data(), dy.data(), x.data(), w.data(), mean.data(),
                                rstd.data(), inplace.data(), rows, C);
  EXPECT_EQ(inplace, dx2);
  std::vector<float> dy_inplace = dy;
  std::fill(dw3.begin(), dw3.end(), 0.0f);
  std::fill(db3.begin(), db3.end(), 0.0f);
  layernorm_backward_cpu<float>(dy_inplace.data(), dw3.data(), db3.data(), dy_inplace.data(), x.data(), w.data(),
                                mean.data(), rstd.data(), nullptr, rows, C);
  EXPECT_EQ(dy_inplace, dx);
}

TEST(LayerNormCpu, ScratchSizeDependsOnShapeOnly) {
  EXPECT_EQ(layernorm_backward_partials(0), 1);
  EXPECT_EQ(layernorm_backward_partials(1), 1);
  EXPECT_EQ(layernorm_backward_partials(33), 2);
  EXPECT_EQ(layernorm_backward_partials(8192), 256);
  EXPECT_EQ(layernorm_backward_partials(1 << 20), 1024);
  EXPECT_EQ(layernorm_backward_scratch_floats(8192, 768), 256 * 2 * 768);
}

// --- CUDA vs CPU ----------------------------------------------------------------

#if KILN_WITH_CUDA
using test::OffsetBuffer;

// Row lengths: the harness's list, around the warp/block boundary (a warp
// caches 1024 elements of either dtype), rows past the register cache of a
// 512-thread block (16384 elements: streamed), and rows whose backward
// accumulators exceed shared memory (2·C·4 bytes > 227 KB: C = 30011).
std::vector<int64_t> ln_sizes() {
  std::vector<int64_t> s = test::standard_sizes();
  for (int64_t c : {512, 513, 1024, 1025, 2048, 2049, 16384, 16411, 30011}) s.push_back(c);
  return s;
}

template <typename H>
void forward_case(int64_t rows, int64_t C, size_t offset, bool residual) {
  const std::string what =
      test::storage_name<H>() + (residual ? " residual " : " ") + shape_str(rows, C) + " offset " + std::to_string(offset);
  const std::vector<float> x = test::representable<H>(random_uniform(rows * C, 100 + C, -2.0f, 3.0f));
  const std::vector<float> res = test::representable<H>(random_uniform(rows * C, 200 + C));
  const std::vector<float> w = random_uniform(C, 300 + C, 0.5f, 1.5f), b = random_uniform(C, 400 + C);

  // CPU reference on exactly what the GPU sees: for bf16 the sum is rounded
  // to bf16 before the statistics (as the kernel does).
  std::vector<float> want_sum(rows * C), want_y(rows * C), want_mean(rows), want_rstd(rows);
  for (int64_t i = 0; i < rows * C; ++i) want_sum[i] = residual ? x[i] + res[i] : x[i];
  want_sum = test::representable<H>(want_sum);
  layernorm_forward_cpu(want_y.data(), want_mean.data(), want_rstd.data(), want_sum.data(), w.data(), b.data(), rows,
                        C, kEps);

  OffsetBuffer<H> dx(test::to_storage<H>(x), offset), dres(test::to_storage<H>(res), offset);
  OffsetBuffer<H> dsum(rows * C, offset), dy(rows * C, offset);
  test::DeviceBuffer<float> dw(w), db(b), dmean(rows), drstd(rows);
  dmean.poison();
  drstd.poison();
  if (residual)
    residual_layernorm_forward(dsum.get(), dy.get(), dmean.get(), drstd.get(), dx.get(), dres.get(), dw.get(), db.get(),
                               rows, C, kEps, nullptr);
  else
    layernorm_forward(dy.get(), dmean.get(), drstd.get(), dx.get(), dw.get(), db.get(), rows, C, kEps, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());

  EXPECT_TRUE(all_close(test::to_f32(dy.to_host()), want_y,
                        std::is_same_v<H, float> ? test::Tolerance{2e-5, 1e-5} : test::storage_tolerance<H>(),
                        "y " + what));
  EXPECT_TRUE(all_close(dmean.to_host(), want_mean, {1e-5, 1e-6}, "mean " + what));
  EXPECT_TRUE(all_close(drstd.to_host(), want_rstd, {5e-5, 0}, "rstd " + what));
  if (residual) {
    EXPECT_TRUE(test::bitwise_equal(test::to_f32(dsum.to_host()), want_sum, "sum " + what));
  }
}

TEST(LayerNormGpu, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (int64_t C : ln_sizes())
    for (int64_t rows : {1, 5, 67}) {
      if (C > 4097 && rows > 5) continue;  // keep the long rows quick
      forward_case<float>(rows, C, 0, false);
      forward_case<bf16>(rows, C, 0, false);
    }
}

TEST(LayerNormGpu, ResidualForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (int64_t C : ln_sizes())
    for (int64_t rows : {1, 7}) {
      forward_case<float>(rows, C, 0, true);
      forward_case<bf16>(rows, C, 0, true);
    }
}

TEST(LayerNormGpu, MisalignedPointersTakeTheScalarPath) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {3, 8, 33, 768, 2049, 16411})
    for (bool residual : {false, true}) {
      forward_case<float>(3, C, 1, residual);
      forward_case<bf16>(3, C, 1, residual);
    }
}

TEST(LayerNormGpu, ForwardNullStatsAndInPlace) {
  KILN_REQUIRE_GPU();
  const int64_t rows = 9, C = 768;
  const std::vector<float> x = random_uniform(rows * C, 7), w = random_uniform(C, 8), b = random_uniform(C, 9);
  std::vector<float> want(rows * C);
  layernorm_forward_cpu(want.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr), x.data(), w.data(),
                        b.data(), rows, C, kEps);
  test::DeviceBuffer<float> dx(x), dw(w), db(b);
  layernorm_forward(dx.get(), nullptr, nullptr, dx.get(), dw.get(), db.get(), rows, C, kEps, nullptr);  // y = x
  EXPECT_TRUE(all_close(dx.to_host(), want, {1e-5, 1e-5}, "in-place y, no stats"));
}

template <typename H>
void backward_case(int64_t rows, int64_t C, size_t offset, bool with_dres, bool dx_aliases_dres) {
  const std::string what = test::storage_name<H>() + " " + shape_str(rows, C) + " offset " + std::to_string(offset) +
                           (with_dres ? (dx_aliases_dres ? " dx=dresidual" : " +dresidual") : "");
  const std::vector<float> x = test::representable<H>(random_uniform(rows * C, 500 + C, -2.0f, 2.0f));
  const std::vector<float> dy = test::representable<H>(random_uniform(rows * C, 600 + C));
  const std::vector<float> dres = test::representable<H>(random_uniform(rows * C, 700 + C));
  const std::vector<float> w = random_uniform(C, 800 + C, 0.5f, 1.5f), b(C, 0.0f);
  const std::vector<float> dw0 = random_uniform(C, 900 + C), db0 = random_uniform(C, 1000 + C);
  std::vector<float> y(rows * C), mean(rows), rstd(rows);
  layernorm_forward_cpu(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C, kEps);
  std::vector<float> want_dx(rows * C), want_dw = dw0, want_db = db0;
  layernorm_backward_cpu<float>(want_dx.data(), want_dw.data(), want_db.data(), dy.data(), x.data(), w.data(),
                                mean.data(), rstd.data(), with_dres ? dres.data() : nullptr, rows, C);

  OffsetBuffer<H> d_x(test::to_storage<H>(x), offset), d_dy(test::to_storage<H>(dy), offset);
  OffsetBuffer<H> d_dres(test::to_storage<H>(dres), offset), d_dx(rows * C, offset);
  test::DeviceBuffer<float> d_w(w), d_mean(mean), d_rstd(rstd), d_dw(dw0), d_db(db0);
  test::DeviceBuffer<float> scratch(static_cast<size_t>(layernorm_backward_scratch_floats(rows, C)));
  scratch.poison();
  H* dx_ptr = dx_aliases_dres ? d_dres.get() : d_dx.get();
  layernorm_backward(dx_ptr, d_dw.get(), d_db.get(), scratch.get(), d_dy.get(), d_x.get(), d_w.get(), d_mean.get(),
                     d_rstd.get(), with_dres ? d_dres.get() : nullptr, rows, C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got_dx = test::to_f32(dx_aliases_dres ? d_dres.to_host() : d_dx.to_host());
  EXPECT_TRUE(all_close(got_dx, want_dx,
                        std::is_same_v<H, float> ? test::Tolerance{1e-4, 1e-5} : test::storage_tolerance<H>(),
                        "dx " + what));
  // Inputs are identical (bf16 values are exact in fp32), so the parameter
  // gradients differ only by fp32-vs-double summation, whose error grows
  // like sqrt(rows); a lost or doubled row would be off by O(1).
  const test::Tolerance sum_tol{1e-4, 2e-5 * std::sqrt(static_cast<double>(rows))};
  EXPECT_TRUE(all_close(d_dw.to_host(), want_dw, sum_tol, "dweight " + what));
  EXPECT_TRUE(all_close(d_db.to_host(), want_db, sum_tol, "dbias " + what));
}

TEST(LayerNormGpu, BackwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (int64_t C : ln_sizes())
    for (int64_t rows : {1, 7, 67}) {
      if (C > 4097 && rows > 7) continue;
      backward_case<float>(rows, C, 0, false, false);
      backward_case<bf16>(rows, C, 0, false, false);
    }
  // More rows than 32 · 1024: several rows per group and capped partials.
  backward_case<float>(40000, 33, 0, false, false);
  backward_case<bf16>(33000, 8, 0, false, false);
}

TEST(LayerNormGpu, BackwardResidualGradientAliasingAndMisalignment) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {1, 33, 768, 2049, 16411}) {
    backward_case<float>(5, C, 0, true, false);
    backward_case<bf16>(5, C, 0, true, true);
    backward_case<float>(5, C, 1, true, true);
    backward_case<bf16>(5, C, 1, false, false);
  }
}

TEST(LayerNormGpu, RunsAreBitIdentical) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {768, 4097, 30011}) {
    const int64_t rows = C > 4097 ? 40 : 300;
    const std::vector<float> x = random_uniform(rows * C, 31), dy = random_uniform(rows * C, 32),
                             w = random_uniform(C, 33), b = random_uniform(C, 34);
    test::DeviceBuffer<float> d_x(x), d_dy(dy), d_w(w), d_b(b), d_y(rows * C), d_mean(rows), d_rstd(rows),
        d_dx(rows * C), scratch(static_cast<size_t>(layernorm_backward_scratch_floats(rows, C)));
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
      test::DeviceBuffer<float> d_dw(std::vector<float>(C, 0.0f)), d_db(std::vector<float>(C, 0.0f));
      layernorm_forward(d_y.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(), d_b.get(), rows, C, kEps, nullptr);
      layernorm_backward(d_dx.get(), d_dw.get(), d_db.get(), scratch.get(), d_dy.get(), d_x.get(), d_w.get(),
                         d_mean.get(), d_rstd.get(), nullptr, rows, C, nullptr);
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<float> all = d_y.to_host();
      for (const auto& v : {d_mean.to_host(), d_rstd.to_host(), d_dx.to_host(), d_dw.to_host(), d_db.to_host()})
        all.insert(all.end(), v.begin(), v.end());
      runs.push_back(std::move(all));
    }
    EXPECT_TRUE(test::bitwise_equal(runs[0], runs[1], "two runs, C = " + std::to_string(C)));
  }
}
#else
TEST(LayerNormGpu, ForwardMatchesCpu) { KILN_REQUIRE_GPU(); }
#endif

// --- CPU threads --------------------------------------------------------------

template <typename T>
void check_layernorm_thread_counts() {
  const int64_t rows = 501, C = 193;
  auto vec = [](int64_t n, uint64_t seed, float lo, float hi) {
    const std::vector<float> f = test::random_uniform(n, seed, lo, hi);
    return std::vector<T>(f.begin(), f.end());
  };
  const std::vector<T> x = vec(rows * C, 61, -3.0f, 5.0f), res = vec(rows * C, 62, -1.0f, 1.0f);
  const std::vector<T> w = vec(C, 63, 0.5f, 1.5f), b = vec(C, 64, -0.5f, 0.5f), dy = vec(rows * C, 65, -1.0f, 1.0f);
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    // y, mean, rstd; sum, y2, mean2, rstd2; dx, dweight, dbias
    std::vector<T> out(4 * rows * C + 4 * rows + 2 * C, T(0.25));
    T* p = out.data();
    layernorm_forward_cpu(p, p + rows * C, p + rows * C + rows, x.data(), w.data(), b.data(), rows, C, 1e-5f);
    p += rows * C + 2 * rows;
    residual_layernorm_forward_cpu(p, p + rows * C, p + 2 * rows * C, p + 2 * rows * C + rows, x.data(), res.data(),
                                   w.data(), b.data(), rows, C, 1e-5f);
    const T* sum = p;
    const T* mean = p + 2 * rows * C;
    const T* rstd = mean + rows;
    p += 2 * rows * C + 2 * rows;
    layernorm_backward_cpu(p, p + rows * C, p + rows * C + C, dy.data(), sum, w.data(), mean, rstd, res.data(), rows,
                           C);
    return out;
  }, "layernorm"));
}

TEST(LayerNormCpu, ResultsDoNotDependOnTheThreadCount) {
  check_layernorm_thread_counts<float>();
  check_layernorm_thread_counts<double>();
}

}  // namespace
}  // namespace kiln
