// conv2d (runtime/conv.h): the CPU backend (im2col + OpenBLAS) against a
// naive seven-loop convolution in double over odd geometries (strides,
// asymmetric windows, padding, dilation, groups, depthwise, 1x1 projections,
// multi-chunk batches, empty tensors), in f64, f32 and bf16; forward with and
// without bias, backward data, backward filter (overwrite and accumulate),
// dbias; argument errors; determinism. The GPU (cuDNN) suite compares the
// CUDA path against the CPU one in f32 and bf16, checks run-to-run bit
// equality, accumulation and the bf16-activations / fp32-dw path.
#include "runtime/conv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;
using test::random_uniform_f64;

Conv2dGeometry geom(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t r, int64_t s, int64_t stride,
                    int64_t pad, int64_t dil = 1, int64_t groups = 1) {
  Conv2dGeometry g;
  g.n = n; g.h = h; g.w = w; g.c = c; g.k = k; g.r = r; g.s = s;
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = pad;
  g.dilation_h = g.dilation_w = dil;
  g.groups = groups;
  return g;
}

// Geometries every test sweeps: primes, non-square windows and strides,
// padding wider than the window's half, dilation, groups, depthwise, the
// 1x1 direct path and the strided 1x1 projection, batches that span several
// im2col chunks (kColBytes = 2 MiB).
std::vector<Conv2dGeometry> geometries() {
  std::vector<Conv2dGeometry> v = {
      geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
      geom(2, 5, 7, 3, 4, 3, 3, 1, 1),
      geom(3, 9, 11, 5, 7, 3, 3, 2, 1),
      geom(2, 8, 8, 6, 4, 1, 1, 1, 0, 1, 2),     // direct 1x1, grouped
      geom(1, 13, 13, 4, 6, 3, 3, 1, 2, 2, 2),   // dilation 2, groups 2
      geom(2, 9, 9, 8, 16, 1, 1, 2, 0),          // ResNet's strided 1x1 projection
      geom(2, 6, 6, 8, 8, 3, 3, 1, 1, 1, 8),     // depthwise
      geom(2, 2, 2, 3, 2, 3, 3, 1, 1),           // window larger than the image (padded)
      geom(4, 28, 28, 1, 32, 3, 3, 1, 1),        // the CNN stem
      geom(3, 7, 7, 31, 33, 3, 3, 2, 1),         // primes around a tile
      geom(40, 16, 16, 16, 8, 3, 3, 1, 1),       // 3 im2col chunks
  };
  Conv2dGeometry a = geom(2, 7, 5, 3, 5, 5, 3, 1, 0);  // asymmetric window, stride, padding
  a.stride_h = 2; a.stride_w = 1; a.pad_h = 2; a.pad_w = 1;
  v.push_back(a);
  return v;
}

// --- naive reference in double ---------------------------------------------------

int64_t xi(const Conv2dGeometry& g, int64_t n, int64_t h, int64_t w, int64_t c) { return ((n * g.h + h) * g.w + w) * g.c + c; }
int64_t yi(const Conv2dGeometry& g, int64_t n, int64_t p, int64_t q, int64_t k) {
  return ((n * g.out_h() + p) * g.out_w() + q) * g.k + k;
}
int64_t wi(const Conv2dGeometry& g, int64_t k, int64_t r, int64_t s, int64_t c) {
  return ((k * g.r + r) * g.s + s) * (g.c / g.groups) + c;
}

// Visits every (n, p, q, k, r, s, c_local) term whose input pixel is inside the image.
template <typename F>
void each_term(const Conv2dGeometry& g, F f) {
  const int64_t Cg = g.c / g.groups, Kg = g.k / g.groups;
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t p = 0; p < g.out_h(); ++p)
      for (int64_t q = 0; q < g.out_w(); ++q)
        for (int64_t k = 0; k < g.k; ++k)
          for (int64_t r = 0; r < g.r; ++r)
            for (int64_t s = 0; s < g.s; ++s) {
              const int64_t ih = p * g.stride_h - g.pad_h + r * g.dilation_h;
              const int64_t iw = q * g.stride_w - g.pad_w + s * g.dilation_w;
              if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
              for (int64_t c = 0; c < Cg; ++c) f(yi(g, n, p, q, k), xi(g, n, ih, iw, (k / Kg) * Cg + c), wi(g, k, r, s, c));
            }
}

std::vector<double> naive_forward(const Conv2dGeometry& g, const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>* bias) {
  std::vector<double> y(g.y_numel(), 0.0);
  if (bias)
    for (int64_t i = 0; i < g.y_numel(); ++i) y[i] = (*bias)[i % g.k];
  each_term(g, [&](int64_t yo, int64_t xo, int64_t wo) { y[yo] += x[xo] * w[wo]; });
  return y;
}

std::vector<double> naive_backward_data(const Conv2dGeometry& g, const std::vector<double>& dy,
                                        const std::vector<double>& w) {
  std::vector<double> dx(g.x_numel(), 0.0);
  each_term(g, [&](int64_t yo, int64_t xo, int64_t wo) { dx[xo] += dy[yo] * w[wo]; });
  return dx;
}

std::vector<double> naive_backward_filter(const Conv2dGeometry& g, const std::vector<double>& x,
                                          const std::vector<double>& dy) {
  std::vector<double> dw(g.w_numel(), 0.0);
  each_term(g, [&](int64_t yo, int64_t xo, int64_t wo) { dw[wo] += dy[yo] * x[xo]; });
  return dw;
}

std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }
std::vector<double> to_f64(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// --- CPU against the naive reference ----------------------------------------------

TEST(ConvCpu, F64MatchesNaive) {
  uint64_t seed = 1;
  for (const Conv2dGeometry& g : geometries()) {
    const std::vector<double> x = random_uniform_f64(g.x_numel(), seed++), w = random_uniform_f64(g.w_numel(), seed++);
    const std::vector<double> bias = random_uniform_f64(g.k, seed++), dy = random_uniform_f64(g.y_numel(), seed++);
    const test::Tolerance tol{1e-12, 1e-12};
    std::vector<double> y(g.y_numel(), -7.0);
    conv2d_forward(g, DType::f64, x.data(), w.data(), nullptr, y.data(), Device::cpu());
    EXPECT_TRUE(all_close(y, naive_forward(g, x, w, nullptr), tol, "forward " + g.str()));
    conv2d_forward(g, DType::f64, x.data(), w.data(), bias.data(), y.data(), Device::cpu());
    EXPECT_TRUE(all_close(y, naive_forward(g, x, w, &bias), tol, "forward+bias " + g.str()));

    std::vector<double> dx(g.x_numel(), -7.0);
    conv2d_backward_data(g, DType::f64, dy.data(), w.data(), dx.data(), Device::cpu());
    EXPECT_TRUE(all_close(dx, naive_backward_data(g, dy, w), tol, "backward data " + g.str()));

    const std::vector<double> want_dw = naive_backward_filter(g, x, dy);
    std::vector<double> dw(g.w_numel(), -7.0), db(g.k, 0.5);
    conv2d_backward_filter(g, DType::f64, x.data(), dy.data(), dw.data(), DType::f64, false, db.data(), Device::cpu());
    EXPECT_TRUE(all_close(dw, want_dw, tol, "backward filter " + g.str()));
    std::vector<double> want_db(g.k, 0.5);
    for (int64_t i = 0; i < g.y_numel(); ++i) want_db[i % g.k] += dy[i];
    EXPECT_TRUE(all_close(db, want_db, tol, "dbias " + g.str()));
    // accumulate: dw += again
    conv2d_backward_filter(g, DType::f64, x.data(), dy.data(), dw.data(), DType::f64, true, nullptr, Device::cpu());
    std::vector<double> twice(want_dw);
    for (double& v : twice) v *= 2;
    EXPECT_TRUE(all_close(dw, twice, tol, "backward filter accumulate " + g.str()));
  }
}

TEST(ConvCpu, F32MatchesNaive) {
  uint64_t seed = 100;
  for (const Conv2dGeometry& g : geometries()) {
    const std::vector<float> x = random_uniform(g.x_numel(), seed++), w = random_uniform(g.w_numel(), seed++);
    const std::vector<float> bias = random_uniform(g.k, seed++), dy = random_uniform(g.y_numel(), seed++);
    const std::vector<double> bias64 = to_f64(bias);
    // Sums of up to R·S·C products of values in [-1, 1): fp32 rounding ~ 1e-6 · sqrt(terms).
    const test::Tolerance tol{2e-5, 2e-5};
    std::vector<float> y(g.y_numel());
    conv2d_forward(g, DType::f32, x.data(), w.data(), bias.data(), y.data(), Device::cpu());
    EXPECT_TRUE(all_close(y, to_f32(naive_forward(g, to_f64(x), to_f64(w), &bias64)), tol, "forward " + g.str()));
    std::vector<float> dx(g.x_numel());
    conv2d_backward_data(g, DType::f32, dy.data(), w.data(), dx.data(), Device::cpu());
    EXPECT_TRUE(all_close(dx, to_f32(naive_backward_data(g, to_f64(dy), to_f64(w))), tol, "backward data " + g.str()));
    std::vector<float> dw(g.w_numel());
    conv2d_backward_filter(g, DType::f32, x.data(), dy.data(), dw.data(), DType::f32, false, nullptr, Device::cpu());
    // dw sums N·P·Q terms: allow for the longer sums.
    EXPECT_TRUE(all_close(dw, to_f32(naive_backward_filter(g, to_f64(x), to_f64(dy))), {1e-4, 1e-4},
                          "backward filter " + g.str()));
  }
}

TEST(ConvCpu, Bf16WidensAndRoundsOnce) {
  const Conv2dGeometry g = geom(2, 9, 7, 5, 6, 3, 3, 2, 1);
  const std::vector<float> xf = test::round_to_bf16(random_uniform(g.x_numel(), 7));
  const std::vector<float> wf = test::round_to_bf16(random_uniform(g.w_numel(), 8));
  const std::vector<float> dyf = test::round_to_bf16(random_uniform(g.y_numel(), 9));
  const std::vector<bf16> x = test::to_bf16(xf), w = test::to_bf16(wf), dy = test::to_bf16(dyf);
  std::vector<bf16> y(g.y_numel()), dx(g.x_numel());
  conv2d_forward(g, DType::bf16, x.data(), w.data(), nullptr, y.data(), Device::cpu());
  // Exact fp32 results rounded to bf16 once: equal to rounding the fp32 path.
  std::vector<float> yf(g.y_numel());
  conv2d_forward(g, DType::f32, xf.data(), wf.data(), nullptr, yf.data(), Device::cpu());
  EXPECT_TRUE(test::bitwise_equal(test::from_bf16(y), test::round_to_bf16(yf), "bf16 forward"));
  conv2d_backward_data(g, DType::bf16, dy.data(), w.data(), dx.data(), Device::cpu());
  std::vector<float> dxf(g.x_numel());
  conv2d_backward_data(g, DType::f32, dyf.data(), wf.data(), dxf.data(), Device::cpu());
  EXPECT_TRUE(test::bitwise_equal(test::from_bf16(dx), test::round_to_bf16(dxf), "bf16 backward data"));
  // fp32 dw (the master gradient) from bf16 activations, accumulated.
  std::vector<float> dw(g.w_numel(), 1.0f), dwf(g.w_numel(), 1.0f);
  conv2d_backward_filter(g, DType::bf16, x.data(), dy.data(), dw.data(), DType::f32, true, nullptr, Device::cpu());
  conv2d_backward_filter(g, DType::f32, xf.data(), dyf.data(), dwf.data(), DType::f32, true, nullptr, Device::cpu());
  EXPECT_TRUE(test::bitwise_equal(dw, dwf, "bf16 -> f32 backward filter"));
}

TEST(ConvCpu, EmptyTensors) {
  // N = 0: nothing to write; dw zeroed when not accumulating, kept otherwise.
  Conv2dGeometry g = geom(0, 5, 5, 3, 4, 3, 3, 1, 1);
  std::vector<float> dw(g.w_numel(), 3.0f), db(4, 1.0f);
  conv2d_forward(g, DType::f32, nullptr, dw.data(), nullptr, nullptr, Device::cpu());
  conv2d_backward_data(g, DType::f32, nullptr, dw.data(), nullptr, Device::cpu());
  conv2d_backward_filter(g, DType::f32, nullptr, nullptr, dw.data(), DType::f32, true, db.data(), Device::cpu());
  EXPECT_EQ(dw[0], 3.0f);
  EXPECT_EQ(db[0], 1.0f);
  conv2d_backward_filter(g, DType::f32, nullptr, nullptr, dw.data(), DType::f32, false, nullptr, Device::cpu());
  EXPECT_EQ(dw[0], 0.0f);
  // C = 0: y = bias.
  g = geom(2, 3, 3, 0, 2, 3, 3, 1, 1);
  std::vector<float> y(g.y_numel(), 9.0f), bias = {0.25f, -1.5f};
  conv2d_forward(g, DType::f32, nullptr, nullptr, bias.data(), y.data(), Device::cpu());
  for (int64_t i = 0; i < g.y_numel(); ++i) EXPECT_EQ(y[i], bias[i % 2]);
  // K = 0: dx = 0.
  g = geom(2, 3, 3, 2, 0, 3, 3, 1, 1);
  std::vector<float> dx(g.x_numel(), 9.0f);
  conv2d_backward_data(g, DType::f32, nullptr, nullptr, dx.data(), Device::cpu());
  for (float v : dx) EXPECT_EQ(v, 0.0f);
}

TEST(ConvCpu, Deterministic) {
  const Conv2dGeometry g = geom(40, 16, 16, 16, 8, 3, 3, 1, 1);
  const std::vector<float> x = random_uniform(g.x_numel(), 3), dy = random_uniform(g.y_numel(), 4);
  std::vector<float> a(g.w_numel()), b(g.w_numel());
  conv2d_backward_filter(g, DType::f32, x.data(), dy.data(), a.data(), DType::f32, false, nullptr, Device::cpu());
  conv2d_backward_filter(g, DType::f32, x.data(), dy.data(), b.data(), DType::f32, false, nullptr, Device::cpu());
  EXPECT_TRUE(test::bitwise_equal(a, b, "dw run twice"));
}

TEST(ConvCpu, GeometryErrorsNameTheProblem) {
  auto msg = [](const Conv2dGeometry& g) {
    try {
      check_conv2d_geometry(g);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg(geom(1, 5, 5, 3, 4, 3, 3, 1, 1, 1, 2)).find("groups = 2 must divide"), std::string::npos);
  EXPECT_NE(msg(geom(1, 2, 2, 3, 4, 5, 5, 1, 0)).find("does not fit"), std::string::npos);
  EXPECT_NE(msg(geom(1, 5, 5, 3, 4, 3, 3, 0, 1)).find("stride"), std::string::npos);
  EXPECT_NE(msg(geom(1, 5, 5, 3, 4, 3, 3, 1, -1)).find("padding"), std::string::npos);
  EXPECT_NE(msg(geom(1, 5, 5, 3, 4, 3, 3, 1, 1, 0)).find("dilation"), std::string::npos);
  EXPECT_EQ(msg(geom(1, 5, 5, 3, 4, 3, 3, 1, 1)), "");
  const Conv2dGeometry g = geom(1, 5, 5, 3, 4, 3, 3, 1, 1);
  std::vector<float> buf(1000);
  EXPECT_THROW(conv2d_forward(g, DType::i32, buf.data(), buf.data(), nullptr, buf.data(), Device::cpu()), Error);
  EXPECT_THROW(conv2d_forward(g, DType::f32, nullptr, buf.data(), nullptr, buf.data(), Device::cpu()), Error);
  EXPECT_THROW(conv2d_backward_filter(g, DType::f32, buf.data(), buf.data(), buf.data(), DType::bf16, false, nullptr,
                                      Device::cpu()),
               Error);
  EXPECT_EQ(g.out_h(), 5);
  EXPECT_DOUBLE_EQ(g.flops(), 2.0 * 25 * 4 * 9 * 3);
}

// --- CUDA (cuDNN) against the CPU --------------------------------------------------

#if KILN_WITH_CUDA
using test::DeviceBuffer;

template <typename T>
std::vector<T> as(const std::vector<float>& v) {
  if constexpr (std::is_same<T, bf16>::value) return test::to_bf16(v);
  else return v;
}
template <typename T>
std::vector<float> back(const std::vector<T>& v) {
  if constexpr (std::is_same<T, bf16>::value) return test::from_bf16(v);
  else return v;
}

template <typename T>
void compare_gpu(const Conv2dGeometry& g, uint64_t seed) {
  const DType t = std::is_same<T, bf16>::value ? DType::bf16 : DType::f32;
  const bool lowp = t == DType::bf16;
  auto in = [&](int64_t n, uint64_t s) {
    std::vector<float> v = random_uniform(n, s);
    return lowp ? test::round_to_bf16(v) : v;
  };
  const std::vector<float> x = in(g.x_numel(), seed), w = in(g.w_numel(), seed + 1), dy = in(g.y_numel(), seed + 2);
  const std::vector<float> bias = random_uniform(g.k, seed + 3);
  const Device cpu = Device::cpu(), gpu = Device::cuda(0);
  const test::Tolerance tol = lowp ? test::Tolerance{2e-2, 2e-2} : test::Tolerance{1e-4, 1e-4};

  std::vector<float> y(g.y_numel()), dx(g.x_numel()), dw(g.w_numel(), 0.5f), db(g.k, 0.25f);
  conv2d_forward(g, DType::f32, x.data(), w.data(), bias.data(), y.data(), cpu);
  conv2d_backward_data(g, DType::f32, dy.data(), w.data(), dx.data(), cpu);
  conv2d_backward_filter(g, DType::f32, x.data(), dy.data(), dw.data(), DType::f32, true, db.data(), cpu);

  DeviceBuffer<T> xd(as<T>(x)), wd(as<T>(w)), dyd(as<T>(dy)), yd(g.y_numel()), dxd(g.x_numel());
  DeviceBuffer<float> biasd(bias), dwd(std::vector<float>(g.w_numel(), 0.5f)), dbd(std::vector<float>(g.k, 0.25f));
  yd.poison();
  dxd.poison();
  cudaStream_t s = nullptr;
  conv2d_forward(g, t, xd.get(), wd.get(), biasd.get(), yd.get(), gpu, s);
  conv2d_backward_data(g, t, dyd.get(), wd.get(), dxd.get(), gpu, s);
  conv2d_backward_filter(g, t, xd.get(), dyd.get(), dwd.get(), DType::f32, true, dbd.get(), gpu, s);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string what = g.str() + " " + dtype_name(t);
  EXPECT_TRUE(all_close(back(yd.to_host()), y, tol, "forward " + what));
  EXPECT_TRUE(all_close(back(dxd.to_host()), dx, tol, "backward data " + what));
  EXPECT_TRUE(all_close(dwd.to_host(), dw, {tol.rtol, tol.atol * 8}, "backward filter (accumulated) " + what));
  EXPECT_TRUE(all_close(dbd.to_host(), db, {tol.rtol, tol.atol * 8}, "dbias " + what));
}

TEST(ConvGpu, F32MatchesCpu) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 500;
  for (const Conv2dGeometry& g : geometries()) compare_gpu<float>(g, seed += 4);
}

TEST(ConvGpu, Bf16MatchesCpu) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 900;
  for (const Conv2dGeometry& g : geometries()) compare_gpu<bf16>(g, seed += 4);
}

TEST(ConvGpu, ResNetShapesAndBf16DwOverwrite) {
  KILN_REQUIRE_GPU();
  for (const Conv2dGeometry& g : {geom(64, 28, 28, 64, 64, 3, 3, 1, 1), geom(64, 28, 28, 64, 128, 3, 3, 2, 1),
                                  geom(64, 28, 28, 64, 128, 1, 1, 2, 0), geom(32, 7, 7, 256, 256, 3, 3, 1, 1)}) {
    compare_gpu<bf16>(g, 31);
    // Overwrite (accumulate = false) into fp32 dw from bf16 activations.
    const std::vector<float> x = test::round_to_bf16(random_uniform(g.x_numel(), 5));
    const std::vector<float> dy = test::round_to_bf16(random_uniform(g.y_numel(), 6));
    std::vector<float> dw(g.w_numel());
    conv2d_backward_filter(g, DType::f32, x.data(), dy.data(), dw.data(), DType::f32, false, nullptr, Device::cpu());
    DeviceBuffer<bf16> xd(test::to_bf16(x)), dyd(test::to_bf16(dy));
    DeviceBuffer<float> dwd(g.w_numel());
    dwd.poison();
    conv2d_backward_filter(g, DType::bf16, xd.get(), dyd.get(), dwd.get(), DType::f32, false, nullptr, Device::cuda(0),
                           nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(all_close(dwd.to_host(), dw, {2e-2, 5e-2}, "bf16 dw overwrite " + g.str()));
  }
}

TEST(ConvGpu, DeterministicRunToRun) {
  KILN_REQUIRE_GPU();
  ASSERT_TRUE(conv_deterministic());
  const Conv2dGeometry g = geom(64, 28, 28, 32, 64, 3, 3, 1, 1);
  DeviceBuffer<float> x(random_uniform(g.x_numel(), 1)), dy(random_uniform(g.y_numel(), 2)), w(random_uniform(g.w_numel(), 3));
  DeviceBuffer<float> dx1(g.x_numel()), dx2(g.x_numel()), dw1(g.w_numel()), dw2(g.w_numel());
  for (auto* pair : {&dx1, &dx2}) conv2d_backward_data(g, DType::f32, dy.get(), w.get(), pair->get(), Device::cuda(0), nullptr);
  for (auto* pair : {&dw1, &dw2})
    conv2d_backward_filter(g, DType::f32, x.get(), dy.get(), pair->get(), DType::f32, false, nullptr, Device::cuda(0), nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(test::bitwise_equal(dx1.to_host(), dx2.to_host(), "backward data twice"));
  EXPECT_TRUE(test::bitwise_equal(dw1.to_host(), dw2.to_host(), "backward filter twice"));
}

TEST(ConvGpu, EmptyShapes) {
  KILN_REQUIRE_GPU();
  Conv2dGeometry g = geom(2, 3, 3, 0, 2, 3, 3, 1, 1);  // C = 0: y = bias
  DeviceBuffer<float> y(g.y_numel()), bias(std::vector<float>{0.25f, -1.5f});
  y.poison();
  conv2d_forward(g, DType::f32, nullptr, nullptr, bias.get(), y.get(), Device::cuda(0), nullptr);
  const std::vector<float> yh = y.to_host();
  for (size_t i = 0; i < yh.size(); ++i) EXPECT_EQ(yh[i], i % 2 ? -1.5f : 0.25f);
  g = geom(0, 5, 5, 3, 4, 3, 3, 1, 1);  // N = 0: dw zeroed
  DeviceBuffer<float> dw(g.w_numel());
  dw.poison();
  conv2d_backward_filter(g, DType::f32, nullptr, nullptr, dw.get(), DType::f32, false, nullptr, Device::cuda(0), nullptr);
  for (float v : dw.to_host()) EXPECT_EQ(v, 0.0f);
}
#else
TEST(ConvGpu, F32MatchesCpu) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
