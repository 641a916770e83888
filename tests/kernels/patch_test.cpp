// Patch extraction: the CPU reference against a hand-computed case and an
// element-by-element formula over odd shapes (0, 1, primes), forward then
// backward is the identity, finite differences, bad shapes rejected; CUDA
// (fp32 and bf16, aligned and misaligned) equal to the CPU bit for bit.
#include "kernels/patch.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

using test::random_uniform;

struct Geo {
  int64_t B, H, W, C, p;
  int64_t numel() const { return B * H * W * C; }
  std::string str() const {
    return "(B " + std::to_string(B) + ", " + std::to_string(H) + "x" + std::to_string(W) + "x" + std::to_string(C) +
           ", p " + std::to_string(p) + ")";
  }
};

// Empty batch and empty images, one pixel, p = 1 (every pixel a patch), the
// whole image one patch, primes everywhere, non-square grids, Fashion-MNIST
// (28x28x1 with p 4 and 7) and an ImageNet-like 3-channel one.
const std::vector<Geo>& shapes() {
  static const std::vector<Geo> s = {{0, 4, 4, 1, 2},  {2, 0, 0, 3, 5},   {1, 1, 1, 1, 1},  {3, 5, 7, 2, 1},
                                     {2, 7, 7, 3, 7},  {1, 6, 4, 5, 2},   {5, 33, 11, 3, 11}, {4, 28, 28, 1, 4},
                                     {3, 28, 28, 1, 7}, {2, 14, 21, 31, 7}, {2, 64, 48, 3, 16}, {1, 34, 34, 8, 17}};
  return s;
}

// The file comment's formula, one element at a time (independent of the
// run-based reference).
std::vector<float> naive_forward(const std::vector<float>& x, const Geo& g) {
  std::vector<float> out(x.size());
  const int64_t gw = g.W / g.p, N = (g.H / g.p) * gw, K = g.p * g.p * g.C;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w)
        for (int64_t c = 0; c < g.C; ++c) {
          const int64_t n = (h / g.p) * gw + w / g.p, k = ((h % g.p) * g.p + w % g.p) * g.C + c;
          out[(b * N + n) * K + k] = x[((b * g.H + h) * g.W + w) * g.C + c];
        }
  return out;
}

TEST(PatchCpu, HandComputed) {
  // One 2x4 image, 2 channels, p = 2: two patches of 8 values.
  // x[h][w][c] = 100·h + 10·w + c.
  const Geo g{1, 2, 4, 2, 2};
  std::vector<float> x;
  for (int h = 0; h < 2; ++h)
    for (int w = 0; w < 4; ++w)
      for (int c = 0; c < 2; ++c) x.push_back(100.0f * h + 10.0f * w + c);
  std::vector<float> out(x.size());
  patch_forward_cpu(out.data(), x.data(), g.B, g.H, g.W, g.C, g.p);
  const std::vector<float> want = {0, 1, 10, 11, 100, 101, 110, 111,     // patch 0: columns 0-1
                                   20, 21, 30, 31, 120, 121, 130, 131};  // patch 1: columns 2-3
  EXPECT_EQ(out, want);
}

TEST(PatchCpu, MatchesFormulaAndRoundTrips) {
  for (const Geo& g : shapes()) {
    const std::vector<float> x = random_uniform(static_cast<size_t>(g.numel()), 1 + g.numel());
    std::vector<float> out(x.size(), -7.0f), back(x.size(), -7.0f);
    patch_forward_cpu(out.data(), x.data(), g.B, g.H, g.W, g.C, g.p);
    EXPECT_TRUE(test::bitwise_equal(out, naive_forward(x, g), "forward " + g.str()));
    patch_backward_cpu(back.data(), out.data(), g.B, g.H, g.W, g.C, g.p);
    EXPECT_TRUE(test::bitwise_equal(back, x, "backward(forward(x)) " + g.str()));
  }
}

TEST(PatchCpu, BackwardMatchesFiniteDifferences) {
  const Geo g{2, 6, 9, 2, 3};
  const size_t n = static_cast<size_t>(g.numel());
  const std::vector<double> x = test::random_uniform_f64(n, 5), w = test::random_uniform_f64(n, 6);
  std::vector<double> dx(n, 99.0);  // written, not accumulated
  patch_backward_cpu(dx.data(), w.data(), g.B, g.H, g.W, g.C, g.p);
  auto loss = [&](const std::vector<double>& v) {
    std::vector<double> out(n);
    patch_forward_cpu(out.data(), v.data(), g.B, g.H, g.W, g.C, g.p);
    double l = 0;
    for (size_t i = 0; i < n; ++i) l += w[i] * out[i];
    return l;
  };
  EXPECT_TRUE(test::check_gradient(loss, x, dx, "patch dx"));
}

TEST(PatchCpu, RejectsPatchesThatDoNotTile) {
  std::vector<float> x(5 * 6), out(5 * 6);
  try {
    patch_forward_cpu(out.data(), x.data(), 1, 5, 6, 1, 2);
    ADD_FAILURE() << "5x6 with p 2 was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("patch size 2 does not divide the image 5x6"), std::string::npos) << e.what();
  }
  EXPECT_THROW(patch_backward_cpu(x.data(), out.data(), 1, 6, 5, 1, 2), InputError);
  EXPECT_THROW(patch_forward_cpu(out.data(), x.data(), 1, 6, 6, 1, 0), InputError);
  EXPECT_THROW(patch_forward_cpu(out.data(), x.data(), -1, 6, 6, 1, 1), InputError);
}

#if KILN_WITH_CUDA
template <typename H>
void check_gpu(const Geo& g, size_t offset) {
  const size_t n = static_cast<size_t>(g.numel());
  const std::vector<float> x = test::representable<H>(random_uniform(n, 20 + n));
  std::vector<float> want(n);
  patch_forward_cpu(want.data(), x.data(), g.B, g.H, g.W, g.C, g.p);
  test::OffsetBuffer<H> dx_in(test::to_storage<H>(x), offset), dout(n, offset), dback(n, offset);
  const std::string what = "patch " + test::storage_name<H>() + " " + g.str() + " offset " + std::to_string(offset);
  patch_forward(dout.get(), dx_in.get(), g.B, g.H, g.W, g.C, g.p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(dout.to_host()), want, "forward " + what));
  patch_backward(dback.get(), dout.get(), g.B, g.H, g.W, g.C, g.p, nullptr);
  EXPECT_TRUE(test::bitwise_equal(test::to_f32(dback.to_host()), x, "backward " + what));
}

TEST(PatchGpu, MatchesCpuBitForBit) {
  KILN_REQUIRE_GPU();
  std::vector<Geo> all = shapes();
  all.push_back({64, 224, 224, 3, 16});  // ViT-B/16 input
  all.push_back({256, 28, 28, 1, 4});    // the Fashion-MNIST recipe's batch
  for (const Geo& g : all)
    for (size_t offset : {0, 1}) {
      check_gpu<float>(g, offset);
      check_gpu<bf16>(g, offset);
    }
}

TEST(PatchGpu, RejectsPatchesThatDoNotTile) {
  KILN_REQUIRE_GPU();
  test::DeviceBuffer<float> x(30), out(30);
  EXPECT_THROW(patch_forward(out.get(), x.get(), 1, 5, 6, 1, 2, nullptr), InputError);
}
#endif

}  // namespace
}  // namespace kiln
