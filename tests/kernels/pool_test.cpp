// Pooling over NHWC images: the CPU references checked on hand-computed
// cases (argmax, ties, NaN, both average-pool divisors), against brute force
// over odd shapes (windows, strides, padding, 1-pixel images, primes), by
// finite differences of every backward, float-vs-double; the CUDA launchers
// against the CPU references in fp32 and bf16 (max-pool bit for bit), and
// run-to-run bit equality.
#include "kernels/pool.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;
using test::random_uniform_f64;

PoolShape shape(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t s, int64_t p) {
  PoolShape ps;
  ps.n = n; ps.h = h; ps.w = w; ps.c = c;
  ps.kh = ps.kw = k;
  ps.sh = ps.sw = s;
  ps.ph = ps.pw = p;
  return ps;
}

std::string str(const PoolShape& s) {
  return "(" + std::to_string(s.n) + ", " + std::to_string(s.h) + ", " + std::to_string(s.w) + ", " +
         std::to_string(s.c) + ") k" + std::to_string(s.kh) + "x" + std::to_string(s.kw) + " s" +
         std::to_string(s.sh) + "x" + std::to_string(s.sw) + " p" + std::to_string(s.ph) + "x" + std::to_string(s.pw);
}

std::vector<PoolShape> shapes() {
  std::vector<PoolShape> v = {shape(1, 1, 1, 1, 1, 1, 0),  shape(2, 4, 4, 3, 2, 2, 0),  shape(3, 7, 5, 33, 2, 2, 0),
                              shape(2, 9, 9, 5, 3, 2, 1),  shape(1, 13, 11, 31, 3, 1, 1), shape(2, 5, 5, 1, 5, 1, 2),
                              shape(4, 28, 28, 32, 2, 2, 0), shape(0, 4, 4, 3, 2, 2, 0),  shape(2, 6, 6, 0, 2, 2, 0),
                              shape(2, 8, 8, 7, 3, 3, 1)};
  PoolShape a = shape(2, 7, 10, 4, 3, 2, 1);  // rectangular window and stride
  a.kw = 2; a.sw = 3; a.pw = 0;
  v.push_back(a);
  return v;
}

// Brute force: max / mean over the window, padding outside the image.
std::vector<double> brute(const PoolShape& s, const std::vector<double>& x, bool max, bool include_pad) {
  std::vector<double> y(s.y_numel());
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t p = 0; p < s.out_h(); ++p)
      for (int64_t q = 0; q < s.out_w(); ++q)
        for (int64_t c = 0; c < s.c; ++c) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t inside = 0, padded = 0;
          for (int64_t r = 0; r < s.kh; ++r)
            for (int64_t t = 0; t < s.kw; ++t) {
              const int64_t ih = p * s.sh - s.ph + r, iw = q * s.sw - s.pw + t;
              if (ih < s.h + s.ph && iw < s.w + s.pw) ++padded;  // inside the padded image
              if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
              const double v = x[((n * s.h + ih) * s.w + iw) * s.c + c];
              best = std::max(best, v);
              sum += v;
              ++inside;
            }
          y[((n * s.out_h() + p) * s.out_w() + q) * s.c + c] =
              max ? best : sum / static_cast<double>(include_pad ? padded : inside);
        }
  return y;
}

// --- CPU references --------------------------------------------------------------

TEST(PoolCpu, MaxPoolHandExample) {
  // One 4x4 channel, 2x2 windows, stride 2; ties: the first (in window order) wins.
  const std::vector<float> x = {1, 5, 2, 2,   //
                                3, 4, 2, 1,   //
                                0, -1, 7, 7,  //
                                -2, -3, 7, 6};
  const PoolShape s = shape(1, 4, 4, 1, 2, 2, 0);
  std::vector<float> y(4);
  std::vector<int32_t> arg(4);
  maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), s);
  EXPECT_EQ(y, (std::vector<float>{5, 2, 0, 7}));
  EXPECT_EQ(arg, (std::vector<int32_t>{1, 2, 8, 10}));
  std::vector<float> dx(16, 9.0f);
  const std::vector<float> dy = {1, 2, 3, 4};
  maxpool2d_backward_cpu(dx.data(), dy.data(), arg.data(), s);
  EXPECT_EQ(dx, (std::vector<float>{0, 1, 2, 0, 0, 0, 0, 0, 3, 0, 4, 0, 0, 0, 0, 0}));
}

TEST(PoolCpu, MaxPoolPropagatesNaNAndIgnoresPadding) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {-5, -6, nan, -1};  // 2x2, one channel
  std::vector<float> y(4);
  std::vector<int32_t> arg(4);
  maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), shape(1, 2, 2, 1, 3, 1, 1));  // 3x3, pad 1: 2x2 out
  EXPECT_TRUE(std::isnan(y[0]) && std::isnan(y[3]));  // every window contains the NaN
  // All-negative pixels: padding (not -inf nor 0) never wins.
  x = {-5, -6, -7, -8};
  maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), shape(1, 2, 2, 1, 3, 1, 1));
  EXPECT_EQ(y, (std::vector<float>{-5, -5, -5, -5}));
}

TEST(PoolCpu, AvgPoolDivisors) {
  // 3x3 window, pad 1 on a 2x2 image of ones: corners hold 4 pixels of a 9-window.
  const std::vector<float> x(4, 1.0f);
  std::vector<float> y(4);
  avgpool2d_forward_cpu(y.data(), x.data(), shape(1, 2, 2, 1, 3, 1, 1), true);
  for (float v : y) EXPECT_FLOAT_EQ(v, 4.0f / 9.0f);
  avgpool2d_forward_cpu(y.data(), x.data(), shape(1, 2, 2, 1, 3, 1, 1), false);
  for (float v : y) EXPECT_FLOAT_EQ(v, 1.0f);
}

TEST(PoolCpu, MatchesBruteForce) {
  uint64_t seed = 1;
  for (const PoolShape& s : shapes()) {
    const std::vector<double> x = random_uniform_f64(s.x_numel(), seed++);
    std::vector<double> y(s.y_numel());
    std::vector<int32_t> arg(s.y_numel());
    maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), s);
    EXPECT_TRUE(all_close(y, brute(s, x, true, false), {0, 0}, "max " + str(s)));
    for (bool pad : {true, false}) {
      avgpool2d_forward_cpu(y.data(), x.data(), s, pad);
      EXPECT_TRUE(all_close(y, brute(s, x, false, pad), {1e-14, 1e-14}, std::string("avg pad=") + (pad ? "1 " : "0 ") + str(s)));
    }
  }
}

TEST(PoolCpu, BackwardsMatchFiniteDifferences) {
  uint64_t seed = 50;
  for (const PoolShape& s : {shape(2, 5, 5, 3, 2, 2, 0), shape(1, 7, 6, 2, 3, 2, 1), shape(2, 4, 4, 2, 3, 1, 1)}) {
    const std::vector<double> x = random_uniform_f64(s.x_numel(), seed++), wl = random_uniform_f64(s.y_numel(), seed++);
    auto weighted = [&](const std::vector<double>& y) {
      double t = 0;
      for (size_t i = 0; i < y.size(); ++i) t += y[i] * wl[i];
      return t;
    };
    std::vector<double> y(s.y_numel()), dx(s.x_numel());
    std::vector<int32_t> arg(s.y_numel());
    maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), s);
    maxpool2d_backward_cpu(dx.data(), wl.data(), arg.data(), s);
    EXPECT_TRUE(test::check_gradient(
        [&](const std::vector<double>& v) {
          std::vector<double> o(s.y_numel());
          maxpool2d_forward_cpu(o.data(), static_cast<int32_t*>(nullptr), v.data(), s);
          return weighted(o);
        },
        x, dx, "maxpool " + str(s)));
    for (bool pad : {true, false}) {
      avgpool2d_backward_cpu(dx.data(), wl.data(), s, pad);
      EXPECT_TRUE(test::check_gradient(
          [&](const std::vector<double>& v) {
            std::vector<double> o(s.y_numel());
            avgpool2d_forward_cpu(o.data(), v.data(), s, pad);
            return weighted(o);
          },
          x, dx, "avgpool " + str(s)));
    }
  }
  // Global average pool.
  const int64_t n = 3, hw = 7, c = 5;
  const std::vector<double> x = random_uniform_f64(n * hw * c, 9), wl = random_uniform_f64(n * c, 10);
  std::vector<double> dx(n * hw * c);
  global_avgpool_backward_cpu(dx.data(), wl.data(), n, hw, c);
  EXPECT_TRUE(test::check_gradient(
      [&](const std::vector<double>& v) {
        std::vector<double> o(n * c);
        global_avgpool_forward_cpu(o.data(), v.data(), n, hw, c);
        double t = 0;
        for (size_t i = 0; i < o.size(); ++i) t += o[i] * wl[i];
        return t;
      },
      x, dx, "global avgpool"));
}

TEST(PoolCpu, FloatMatchesDoubleAndShapeErrors) {
  const PoolShape s = shape(2, 9, 9, 5, 3, 2, 1);
  const std::vector<float> x = random_uniform(s.x_numel(), 3), dy = random_uniform(s.y_numel(), 4);
  const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end());
  std::vector<float> y(s.y_numel()), dx(s.x_numel());
  std::vector<double> yd(s.y_numel()), dxd(s.x_numel());
  avgpool2d_forward_cpu(y.data(), x.data(), s, true);
  avgpool2d_forward_cpu(yd.data(), xd.data(), s, true);
  EXPECT_TRUE(all_close(std::vector<double>(y.begin(), y.end()), yd, {1e-6, 1e-7}, "avg forward"));
  avgpool2d_backward_cpu(dx.data(), dy.data(), s, true);
  avgpool2d_backward_cpu(dxd.data(), dyd.data(), s, true);
  EXPECT_TRUE(all_close(std::vector<double>(dx.begin(), dx.end()), dxd, {1e-6, 1e-7}, "avg backward"));
  EXPECT_THROW(check_pool_shape(shape(1, 4, 4, 1, 2, 2, 2), "t"), Error);  // padding above half the window
  EXPECT_THROW(check_pool_shape(shape(1, 1, 1, 1, 3, 1, 0), "t"), Error);  // window larger than the image
  EXPECT_THROW(check_pool_shape(shape(1, 4, 4, 1, 2, 0, 0), "t"), Error);  // stride 0
  EXPECT_NO_THROW(check_pool_shape(shape(1, 4, 4, 1, 2, 2, 1), "t"));
}

// --- CUDA against the CPU references ------------------------------------------------

#if KILN_WITH_CUDA
template <typename H>
void gpu_case(const PoolShape& s, uint64_t seed) {
  const std::string what = test::storage_name<H>() + " " + str(s);
  const std::vector<float> x = test::representable<H>(random_uniform(s.x_numel(), seed, -3.0f, 3.0f));
  const std::vector<float> dy = test::representable<H>(random_uniform(s.y_numel(), seed + 1));
  std::vector<float> y(s.y_numel()), dx(s.x_numel());
  std::vector<int32_t> arg(s.y_numel());
  test::DeviceBuffer<H> dxin(test::to_storage<H>(x)), ddy(test::to_storage<H>(dy)), dyout(s.y_numel()),
      ddx(s.x_numel());
  test::DeviceBuffer<int32_t> darg(s.y_numel());
  const test::Tolerance tol = std::is_same_v<H, float> ? test::Tolerance{1e-6, 1e-6} : test::storage_tolerance<H>();

  maxpool2d_forward_cpu(y.data(), arg.data(), x.data(), s);
  maxpool2d_backward_cpu(dx.data(), dy.data(), arg.data(), s);
  dyout.poison();
  ddx.poison();
  maxpool2d_forward(dyout.get(), darg.get(), dxin.get(), s, nullptr);
  maxpool2d_backward(ddx.get(), ddy.get(), darg.get(), s, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(dyout.to_host()), y, "maxpool forward " + what));
  EXPECT_EQ(darg.to_host(), arg) << "maxpool argmax " << what;
  // Both sum a pixel's gradients in output order from 0: fp32 agrees bit for bit.
  if (std::is_same_v<H, float>)
    EXPECT_TRUE(test::bitwise_equal(test::to_f32(ddx.to_host()), dx, "maxpool backward " + what));
  else
    EXPECT_TRUE(all_close(test::to_f32(ddx.to_host()), test::representable<H>(dx), tol, "maxpool backward " + what));

  for (bool pad : {true, false}) {
    avgpool2d_forward_cpu(y.data(), x.data(), s, pad);
    avgpool2d_backward_cpu(dx.data(), dy.data(), s, pad);
    avgpool2d_forward(dyout.get(), dxin.get(), s, pad, nullptr);
    avgpool2d_backward(ddx.get(), ddy.get(), s, pad, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(all_close(test::to_f32(dyout.to_host()), y, tol, "avgpool forward " + what));
    EXPECT_TRUE(all_close(test::to_f32(ddx.to_host()), dx, tol, "avgpool backward " + what));
  }
  if (s.h * s.w >= 1) {
    const int64_t hw = s.h * s.w;
    std::vector<float> g(s.n * s.c), gdx(s.x_numel());
    const std::vector<float> gdy = test::representable<H>(random_uniform(s.n * s.c, seed + 2));
    global_avgpool_forward_cpu(g.data(), x.data(), s.n, hw, s.c);
    global_avgpool_backward_cpu(gdx.data(), gdy.data(), s.n, hw, s.c);
    test::DeviceBuffer<H> dg(s.n * s.c), dgdy(test::to_storage<H>(gdy));
    global_avgpool_forward(dg.get(), dxin.get(), s.n, hw, s.c, nullptr);
    global_avgpool_backward(ddx.get(), dgdy.get(), s.n, hw, s.c, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(all_close(test::to_f32(dg.to_host()), g, tol, "global avgpool forward " + what));
    EXPECT_TRUE(all_close(test::to_f32(ddx.to_host()), gdx, tol, "global avgpool backward " + what));
  }
}

TEST(PoolGpu, MatchesCpu) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 100;
  std::vector<PoolShape> all = shapes();
  all.push_back(shape(64, 28, 28, 64, 2, 2, 0));  // ResNet-sized
  all.push_back(shape(16, 14, 14, 128, 3, 2, 1));
  for (const PoolShape& s : all) {
    gpu_case<float>(s, seed += 3);
    gpu_case<bf16>(s, seed += 3);
  }
}

TEST(PoolGpu, RunsAreBitIdentical) {
  KILN_REQUIRE_GPU();
  const PoolShape s = shape(32, 28, 28, 48, 3, 2, 1);
  test::DeviceBuffer<float> x(random_uniform(s.x_numel(), 1)), dy(random_uniform(s.y_numel(), 2));
  test::DeviceBuffer<int32_t> arg(s.y_numel());
  std::vector<std::vector<float>> runs;
  for (int r = 0; r < 2; ++r) {
    test::DeviceBuffer<float> y(s.y_numel()), dx(s.x_numel()), dxa(s.x_numel());
    maxpool2d_forward(y.get(), arg.get(), x.get(), s, nullptr);
    maxpool2d_backward(dx.get(), dy.get(), arg.get(), s, nullptr);
    avgpool2d_backward(dxa.get(), dy.get(), s, true, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> all = y.to_host();
    for (const auto& part : {dx.to_host(), dxa.to_host()}) all.insert(all.end(), part.begin(), part.end());
    runs.push_back(std::move(all));
  }
  EXPECT_TRUE(test::bitwise_equal(runs[0], runs[1], "two runs"));
}
#else
TEST(PoolGpu, MatchesCpu) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
