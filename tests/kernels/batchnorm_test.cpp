// BatchNorm over NHWC channels: the CPU reference checked for normalization
// (large means: the two-pass variance), unbiased variance, the eval formula,
// the running update, float-vs-double agreement and finite differences of the
// backward; CUDA launchers against the CPU reference in fp32 and bf16 over
// odd shapes (0, 1, primes, channel counts around the 32-channel tile, row
// counts past the 512-slice cap), in-place use, misaligned pointers (the
// scalar path) and run-to-run bit equality.
#include "kernels/batchnorm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;
using test::random_uniform_f64;

constexpr float kEps = 1e-5f;

std::string shape_str(int64_t rows, int64_t C) { return "(" + std::to_string(rows) + ", " + std::to_string(C) + ")"; }

const std::vector<std::pair<int64_t, int64_t>>& shapes() {
  static const std::vector<std::pair<int64_t, int64_t>> s = {
      {0, 3},   {1, 1},     {2, 5},    {7, 31},  {31, 32}, {33, 33},  {127, 16}, {509, 64},
      {1000, 3}, {4097, 7}, {784, 32}, {3, 100}, {5, 0},   {2048, 65}};
  return s;
}

// --- CPU reference -------------------------------------------------------------

TEST(BatchNormCpu, NormalizesEachChannel) {
  for (auto [rows, C] : shapes()) {
    if (rows < 2 || C == 0) continue;
    // A mean of 100 checks the two-pass variance.
    const std::vector<double> x = random_uniform_f64(rows * C, 3 + C, 99.0, 101.0);
    const std::vector<double> w(C, 1.0), b(C, 0.0);
    std::vector<double> y(rows * C), mean(C), rstd(C), varu(C);
    batchnorm_forward_train_cpu(y.data(), mean.data(), rstd.data(), varu.data(), x.data(), w.data(), b.data(), rows, C,
                                0.0f);
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, q = 0, xs = 0, xq = 0;
      for (int64_t r = 0; r < rows; ++r) {
        s += y[r * C + c];
        q += y[r * C + c] * y[r * C + c];
        xs += x[r * C + c];
      }
      const double m = xs / rows;
      for (int64_t r = 0; r < rows; ++r) xq += (x[r * C + c] - m) * (x[r * C + c] - m);
      EXPECT_NEAR(s / rows, 0.0, 1e-9) << shape_str(rows, C);
      EXPECT_NEAR(q / rows, 1.0, 1e-9) << shape_str(rows, C);
      EXPECT_NEAR(mean[c], m, 1e-12) << shape_str(rows, C);
      EXPECT_NEAR(varu[c], xq / (rows - 1), 1e-12) << "unbiased variance " << shape_str(rows, C);
      EXPECT_NEAR(rstd[c], 1.0 / std::sqrt(xq / rows), 1e-9) << shape_str(rows, C);
    }
  }
}

TEST(BatchNormCpu, EvalUsesRunningStatistics) {
  const int64_t rows = 37, C = 5;
  const std::vector<float> x = random_uniform(rows * C, 1), rm = random_uniform(C, 2), rv = random_uniform(C, 3, 0.5f, 2.0f);
  const std::vector<float> w = random_uniform(C, 4), b = random_uniform(C, 5);
  std::vector<float> y(rows * C);
  batchnorm_forward_eval_cpu(y.data(), x.data(), rm.data(), rv.data(), w.data(), b.data(), rows, C, kEps);
  for (int64_t i = 0; i < rows * C; ++i) {
    const int64_t c = i % C;
    EXPECT_NEAR(y[i], (x[i] - rm[c]) / std::sqrt(rv[c] + kEps) * w[c] + b[c], 1e-5) << i;
  }
}

TEST(BatchNormCpu, RunningUpdate) {
  std::vector<float> rm = {1.0f, -2.0f}, rv = {4.0f, 0.5f};
  const std::vector<float> ms = {3.0f, 3.0f}, vs = {6.0f, 2.0f};  // sums over 3 micro-batches
  batchnorm_update_running_cpu(rm.data(), rv.data(), ms.data(), vs.data(), 2, 0.1f, 1.0f / 3.0f);
  EXPECT_NEAR(rm[0], 0.9 * 1.0 + 0.1 * 1.0, 1e-6);
  EXPECT_NEAR(rm[1], 0.9 * -2.0 + 0.1 * 1.0, 1e-6);
  EXPECT_NEAR(rv[0], 0.9 * 4.0 + 0.1 * 2.0, 1e-6);
  EXPECT_NEAR(rv[1], 0.9 * 0.5 + 0.1 * (2.0 / 3.0), 1e-6);
}

TEST(BatchNormCpu, FloatMatchesDouble) {
  for (auto [rows, C] : shapes()) {
    const std::vector<float> x = random_uniform(rows * C, 10 + rows, -2.0f, 3.0f), dy = random_uniform(rows * C, 11);
    const std::vector<float> w = random_uniform(C, 12, 0.5f, 1.5f), b = random_uniform(C, 13);
    std::vector<float> y(rows * C), m(C), r(C), dx(rows * C), dw(C, 0.25f), db(C, -0.5f);
    batchnorm_forward_train_cpu(y.data(), m.data(), r.data(), static_cast<float*>(nullptr), x.data(), w.data(), b.data(),
                                rows, C, kEps);
    batchnorm_backward_cpu(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), m.data(), r.data(), rows, C);
    auto d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    std::vector<double> y2(rows * C), m2(C), r2(C), dx2(rows * C), dw2(C, 0.25), db2(C, -0.5);
    const std::vector<double> xd = d(x), dyd = d(dy), wd = d(w), bd = d(b);
    batchnorm_forward_train_cpu(y2.data(), m2.data(), r2.data(), static_cast<double*>(nullptr), xd.data(), wd.data(),
                                bd.data(), rows, C, kEps);
    batchnorm_backward_cpu(dx2.data(), dw2.data(), db2.data(), dyd.data(), xd.data(), wd.data(), m2.data(), r2.data(),
                           rows, C);
    const std::string what = shape_str(rows, C);
    EXPECT_TRUE(all_close(d(y), y2, {1e-5, 1e-5}, "y " + what));
    EXPECT_TRUE(all_close(d(dx), dx2, {1e-4, 1e-4}, "dx " + what));
    EXPECT_TRUE(all_close(d(dw), dw2, {1e-5, 1e-4}, "dweight " + what));
    EXPECT_TRUE(all_close(d(db), db2, {1e-5, 1e-4}, "dbias " + what));
  }
}

TEST(BatchNormCpu, BackwardMatchesFiniteDifferences) {
  for (auto rc : std::vector<std::pair<int64_t, int64_t>>{{2, 1}, {7, 3}, {33, 5}, {64, 2}}) {
    const int64_t rows = rc.first, C = rc.second;  // lambdas capture these (not structured bindings: C++17)
    const std::vector<double> x = random_uniform_f64(rows * C, 21, -2.0, 2.0), wl = random_uniform_f64(rows * C, 22);
    const std::vector<double> w = random_uniform_f64(C, 23, 0.5, 1.5), b = random_uniform_f64(C, 24);
    auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv, const std::vector<double>& bv) {
      std::vector<double> y(rows * C), m(C), r(C);
      batchnorm_forward_train_cpu(y.data(), m.data(), r.data(), static_cast<double*>(nullptr), xv.data(), wv.data(),
                                  bv.data(), rows, C, kEps);
      double s = 0;
      for (int64_t i = 0; i < rows * C; ++i) s += y[i] * wl[i];
      return s;
    };
    std::vector<double> y(rows * C), m(C), r(C), dx(rows * C), dw(C, 0.0), db(C, 0.0);
    batchnorm_forward_train_cpu(y.data(), m.data(), r.data(), static_cast<double*>(nullptr), x.data(), w.data(),
                                b.data(), rows, C, kEps);
    batchnorm_backward_cpu(dx.data(), dw.data(), db.data(), wl.data(), x.data(), w.data(), m.data(), r.data(), rows, C);
    const std::string what = shape_str(rows, C);
    EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(v, w, b); }, x, dx, "dx " + what));
    EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(x, v, b); }, w, dw, "dw " + what));
    EXPECT_TRUE(test::check_gradient([&](const std::vector<double>& v) { return loss(x, w, v); }, b, db, "db " + what));
  }
}

// --- CUDA against the CPU reference ---------------------------------------------

#if KILN_WITH_CUDA
using test::OffsetBuffer;

template <typename H>
void forward_backward_case(int64_t rows, int64_t C, size_t offset, bool in_place) {
  const std::string what = test::storage_name<H>() + " " + shape_str(rows, C) + " offset " + std::to_string(offset) +
                           (in_place ? " in place" : "");
  const std::vector<float> x = test::representable<H>(random_uniform(rows * C, 100 + C, -2.0f, 3.0f));
  const std::vector<float> dy = test::representable<H>(random_uniform(rows * C, 200 + C));
  const std::vector<float> w = random_uniform(C, 300 + C, 0.5f, 1.5f), b = random_uniform(C, 400 + C);
  std::vector<float> want_y(rows * C), want_m(C), want_r(C), want_v(C), want_dx(rows * C), want_dw(C, 0.5f),
      want_db(C, -0.25f);
  batchnorm_forward_train_cpu(want_y.data(), want_m.data(), want_r.data(), want_v.data(), x.data(), w.data(), b.data(),
                              rows, C, kEps);
  batchnorm_backward_cpu(want_dx.data(), want_dw.data(), want_db.data(), dy.data(), x.data(), w.data(), want_m.data(),
                         want_r.data(), rows, C);

  OffsetBuffer<H> dx_in(test::to_storage<H>(x), offset), ddy(test::to_storage<H>(dy), offset);
  OffsetBuffer<H> dy_out(rows * C, offset), ddx(rows * C, offset);
  test::DeviceBuffer<float> dw(w), db(b), dm(C), dr(C), dv(C), scratch(batchnorm_scratch_floats(rows, C));
  test::DeviceBuffer<float> gw(std::vector<float>(C, 0.5f)), gb(std::vector<float>(C, -0.25f));
  dm.poison();
  dr.poison();
  scratch.poison();
  H* y = in_place ? dx_in.get() : dy_out.get();
  batchnorm_forward_train(y, dm.get(), dr.get(), dv.get(), scratch.get(), dx_in.get(), dw.get(), db.get(), rows, C,
                          kEps, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got_y = test::to_f32(in_place ? dx_in.to_host() : dy_out.to_host());
  const test::Tolerance tol = std::is_same_v<H, float> ? test::Tolerance{1e-4, 1e-4} : test::storage_tolerance<H>();
  EXPECT_TRUE(all_close(got_y, want_y, tol, "y " + what));
  EXPECT_TRUE(all_close(dm.to_host(), want_m, {1e-5, 1e-5}, "mean " + what));
  EXPECT_TRUE(all_close(dr.to_host(), want_r, {1e-4, 0}, "rstd " + what));
  EXPECT_TRUE(all_close(dv.to_host(), want_v, {1e-4, 1e-6}, "var_unbiased " + what));

  // Backward on the original x (re-upload when the forward overwrote it).
  if (in_place) dx_in.upload(test::to_storage<H>(x));
  H* dx = in_place ? ddy.get() : ddx.get();
  batchnorm_backward(dx, gw.get(), gb.get(), scratch.get(), ddy.get(), dx_in.get(), dw.get(), dm.get(), dr.get(), rows,
                     C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got_dx = test::to_f32(in_place ? ddy.to_host() : ddx.to_host());
  EXPECT_TRUE(all_close(got_dx, want_dx, {tol.rtol, tol.atol * 4}, "dx " + what));
  EXPECT_TRUE(all_close(gw.to_host(), want_dw, {1e-3, 1e-3}, "dweight " + what));
  EXPECT_TRUE(all_close(gb.to_host(), want_db, {1e-3, 1e-3}, "dbias " + what));
}

TEST(BatchNormGpu, TrainForwardAndBackwardMatchCpu) {
  KILN_REQUIRE_GPU();
  std::vector<std::pair<int64_t, int64_t>> all = shapes();
  all.push_back({300001, 3});  // past the 512-slice cap: slices of 586 rows
  all.push_back({100352, 32});  // the CNN's first BatchNorm at batch 128
  for (auto [rows, C] : all) {
    forward_backward_case<float>(rows, C, 0, false);
    forward_backward_case<bf16>(rows, C, 0, false);
  }
}

TEST(BatchNormGpu, InPlaceAndMisaligned) {
  KILN_REQUIRE_GPU();
  for (auto [rows, C] : std::vector<std::pair<int64_t, int64_t>>{{33, 64}, {509, 8}, {7, 31}}) {
    forward_backward_case<float>(rows, C, 0, true);
    forward_backward_case<bf16>(rows, C, 0, true);
    forward_backward_case<float>(rows, C, 1, false);
    forward_backward_case<bf16>(rows, C, 1, false);
  }
}

TEST(BatchNormGpu, EvalAndRunningUpdateMatchCpu) {
  KILN_REQUIRE_GPU();
  const int64_t rows = 1001, C = 40;
  const std::vector<float> x = random_uniform(rows * C, 1), rm = random_uniform(C, 2), rv = random_uniform(C, 3, 0.5f, 2.0f);
  const std::vector<float> w = random_uniform(C, 4), b = random_uniform(C, 5);
  std::vector<float> want(rows * C);
  batchnorm_forward_eval_cpu(want.data(), x.data(), rm.data(), rv.data(), w.data(), b.data(), rows, C, kEps);
  test::DeviceBuffer<float> dx(x), drm(rm), drv(rv), dw(w), db(b), dy(rows * C);
  batchnorm_forward_eval(dy.get(), dx.get(), drm.get(), drv.get(), dw.get(), db.get(), rows, C, kEps, nullptr);
  test::DeviceBuffer<bf16> hx(test::to_bf16(x)), hy(rows * C);
  batchnorm_forward_eval(hy.get(), hx.get(), drm.get(), drv.get(), dw.get(), db.get(), rows, C, kEps, nullptr);
  std::vector<float> want16(rows * C);
  const std::vector<float> x16 = test::round_to_bf16(x);
  batchnorm_forward_eval_cpu(want16.data(), x16.data(), rm.data(), rv.data(), w.data(), b.data(), rows, C, kEps);
  const std::vector<float> ms = random_uniform(C, 6), vs = random_uniform(C, 7, 0.0f, 3.0f);
  std::vector<float> rm2 = rm, rv2 = rv;
  batchnorm_update_running_cpu(rm2.data(), rv2.data(), ms.data(), vs.data(), C, 0.1f, 0.5f);
  test::DeviceBuffer<float> dms(ms), dvs(vs);
  batchnorm_update_running(drm.get(), drv.get(), dms.get(), dvs.get(), C, 0.1f, 0.5f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(all_close(dy.to_host(), want, {1e-5, 1e-5}, "eval f32"));
  EXPECT_TRUE(all_close(test::from_bf16(hy.to_host()), want16, test::tolerance_for(DType::bf16), "eval bf16"));
  EXPECT_TRUE(all_close(drm.to_host(), rm2, {1e-6, 1e-6}, "running mean"));
  EXPECT_TRUE(all_close(drv.to_host(), rv2, {1e-6, 1e-6}, "running var"));
}

TEST(BatchNormGpu, RunsAreBitIdentical) {
  KILN_REQUIRE_GPU();
  const int64_t rows = 200003, C = 48;
  const std::vector<float> x = random_uniform(rows * C, 1), dy = random_uniform(rows * C, 2), w = random_uniform(C, 3);
  test::DeviceBuffer<float> dx(x), ddy(dy), dw(w), db(w), scratch(batchnorm_scratch_floats(rows, C));
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    test::DeviceBuffer<float> y(rows * C), m(C), r(C), v(C), gx(rows * C), gw(std::vector<float>(C, 0.0f)),
        gb(std::vector<float>(C, 0.0f));
    batchnorm_forward_train(y.get(), m.get(), r.get(), v.get(), scratch.get(), dx.get(), dw.get(), db.get(), rows, C,
                            kEps, nullptr);
    batchnorm_backward(gx.get(), gw.get(), gb.get(), scratch.get(), ddy.get(), dx.get(), dw.get(), m.get(), r.get(),
                       rows, C, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> all = y.to_host();
    for (const auto& part : {m.to_host(), r.to_host(), v.to_host(), gx.to_host(), gw.to_host(), gb.to_host()})
      all.insert(all.end(), part.begin(), part.end());
    runs.push_back(std::move(all));
  }
  EXPECT_TRUE(test::bitwise_equal(runs[0], runs[1], "two runs"));
}
#else
TEST(BatchNormGpu, TrainForwardAndBackwardMatchCpu) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
