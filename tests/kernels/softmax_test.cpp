// Softmax: CPU reference checked for normalization, stability, masked rows,
// float-vs-double agreement and finite differences of the backward; CUDA
// launchers against the CPU reference in fp32 and bf16 for rows of 0 to 50304
// elements (warp path, block path, streamed vocabulary-sized rows),
// misaligned pointers, in-place use and run-to-run determinism.
#include "kernels/softmax.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string shape_str(int64_t rows, int64_t C) { return "(" + std::to_string(rows) + ", " + std::to_string(C) + ")"; }

// --- CPU reference -------------------------------------------------------------

TEST(SoftmaxCpu, RowsArePositiveAndSumToOne) {
  for (int64_t C : test::standard_sizes()) {
    const int64_t rows = 3;
    const std::vector<float> x = random_uniform(rows * C, 1, -5.0f, 5.0f);
    std::vector<float> y(rows * C);
    softmax_forward_cpu(y.data(), x.data(), rows, C);
    for (int64_t r = 0; r < rows && C > 0; ++r) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_GT(y[r * C + c], 0.0f);
        s += y[r * C + c];
      }
      EXPECT_NEAR(s, 1.0, 1e-5) << shape_str(rows, C);
    }
  }
}

TEST(SoftmaxCpu, KnownValuesAndShiftInvariance) {
  const std::vector<float> x = {0.0f, std::log(3.0f)};  // softmax = (1/4, 3/4)
  std::vector<float> y(2);
  softmax_forward_cpu(y.data(), x.data(), 1, 2);
  EXPECT_NEAR(y[0], 0.25f, 1e-7);
  EXPECT_NEAR(y[1], 0.75f, 1e-7);
  // Large logits: exp(1000) overflows unless the max is subtracted.
  const std::vector<float> big = {1000.0f, 1000.0f + std::log(3.0f)};
  softmax_forward_cpu(y.data(), big.data(), 1, 2);
  EXPECT_NEAR(y[0], 0.25f, 1e-4);
  EXPECT_NEAR(y[1], 0.75f, 1e-4);
}

TEST(SoftmaxCpu, MaskedEntriesAndRows) {
  const std::vector<float> x = {1.0f, -kInf, 1.0f, -kInf, -kInf, -kInf};  // rows of 3
  std::vector<float> y(6, 7.0f);
  softmax_forward_cpu(y.data(), x.data(), 2, 3);
  EXPECT_EQ(y, (std::vector<float>{0.5f, 0.0f, 0.5f, 0.0f, 0.0f, 0.0f}));
  const std::vector<float> with_nan = {1.0f, NAN, 2.0f};
  softmax_forward_cpu(y.data(), with_nan.data(), 1, 3);
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(std::isnan(y[c])) << "NaN spreads over its row";
}

TEST(SoftmaxCpu, FloatMatchesDouble) {
  for (int64_t C : test::standard_sizes()) {
    const int64_t rows = 4;
    const std::vector<float> x = random_uniform(rows * C, 2, -8.0f, 8.0f), dy = random_uniform(rows * C, 3);
    std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end());
    std::vector<float> y(rows * C), dx(rows * C);
    std::vector<double> yd(rows * C), dxd(rows * C);
    softmax_forward_cpu(y.data(), x.data(), rows, C);
    softmax_forward_cpu(yd.data(), xd.data(), rows, C);
    EXPECT_TRUE(all_close(y, std::vector<float>(yd.begin(), yd.end()), {1e-5, 1e-9}, "y " + shape_str(rows, C)));
    softmax_backward_cpu(dx.data(), dy.data(), y.data(), rows, C);
    softmax_backward_cpu(dxd.data(), dyd.data(), yd.data(), rows, C);
    // dx = y·(dy - Σ dy·y) cancels where dy ≈ Σ dy·y: float's rounding of y
    // and of the sum is then all that is left, hence the absolute part.
    EXPECT_TRUE(all_close(dx, std::vector<float>(dxd.begin(), dxd.end()), {1e-5, 1e-7}, "dx " + shape_str(rows, C)));
  }
}

TEST(SoftmaxCpu, BackwardMatchesFiniteDifferences) {
  for (auto rc : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 2}, {2, 3}, {3, 7}, {2, 33}, {1, 257}}) {
    const int64_t rows = rc.first, C = rc.second;  // lambdas capture these (not structured bindings: C++17)
    const std::vector<double> x = random_uniform_f64(rows * C, 40 + C, -3.0, 3.0),
                              u = random_uniform_f64(rows * C, 50 + C);
    auto loss = [&](const std::vector<double>& v) {
      std::vector<double> y(rows * C);
      softmax_forward_cpu(y.data(), v.data(), rows, C);
      double l = 0;
      for (int64_t i = 0; i < rows * C; ++i) l += y[i] * u[i];
      return l;
    };
    std::vector<double> y(rows * C), dx(rows * C);
    softmax_forward_cpu(y.data(), x.data(), rows, C);
    softmax_backward_cpu(dx.data(), u.data(), y.data(), rows, C);
    test::GradCheckOptions opt;
    opt.rtol = 1e-6;
    opt.atol = 1e-9;
    EXPECT_TRUE(check_gradient(loss, x, dx, "softmax dx " + shape_str(rows, C), opt));
  }
}

TEST(SoftmaxCpu, InPlace) {
  const int64_t rows = 3, C = 31;
  const std::vector<float> x = random_uniform(rows * C, 9), dy = random_uniform(rows * C, 10);
  std::vector<float> y(rows * C), dx(rows * C);
  softmax_forward_cpu(y.data(), x.data(), rows, C);
  softmax_backward_cpu(dx.data(), dy.data(), y.data(), rows, C);
  std::vector<float> buf = x;
  softmax_forward_cpu(buf.data(), buf.data(), rows, C);
  EXPECT_EQ(buf, y);
  std::vector<float> g = dy;
  softmax_backward_cpu(g.data(), g.data(), y.data(), rows, C);
  EXPECT_EQ(g, dx);
}

// --- CUDA vs CPU ----------------------------------------------------------------

#if KILN_WITH_CUDA
using test::OffsetBuffer;

// The harness's list, the warp/block boundary (1024 elements for both
// dtypes), the limit of a 512-thread block's registers (16384), and
// vocabulary-sized rows, which are streamed.
std::vector<int64_t> softmax_sizes() {
  std::vector<int64_t> s = test::standard_sizes();
  for (int64_t c : {1024, 1025, 16384, 16411, 50257, 50304}) s.push_back(c);
  return s;
}

// Probabilities reach 1/50000 and below: the absolute part must be far
// below that. The backward's absolute part allows for dy ≈ Σ dy·y, where
// dx = y·(dy - Σ dy·y) cancels and only fp32's error in the sum is left.
template <typename H>
test::Tolerance y_tolerance() {
  return std::is_same_v<H, float> ? test::Tolerance{2e-5, 1e-9} : test::Tolerance{1.6e-2, 1e-9};
}
template <typename H>
test::Tolerance dx_tolerance() {
  return std::is_same_v<H, float> ? test::Tolerance{2e-5, 1e-7} : test::Tolerance{1.6e-2, 1e-7};
}

template <typename H>
void softmax_case(int64_t rows, int64_t C, size_t offset, bool in_place, float lo = -8.0f, float hi = 8.0f) {
  const std::string what = test::storage_name<H>() + " " + shape_str(rows, C) + " offset " + std::to_string(offset) +
                           (in_place ? " in place" : "");
  std::vector<float> x = test::representable<H>(random_uniform(rows * C, 60 + C, lo, hi));
  const std::vector<float> dy = test::representable<H>(random_uniform(rows * C, 70 + C));
  // Mask a few entries, and all of the second row when there is one.
  for (int64_t i = 0; i < rows * C; i += 7) x[i] = -kInf;
  if (rows > 1)
    for (int64_t c = 0; c < C; ++c) x[C + c] = -kInf;
  std::vector<float> want_y(rows * C), want_dx(rows * C);
  softmax_forward_cpu(want_y.data(), x.data(), rows, C);
  // The backward takes the GPU's stored y (bf16-rounded), so compare against
  // the CPU backward of that same y.
  OffsetBuffer<H> d_x(test::to_storage<H>(x), offset), d_y(rows * C, offset), d_dy(test::to_storage<H>(dy), offset),
      d_dx(rows * C, offset);
  H* y_ptr = in_place ? d_x.get() : d_y.get();
  softmax_forward(y_ptr, d_x.get(), rows, C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got_y = test::to_f32(in_place ? d_x.to_host() : d_y.to_host());
  EXPECT_TRUE(all_close(got_y, want_y, y_tolerance<H>(), "y " + what));

  softmax_backward_cpu(want_dx.data(), dy.data(), got_y.data(), rows, C);
  H* dx_ptr = in_place ? d_dy.get() : d_dx.get();
  softmax_backward(dx_ptr, d_dy.get(), y_ptr, rows, C, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got_dx = test::to_f32(in_place ? d_dy.to_host() : d_dx.to_host());
  EXPECT_TRUE(all_close(got_dx, want_dx, dx_tolerance<H>(), "dx " + what));
}

TEST(SoftmaxGpu, ForwardBackwardMatchCpu) {
  KILN_REQUIRE_GPU();
  for (int64_t C : softmax_sizes())
    for (int64_t rows : {1, 5, 37}) {
      softmax_case<float>(rows, C, 0, false);
      softmax_case<bf16>(rows, C, 0, false);
    }
}

TEST(SoftmaxGpu, LargeLogitsAreStable) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {2, 768, 50304}) {
    softmax_case<float>(3, C, 0, false, 990.0f, 1010.0f);
    softmax_case<bf16>(3, C, 0, false, -1010.0f, -990.0f);
  }
}

TEST(SoftmaxGpu, MisalignedAndInPlace) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {2, 3, 33, 1000, 1025, 16411, 50257}) {
    softmax_case<float>(3, C, 1, false);
    softmax_case<bf16>(3, C, 1, true);
    softmax_case<float>(3, C, 0, true);
  }
}

TEST(SoftmaxGpu, RunsAreBitIdentical) {
  KILN_REQUIRE_GPU();
  for (int64_t C : {768, 4097, 50304}) {
    const int64_t rows = 64;
    const std::vector<float> x = random_uniform(rows * C, 81, -8.0f, 8.0f), dy = random_uniform(rows * C, 82);
    test::DeviceBuffer<bf16> d_x(test::to_bf16(x)), d_dy(test::to_bf16(dy)), d_y(rows * C), d_dx(rows * C);
    test::DeviceBuffer<float> f_x(x), f_dy(dy), f_y(rows * C), f_dx(rows * C);
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
      softmax_forward(d_y.get(), d_x.get(), rows, C, nullptr);
      softmax_backward(d_dx.get(), d_dy.get(), d_y.get(), rows, C, nullptr);
      softmax_forward(f_y.get(), f_x.get(), rows, C, nullptr);
      softmax_backward(f_dx.get(), f_dy.get(), f_y.get(), rows, C, nullptr);
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<float> all = test::from_bf16(d_y.to_host());
      for (const auto& v : {test::from_bf16(d_dx.to_host()), f_y.to_host(), f_dx.to_host()})
        all.insert(all.end(), v.begin(), v.end());
      runs.push_back(std::move(all));
    }
    EXPECT_TRUE(test::bitwise_equal(runs[0], runs[1], "two runs, C = " + std::to_string(C)));
  }
}
#else
TEST(SoftmaxGpu, ForwardBackwardMatchCpu) { KILN_REQUIRE_GPU(); }
#endif

// --- CPU threads --------------------------------------------------------------

template <typename T>
void check_softmax_thread_counts() {
  const int64_t rows = 301, C = 257;
  const std::vector<float> xf = random_uniform(rows * C, 41, -8.0f, 8.0f), dyf = random_uniform(rows * C, 42);
  const std::vector<T> x(xf.begin(), xf.end()), dy(dyf.begin(), dyf.end());
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out(2 * rows * C);
    softmax_forward_cpu(out.data(), x.data(), rows, C);
    softmax_backward_cpu(out.data() + rows * C, dy.data(), out.data(), rows, C);
    return out;
  }, "softmax"));
}

TEST(SoftmaxCpu, ResultsDoNotDependOnTheThreadCount) {
  check_softmax_thread_counts<float>();
  check_softmax_thread_counts<double>();
}

}  // namespace
}  // namespace kiln
