// Batch gather + crop + flip + normalize: the CPU reference checked for the
// crop/flip geometry on images of distinct pixels, for draws that depend on
// (sample, epoch) only (not the batch or the position in it), for uniform
// crop offsets and fair flips, and for the plain gather with pad 0; the CUDA
// kernel against the CPU reference bit for bit (fp32; bf16 = the rounded fp32).
#include "kernels/augment.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/typed_io.h"

namespace kiln {
namespace {

// n images of h x w x c with pixel (k, i, j, ch) = (k·31 + i·7 + j·3 + ch) % 256.
std::vector<uint8_t> images(int64_t n, int64_t h, int64_t w, int64_t c) {
  std::vector<uint8_t> v(n * h * w * c);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        for (int64_t ch = 0; ch < c; ++ch) v[((k * h + i) * w + j) * c + ch] = static_cast<uint8_t>((k * 31 + i * 7 + j * 3 + ch) % 256);
  return v;
}

std::vector<float> lut(bool normalize = true) {
  std::vector<float> l(256);
  augment_lut(l.data(), normalize, 0.2860f, 0.3530f);
  return l;
}

TEST(AugmentCpu, LutIsTheDatasetFormula) {
  const std::vector<float> l = lut();
  for (int v = 0; v < 256; ++v) EXPECT_EQ(l[v], (static_cast<float>(v) / 255.0f - 0.2860f) / 0.3530f);
  const std::vector<float> raw = lut(false);
  EXPECT_EQ(raw[255], 1.0f);
  EXPECT_EQ(raw[0], 0.0f);
}

TEST(AugmentCpu, PlainGather) {
  const int64_t n = 5, h = 4, w = 3, c = 2;
  const std::vector<uint8_t> img = images(n, h, w, c);
  const std::vector<int64_t> idx = {4, 0, 4, 2};
  AugmentParams p;
  p.h = h; p.w = w; p.c = c;
  const std::vector<float> l = lut();
  std::vector<float> out(idx.size() * h * w * c);
  augment_batch_cpu(out.data(), img.data(), n, idx.data(), static_cast<int64_t>(idx.size()), p, l.data());
  for (size_t b = 0; b < idx.size(); ++b)
    for (int64_t e = 0; e < h * w * c; ++e) EXPECT_EQ(out[b * h * w * c + e], l[img[idx[b] * h * w * c + e]]);
  const std::vector<int64_t> bad = {augment_key(1, 5)};
  EXPECT_THROW(augment_batch_cpu(out.data(), img.data(), n, bad.data(), 1, p, l.data()), Error);
}

TEST(AugmentCpu, CropAndFlipGeometry) {
  const int64_t n = 40, h = 6, w = 5, c = 3;
  const std::vector<uint8_t> img = images(n, h, w, c);
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  AugmentParams p;
  p.h = h; p.w = w; p.c = c; p.pad = 2; p.flip = true; p.seed = 7;
  for (int64_t& k : idx) k = augment_key(3, k);  // epoch 3
  const std::vector<float> l = lut(false);
  std::vector<float> out(n * h * w * c);
  augment_batch_cpu(out.data(), img.data(), n, idx.data(), n, p, l.data());
  int flips = 0, shifted = 0;
  for (int64_t b = 0; b < n; ++b) {
    const AugmentDraw d = augment_draw(p, augment_key(3, b));
    ASSERT_GE(d.oy, 0);
    ASSERT_LE(d.oy, 4);
    ASSERT_GE(d.ox, 0);
    ASSERT_LE(d.ox, 4);
    flips += d.flip;
    shifted += d.oy != 2 || d.ox != 2;
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        for (int64_t ch = 0; ch < c; ++ch) {
          // The padded image's pixel under output (i, j): mirror j first, then offset.
          const int64_t si = i + d.oy - 2, sj = (d.flip ? w - 1 - j : j) + d.ox - 2;
          const bool in = si >= 0 && si < h && sj >= 0 && sj < w;
          const float want = in ? l[img[((b * h + si) * w + sj) * c + ch]] : 0.0f;
          ASSERT_EQ(out[((b * h + i) * w + j) * c + ch], want) << "sample " << b << " at " << i << "," << j;
        }
  }
  EXPECT_GT(flips, 5);
  EXPECT_LT(flips, 35);
  EXPECT_GT(shifted, 20);
}

TEST(AugmentCpu, DrawsDependOnSampleAndEpochOnly) {
  AugmentParams p;
  p.h = p.w = 28; p.pad = 2; p.flip = true; p.seed = 11;
  // Offsets cover [0, 4] evenly and flips are fair over many samples.
  std::vector<int> oy(5, 0), ox(5, 0);
  int flips = 0;
  const int n = 20000;
  for (int s = 0; s < n; ++s) {
    const AugmentDraw d = augment_draw(p, augment_key(0, s));
    ++oy[d.oy];
    ++ox[d.ox];
    flips += d.flip;
  }
  for (int k = 0; k < 5; ++k) {
    EXPECT_NEAR(oy[k], n / 5, n / 50) << "oy = " << k;
    EXPECT_NEAR(ox[k], n / 5, n / 50) << "ox = " << k;
  }
  EXPECT_NEAR(flips, n / 2, n / 50);
  // Another epoch redraws; the same (sample, epoch) gives the same draw in any batch.
  int same = 0;
  for (int s = 0; s < 1000; ++s) {
    const AugmentDraw a = augment_draw(p, augment_key(0, s)), b = augment_draw(p, augment_key(1, s));
    same += a.oy == b.oy && a.ox == b.ox && a.flip == b.flip;
  }
  EXPECT_LT(same, 100);  // 1/50 expected by chance
  const std::vector<uint8_t> img = images(10, 28, 28, 1);
  const std::vector<float> l = lut();
  const std::vector<int64_t> b1 = {augment_key(2, 3), augment_key(2, 7), augment_key(2, 1)},
                             b2 = {augment_key(2, 7), augment_key(2, 9)};
  EXPECT_EQ(augment_index(b1[1]), 7);
  std::vector<float> o1(3 * 784), o2(2 * 784);
  augment_batch_cpu(o1.data(), img.data(), 10, b1.data(), 3, p, l.data());
  augment_batch_cpu(o2.data(), img.data(), 10, b2.data(), 2, p, l.data());
  for (int e = 0; e < 784; ++e) ASSERT_EQ(o1[784 + e], o2[e]) << "sample 7 differs between batches at " << e;
}

#if KILN_WITH_CUDA
// Device copy of host data for the types the harness's DeviceBuffer lacks.
template <typename T>
class DevVec {
 public:
  explicit DevVec(const std::vector<T>& h) : n_(h.size()) {
    KILN_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n_, 1) * sizeof(T)));
    KILN_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DevVec() { KILN_CUDA_WARN(cudaFree(p_)); }
  DevVec(const DevVec&) = delete;
  DevVec& operator=(const DevVec&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

TEST(AugmentGpu, MatchesCpuBitForBit) {
  KILN_REQUIRE_GPU();
  const int64_t n = 300, h = 28, w = 28, c = 1, B = 257;
  const std::vector<uint8_t> img = images(n, h, w, c);
  std::vector<int64_t> idx(B);
  for (int64_t b = 0; b < B; ++b) idx[b] = augment_key(5, (b * 37 + 5) % n);
  const std::vector<float> l = lut();
  for (int64_t pad : {0, 2, 4})
    for (bool flip : {false, true}) {
      AugmentParams p;
      p.h = h; p.w = w; p.c = c; p.pad = pad; p.flip = flip; p.seed = 99;
      std::vector<float> want(B * h * w * c);
      augment_batch_cpu(want.data(), img.data(), n, idx.data(), B, p, l.data());
      DevVec<uint8_t> dimg(img);
      DevVec<int64_t> didx(idx);
      test::DeviceBuffer<float> dl(l), out(want.size());
      test::DeviceBuffer<bf16> out16(want.size());
      out.poison();
      augment_batch(out.get(), dimg.get(), didx.get(), B, p, dl.get(), nullptr);
      augment_batch(out16.get(), dimg.get(), didx.get(), B, p, dl.get(), nullptr);
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(test::bitwise_equal(out.to_host(), want, "fp32 pad " + std::to_string(pad)));
      EXPECT_TRUE(test::bitwise_equal(test::from_bf16(out16.to_host()), test::round_to_bf16(want),
                                      "bf16 pad " + std::to_string(pad)));
    }
}
#else
TEST(AugmentGpu, MatchesCpuBitForBit) { KILN_REQUIRE_GPU(); }
#endif

}  // namespace
}  // namespace kiln
