// GELU, ReLU, bias add / bias backward, residual add: CPU references against
// known values and finite differences; CUDA launchers against the CPU
// references in fp32 and bf16 over many sizes, aligned and misaligned.
#include "kernels/activation.h"
#include "kernels/activation_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "tests/harness/gradcheck.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::all_close;
using test::check_gradient;
using test::random_uniform;
using test::random_uniform_f64;

// Sizes for the elementwise ops: the harness's list plus larger ones that
// are not multiples of any pack or block.
std::vector<int64_t> elementwise_sizes() {
  std::vector<int64_t> s = test::standard_sizes();
  s.push_back(8192 * 3 + 5);
  s.push_back((1 << 20) + 3);
  return s;
}

// (rows, cols) pairs for the broadcast ops: odd columns (scalar path), pack
// multiples (vector path), a GPT width, few-rows/many-columns and the reverse.
[[maybe_unused]] const std::vector<std::pair<int64_t, int64_t>>& matrix_shapes() {
  static const std::vector<std::pair<int64_t, int64_t>> s = {
      {0, 768}, {5, 0}, {1, 1}, {1, 4097}, {3, 7}, {31, 33}, {33, 31}, {127, 768},
      {509, 1000}, {768, 3}, {4097, 32}, {64, 3072}, {2, 8}, {1000, 1}};
  return s;
}

// --- CPU references ---------------------------------------------------------

TEST(ActivationCpu, GeluKnownValues) {
  // The tanh formula evaluated in double (what PyTorch's
  // F.gelu(x, approximate="tanh") computes) for x = -3, -1, 0, 0.5, 1, 3.
  const std::vector<double> x = {-3.0, -1.0, 0.0, 0.5, 1.0, 3.0};
  const std::vector<double> want = {-0.0036373920817729, -0.15880800939172324, 0.0,
                                    0.34571400982514394, 0.8411919906082768, 2.9963626079182271};
  std::vector<double> got(x.size());
  gelu_forward_cpu(got.data(), x.data(), static_cast<int64_t>(x.size()));
  EXPECT_TRUE(all_close(got, want, {1e-12, 1e-14}, "gelu(x) double"));
  std::vector<float> xf(x.begin(), x.end()), gotf(x.size());
  gelu_forward_cpu(gotf.data(), xf.data(), static_cast<int64_t>(xf.size()));
  EXPECT_TRUE(all_close(gotf, std::vector<float>(want.begin(), want.end()), {1e-6, 1e-7}, "gelu(x) float"));
}

TEST(ActivationCpu, ReluKnownValuesAndNan) {
  const std::vector<float> x = {-2.0f, -0.0f, 0.0f, 0.5f, 3.0f, NAN};
  std::vector<float> y(x.size()), dx(x.size());
  const std::vector<float> dy = {1, 2, 3, 4, 5, 6};
  relu_forward_cpu(y.data(), x.data(), 6);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[3], 0.5f);
  EXPECT_EQ(y[4], 3.0f);
  EXPECT_TRUE(std::isnan(y[5])) << "NaN must pass through the forward";
  relu_backward_cpu(dx.data(), x.data(), dy.data(), 6);
  EXPECT_EQ(dx, (std::vector<float>{0, 0, 0, 4, 5, 0}));
}

TEST(ActivationCpu, FloatMatchesDouble) {
  for (int64_t n : elementwise_sizes()) {
    const std::vector<float> x = random_uniform(n, 11, -4.0f, 4.0f), dy = random_uniform(n, 12);
    std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end());
    std::vector<float> y(n), dx(n);
    std::vector<double> yd(n), dxd(n);
    gelu_forward_cpu(y.data(), x.data(), n);
    gelu_forward_cpu(yd.data(), xd.data(), n);
    EXPECT_TRUE(all_close(y, std::vector<float>(yd.begin(), yd.end()), {1e-5, 1e-6}, "gelu fwd n=" + std::to_string(n)));
    gelu_backward_cpu(dx.data(), x.data(), dy.data(), n);
    gelu_backward_cpu(dxd.data(), xd.data(), dyd.data(), n);
    EXPECT_TRUE(all_close(dx, std::vector<float>(dxd.begin(), dxd.end()), {1e-5, 1e-6}, "gelu bwd n=" + std::to_string(n)));
  }
}

TEST(ActivationCpu, GeluBackwardMatchesFiniteDifferences) {
  const int64_t n = 257;
  const std::vector<double> x = random_uniform_f64(n, 21, -4.0, 4.0), w = random_uniform_f64(n, 22);
  std::vector<double> dx(n);
  gelu_backward_cpu(dx.data(), x.data(), w.data(), n);
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> y(n);
    gelu_forward_cpu(y.data(), xs.data(), n);
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += w[i] * y[i];
    return l;
  };
  EXPECT_TRUE(check_gradient(loss, x, dx, "gelu"));
}

TEST(ActivationCpu, ReluBackwardMatchesFiniteDifferences) {
  const int64_t n = 200;
  std::vector<double> x = random_uniform_f64(n, 31, -2.0, 2.0);
  for (double& v : x)  // keep away from the kink at 0
    if (std::fabs(v) < 0.05) v += v < 0 ? -0.1 : 0.1;
  const std::vector<double> w = random_uniform_f64(n, 32);
  std::vector<double> dx(n);
  relu_backward_cpu(dx.data(), x.data(), w.data(), n);
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> y(n);
    relu_forward_cpu(y.data(), xs.data(), n);
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += w[i] * y[i];
    return l;
  };
  EXPECT_TRUE(check_gradient(loss, x, dx, "relu"));
}

TEST(ActivationCpu, BiasBackwardMatchesFiniteDifferencesAndAccumulates) {
  const int64_t rows = 13, cols = 17;
  const std::vector<double> x = random_uniform_f64(rows * cols, 41), w = random_uniform_f64(rows * cols, 42);
  const std::vector<double> bias = random_uniform_f64(cols, 43);
  std::vector<double> dbias(cols, 0.0);
  bias_backward_cpu(dbias.data(), w.data(), rows, cols);
  auto loss = [&](const std::vector<double>& b) {
    std::vector<double> y(rows * cols);
    bias_add_forward_cpu(y.data(), x.data(), b.data(), rows, cols);
    double l = 0;
    for (int64_t i = 0; i < rows * cols; ++i) l += w[i] * y[i];
    return l;
  };
  EXPECT_TRUE(check_gradient(loss, bias, dbias, "bias"));
  // Accumulation: a second call adds the same amount again.
  std::vector<double> twice = dbias;
  bias_backward_cpu(twice.data(), w.data(), rows, cols);
  for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(twice[c], 2 * dbias[c], 1e-12) << "column " << c;
}

TEST(ActivationCpu, BiasAddAndResidual) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6}, bias = {10, 20, 30}, b = {0.5f, 0.5f, 0.5f, 1, 1, 1};
  std::vector<float> y(6), r(6);
  bias_add_forward_cpu(y.data(), x.data(), bias.data(), 2, 3);
  EXPECT_EQ(y, (std::vector<float>{11, 22, 33, 14, 25, 36}));
  residual_add_cpu(r.data(), x.data(), b.data(), 6);
  EXPECT_EQ(r, (std::vector<float>{1.5f, 2.5f, 3.5f, 5, 6, 7}));
  // In place (out aliases x) is allowed.
  std::vector<float> inplace = x;
  bias_add_forward_cpu(inplace.data(), inplace.data(), bias.data(), 2, 3);
  EXPECT_EQ(inplace, y);
}

// --- CUDA vs CPU ------------------------------------------------------------

#if KILN_WITH_CUDA
using test::OffsetBuffer;

template <typename H>
using Unary = void (*)(H*, const H*, int64_t, cudaStream_t);
template <typename H>
using Binary = void (*)(H*, const H*, const H*, int64_t, cudaStream_t);

// GPU unary op on storage type H vs the float CPU reference on the same
// (representable) inputs; offset 1 forces the scalar path.
template <typename H>
void check_unary(const char* name, Unary<H> gpu, void (*cpu)(float*, const float*, int64_t), int64_t n,
                 size_t offset, uint64_t seed) {
  const std::vector<float> x = test::representable<H>(random_uniform(n, seed, -4.0f, 4.0f));
  std::vector<float> want(n);
  cpu(want.data(), x.data(), n);
  OffsetBuffer<H> dx(test::to_storage<H>(x), offset), dy(n, offset);
  gpu(dy.get(), dx.get(), n, nullptr);
  const std::string what = std::string(name) + " " + test::storage_name<H>() + " n=" + std::to_string(n) +
                           " offset=" + std::to_string(offset);
  EXPECT_TRUE(all_close(test::to_f32(dy.to_host()), test::representable<H>(want), test::storage_tolerance<H>(), what));
  // Deterministic and in-place capable: rerun in place over the input.
  gpu(dx.get(), dx.get(), n, nullptr);
  EXPECT_EQ(0, std::memcmp(dx.to_host().data(), dy.to_host().data(), n * sizeof(H))) << what << " in place";
}

template <typename H>
void check_binary(const char* name, Binary<H> gpu, void (*cpu)(float*, const float*, const float*, int64_t),
                  int64_t n, size_t offset, uint64_t seed) {
  const std::vector<float> a = test::representable<H>(random_uniform(n, seed, -4.0f, 4.0f));
  const std::vector<float> b = test::representable<H>(random_uniform(n, seed + 1));
  std::vector<float> want(n);
  cpu(want.data(), a.data(), b.data(), n);
  OffsetBuffer<H> da(test::to_storage<H>(a), offset), db(test::to_storage<H>(b), offset), dout(n, offset);
  gpu(dout.get(), da.get(), db.get(), n, nullptr);
  const std::string what = std::string(name) + " " + test::storage_name<H>() + " n=" + std::to_string(n) +
                           " offset=" + std::to_string(offset);
  EXPECT_TRUE(all_close(test::to_f32(dout.to_host()), test::representable<H>(want), test::storage_tolerance<H>(), what));
}

template <typename H>
void check_all_elementwise() {
  for (int64_t n : elementwise_sizes()) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      check_unary<H>("gelu_forward", &gelu_forward, &gelu_forward_cpu<float>, n, offset, 100 + n);
      check_unary<H>("relu_forward", &relu_forward, &relu_forward_cpu<float>, n, offset, 200 + n);
      check_binary<H>("gelu_backward", &gelu_backward, &gelu_backward_cpu<float>, n, offset, 300 + n);
      check_binary<H>("relu_backward", &relu_backward, &relu_backward_cpu<float>, n, offset, 400 + n);
      check_binary<H>("residual_add", &residual_add, &residual_add_cpu<float>, n, offset, 500 + n);
    }
  }
}
#endif

TEST(ActivationGpu, ElementwiseMatchesCpuF32) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  check_all_elementwise<float>();
#endif
}

TEST(ActivationGpu, ElementwiseMatchesCpuBf16) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  check_all_elementwise<bf16>();
#endif
}

#if KILN_WITH_CUDA
template <typename H, typename B>
void check_bias_add(int64_t rows, int64_t cols, size_t offset) {
  const int64_t n = rows * cols;
  const std::vector<float> x = test::representable<H>(random_uniform(n, 600 + n, -2.0f, 2.0f));
  const std::vector<float> bias = test::representable<B>(random_uniform(cols, 700 + cols));
  std::vector<float> want(n);
  bias_add_forward_cpu(want.data(), x.data(), bias.data(), rows, cols);
  OffsetBuffer<H> dx(test::to_storage<H>(x), offset), dout(n, offset);
  OffsetBuffer<B> dbias(test::to_storage<B>(bias), offset);
  bias_add_forward(dout.get(), dx.get(), dbias.get(), rows, cols, nullptr);
  const std::string what = "bias_add " + test::storage_name<H>() + "+" + test::storage_name<B>() + " (" +
                           std::to_string(rows) + ", " + std::to_string(cols) + ") offset=" + std::to_string(offset);
  EXPECT_TRUE(all_close(test::to_f32(dout.to_host()), test::representable<H>(want), test::storage_tolerance<H>(), what));
}

template <typename H>
void check_bias_backward(int64_t rows, int64_t cols, size_t offset) {
  const int64_t n = rows * cols;
  const std::vector<float> dy = test::representable<H>(random_uniform(n, 800 + n));
  const std::vector<float> init = random_uniform(cols, 900 + cols);  // dbias accumulates
  std::vector<double> dyd(dy.begin(), dy.end()), want(init.begin(), init.end());
  bias_backward_cpu(want.data(), dyd.data(), rows, cols);
  OffsetBuffer<H> ddy(test::to_storage<H>(dy), offset);
  OffsetBuffer<float> db(init, offset);
  bias_backward(db.get(), ddy.get(), rows, cols, nullptr);
  const std::vector<float> got = db.to_host();
  const std::string what = "bias_backward " + test::storage_name<H>() + " (" + std::to_string(rows) + ", " +
                           std::to_string(cols) + ")";
  // fp32 sums of `rows` terms in a different order than the double reference.
  EXPECT_TRUE(all_close(std::vector<double>(got.begin(), got.end()), want, {1e-5, 1e-6 * (rows + 1)}, what));
  // Determinism: a second run from the same start gives the same bits.
  db.upload(init);
  bias_backward(db.get(), ddy.get(), rows, cols, nullptr);
  EXPECT_TRUE(test::bitwise_equal(db.to_host(), got, what + " rerun"));
}
#endif

TEST(ActivationGpu, BiasAddMatchesCpu) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (auto [rows, cols] : matrix_shapes()) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      check_bias_add<float, float>(rows, cols, offset);
      check_bias_add<bf16, bf16>(rows, cols, offset);
      check_bias_add<bf16, float>(rows, cols, offset);
    }
  }
#endif
}

TEST(ActivationGpu, BiasBackwardMatchesCpuAndIsDeterministic) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  std::vector<std::pair<int64_t, int64_t>> shapes = matrix_shapes();
  shapes.push_back({8192, 768});
  for (auto [rows, cols] : shapes) {
    check_bias_backward<float>(rows, cols, 0);
    check_bias_backward<bf16>(rows, cols, 1);
  }
#endif
}

TEST(ActivationGpu, RejectsBadShapes) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  EXPECT_THROW(bias_add_forward(static_cast<float*>(nullptr), nullptr, static_cast<const float*>(nullptr), -1, 4,
                                nullptr),
               Error);
  EXPECT_THROW(bias_backward(static_cast<float*>(nullptr), static_cast<const float*>(nullptr), 4, -1, nullptr),
               Error);
#endif
}

// --- CPU threads --------------------------------------------------------------

template <typename T>
std::vector<T> as(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
void check_activation_thread_counts() {
  const int64_t n = 100003, rows = 1001, cols = 333;
  const std::vector<T> x = as<T>(random_uniform(n, 31, -6.0f, 6.0f)), dy = as<T>(random_uniform(n, 32));
  const std::vector<T> m = as<T>(random_uniform(rows * cols, 33)), bias = as<T>(random_uniform(cols, 34));
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out(2 * n);
    gelu_forward_cpu(out.data(), x.data(), n);
    gelu_backward_cpu(out.data() + n, x.data(), dy.data(), n);
    return out;
  }, "gelu"));
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out(3 * n);
    relu_forward_cpu(out.data(), x.data(), n);
    relu_backward_cpu(out.data() + n, x.data(), dy.data(), n);
    residual_add_cpu(out.data() + 2 * n, x.data(), dy.data(), n);
    return out;
  }, "relu, residual"));
  EXPECT_TRUE(test::same_at_thread_counts([&] {
    std::vector<T> out(rows * cols + cols, T(0.5));
    bias_add_forward_cpu(out.data(), m.data(), bias.data(), rows, cols);
    bias_backward_cpu(out.data() + rows * cols, m.data(), rows, cols);
    return out;
  }, "bias add, bias backward"));
}

TEST(ActivationCpu, ResultsDoNotDependOnTheThreadCount) {
  check_activation_thread_counts<float>();
  check_activation_thread_counts<double>();
}

TEST(ActivationCpu, FloatGeluSpecialValuesFollowTheDoubleFormula) {
  // inf, NaN and values where x³ overflows float or the exponential
  // saturates: the vectorized float form gives what the tanh formula does.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {inf, -inf, NAN, 1e5f, -1e5f, 30.0f, -30.0f, 1e20f, -1e20f, 0.0f, -0.0f, 1e-30f};
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size()), dx(x.size());
  const std::vector<float> ones(x.size(), 1.0f);
  gelu_forward_cpu(y.data(), x.data(), n);
  gelu_backward_cpu(dx.data(), x.data(), ones.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double xd = x[i], want = gelu_value<double>(xd), want_d = gelu_grad<double>(xd);
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(y[i])) << "gelu(" << x[i] << ") = " << y[i];
    else if (std::isinf(want)) EXPECT_EQ(y[i], want) << "gelu(" << x[i] << ")";
    else EXPECT_NEAR(y[i], want, 1e-6 * std::fabs(want) + 1e-30) << "gelu(" << x[i] << ")";
    if (std::isnan(want_d)) EXPECT_TRUE(std::isnan(dx[i])) << "gelu'(" << x[i] << ") = " << dx[i];
    else EXPECT_NEAR(dx[i], want_d, 1e-6 * std::fabs(want_d) + 1e-30) << "gelu'(" << x[i] << ")";
  }
}

}  // namespace
}  // namespace kiln
