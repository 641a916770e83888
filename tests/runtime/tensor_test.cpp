#include "runtime/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "runtime/allocator.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

// Runs fn, expects an Error whose message contains every part.
template <typename Fn>
::testing::AssertionResult throws_with(Fn fn, std::initializer_list<const char*> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* p : parts)
      if (msg.find(p) == std::string::npos) return ::testing::AssertionFailure() << "'" << p << "' not in: " << msg;
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no kiln::Error thrown";
}

TEST(Shape, BasicsAndNegativeIndexing) {
  Shape s{2, 3, 4};
  EXPECT_EQ(s.ndim(), 3);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s[0], 2);
  EXPECT_EQ(s.str(), "(2, 3, 4)");
  EXPECT_EQ(Shape{}.numel(), 1);  // a scalar
  EXPECT_EQ(Shape{}.str(), "()");
  EXPECT_EQ((Shape{5, 0, 3}.numel()), 0);
  EXPECT_EQ(s, (Shape{2, 3, 4}));
  EXPECT_NE(s, (Shape{2, 3}));
  s[1] = 7;
  EXPECT_EQ(s.numel(), 56);
  EXPECT_THROW(s[3], Error);
  EXPECT_THROW(s[-4], Error);
  EXPECT_EQ((Shape{1, 2, 3, 4, 5}.numel()), 120);
}

TEST(Shape, MoreThanFiveDimsIsAnError) {
  EXPECT_TRUE(throws_with([] { Shape s{1, 2, 3, 4, 5, 6}; }, {"at most 5 dims", "got 6"}));
}

TEST(Tensor, OverflowingShapesAreRejectedWithTheTensorsName) {
  const int64_t big = int64_t(1) << 40;
  EXPECT_TRUE(throws_with([&] { Tensor::empty(Shape{big, big}, DType::f32, Device::cpu(), "wte"); },
                          {"tensor 'wte'", "(1099511627776, 1099511627776)", "int64"}));
  // Fits as a count but not as bytes.
  EXPECT_TRUE(throws_with([&] { Tensor::empty(Shape{int64_t(1) << 62}, DType::f32, Device::cpu(), "acts"); },
                          {"tensor 'acts'", "bytes"}));
  EXPECT_TRUE(throws_with([&] { Tensor::empty(Shape{3, 1 << 30, 1 << 30, 1 << 30}, DType::u8, Device::cpu(), "x"); },
                          {"tensor 'x'"}));
  EXPECT_TRUE(throws_with([&] { Tensor::empty(Shape{2, -3}, DType::f32, Device::cpu(), "neg"); },
                          {"tensor 'neg'", "negative"}));
  EXPECT_TRUE(throws_with([&] { Shape{std::numeric_limits<int64_t>::max(), 2}.numel("tensor 'w'"); },
                          {"tensor 'w'"}));
  // A huge but valid request fails as out of memory, not as a crash.
  EXPECT_THROW(Tensor::empty(Shape{int64_t(1) << 58}, DType::u8, Device::cpu(), "huge"), OutOfMemory);
}

TEST(Tensor, EmptyZerosFullArange) {
  Tensor z = Tensor::zeros(Shape{3, 5}, DType::f32, Device::cpu(), "z");
  EXPECT_TRUE(z.defined());
  EXPECT_EQ(z.numel(), 15);
  EXPECT_EQ(z.nbytes(), 60u);
  EXPECT_EQ(z.name(), "z");
  for (float v : z.to_vector()) EXPECT_EQ(v, 0.0f);
  Tensor f = Tensor::full(Shape{4}, 2.5, DType::bf16, Device::cpu());
  for (float v : f.to_vector()) EXPECT_EQ(v, 2.5f);
  Tensor i = Tensor::full(Shape{3}, -7, DType::i32, Device::cpu());
  EXPECT_EQ(i.data<int32_t>()[2], -7);
  Tensor a = Tensor::arange(300, DType::f32, Device::cpu());
  EXPECT_EQ(a.to_vector()[299], 299.0f);
  Tensor ab = Tensor::arange(300, DType::bf16, Device::cpu());
  EXPECT_EQ(ab.to_vector()[257], 256.0f);  // bf16 has 8 significant bits: 257 rounds to even
  EXPECT_EQ(ab.to_vector()[259], 260.0f);
  Tensor ai = Tensor::arange(5, DType::i32, Device::cpu());
  EXPECT_EQ(ai.data<int32_t>()[4], 4);
  Tensor ad = Tensor::arange(5, DType::f64, Device::cpu());
  EXPECT_EQ(ad.to_vector_f64()[3], 3.0);
  Tensor e = Tensor::empty(Shape{0, 4}, DType::f32, Device::cpu());
  EXPECT_TRUE(e.defined());
  EXPECT_EQ(e.numel(), 0);
  EXPECT_TRUE(e.to_vector().empty());
  EXPECT_FALSE(Tensor().defined());
  EXPECT_THROW(Tensor().raw(), Error);
}

TEST(Tensor, TypedAccessChecksTheDtype) {
  Tensor t = Tensor::zeros(Shape{2}, DType::f32, Device::cpu(), "logits");
  EXPECT_NE(t.data<float>(), nullptr);
  EXPECT_TRUE(throws_with([&] { t.data<int32_t>(); }, {"logits", "f32", "i32"}));
}

TEST(Tensor, F64IsCpuOnly) {
  EXPECT_TRUE(throws_with([] { Tensor::empty(Shape{2}, DType::f64, Device::cuda(0), "grad"); }, {"grad"}));
}

TEST(Tensor, ViewsShareStorage) {
  Tensor base = Tensor::arange(24, DType::f32, Device::cpu());
  base.set_name("base");
  Tensor v = base.view(4, Shape{2, 5});  // elements 4..13
  EXPECT_EQ(v.shape(), (Shape{2, 5}));
  std::vector<float> got = v.to_vector();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(got[i], 4.0f + i);
  v.fill_(-1.0);
  std::vector<float> all = base.to_vector();
  EXPECT_EQ(all[3], 3.0f);
  EXPECT_EQ(all[4], -1.0f);
  EXPECT_EQ(all[13], -1.0f);
  EXPECT_EQ(all[14], 14.0f);
  Tensor vv = v.view(5, Shape{5});  // a view of a view: elements 9..13 of base
  vv.fill_(7.0);
  EXPECT_EQ(base.to_vector()[9], 7.0f);
  EXPECT_EQ(base.to_vector()[8], -1.0f);
  EXPECT_EQ(static_cast<float*>(vv.raw()), base.data<float>() + 9);
  EXPECT_TRUE(throws_with([&] { base.view(20, Shape{5}); }, {"base", "offset 20"}));
  EXPECT_THROW(base.view(-1, Shape{1}), Error);
  EXPECT_EQ(base.view(24, Shape{0}).numel(), 0);
  Tensor r = base.reshape(Shape{4, 6});
  EXPECT_EQ(r.data<float>(), base.data<float>());
  EXPECT_TRUE(throws_with([&] { base.reshape(Shape{5, 5}); }, {"base", "(5, 5)"}));
  // The view keeps the storage alive after the base is gone.
  Tensor keep = Tensor::arange(8, DType::f32, Device::cpu()).view(6, Shape{2});
  EXPECT_EQ(keep.to_vector()[1], 7.0f);
}

TEST(Tensor, CastsRoundAsDocumented) {
  const std::vector<float> vals = {0.0f, 1.0f, -2.5f, 1.00390625f /* 1 + 2^-8: ties to even */, 3.14159265f,
                                   1e30f, -1e-30f, 65504.0f};
  Tensor f = Tensor::from_vector(vals, Shape{8}, DType::f32, Device::cpu());
  Tensor b = f.cast(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  std::vector<float> back = b.to_vector();
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(back[i], round_bf16(vals[i])) << i;
  EXPECT_EQ(back[3], 1.0f);
  Tensor d = f.cast(DType::f64);
  std::vector<double> dv = d.to_vector_f64();
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(dv[i], static_cast<double>(vals[i]));
  EXPECT_EQ(d.cast(DType::f32).to_vector(), vals);
  // Integers to float; float to integers truncates and saturates.
  Tensor ints = Tensor::from_vector(std::vector<int32_t>{-3, 0, 16777217, 2147483647}, Shape{4}, Device::cpu());
  std::vector<float> fi = ints.cast(DType::f32).to_vector();
  EXPECT_EQ(fi[0], -3.0f);
  EXPECT_EQ(fi[2], 16777216.0f);  // 2^24 + 1 rounds to even
  EXPECT_EQ(fi[3], 2147483648.0f);
  Tensor odd = Tensor::from_vector({-2.7f, 2.7f, 1e20f, -1e20f, NAN, 300.0f}, Shape{6}, DType::f32, Device::cpu());
  Tensor oi = odd.cast(DType::i32);
  const int32_t* p = oi.data<int32_t>();
  EXPECT_EQ(p[0], -2);
  EXPECT_EQ(p[1], 2);
  EXPECT_EQ(p[2], std::numeric_limits<int32_t>::max());
  EXPECT_EQ(p[3], std::numeric_limits<int32_t>::min());
  EXPECT_EQ(p[4], 0);
  EXPECT_EQ(odd.cast(DType::u8).data<uint8_t>()[5], 255);
  Tensor nanb = Tensor::from_vector({NAN}, Shape{1}, DType::bf16, Device::cpu());
  EXPECT_TRUE(std::isnan(nanb.to_vector()[0]));
  Tensor u16 = Tensor::from_vector({65535.0f, 3.0f}, Shape{2}, DType::u16, Device::cpu());
  EXPECT_EQ(u16.data<uint16_t>()[0], 65535);
  EXPECT_EQ(u16.to_vector()[1], 3.0f);
  // Same dtype: an independent copy.
  Tensor same = f.cast(DType::f32);
  same.fill_(0.0);
  EXPECT_EQ(f.to_vector()[1], 1.0f);
}

TEST(Tensor, CopiesAndClones) {
  Tensor a = Tensor::arange(10, DType::f32, Device::cpu());
  Tensor c = a.clone();
  EXPECT_NE(c.data<float>(), a.data<float>());
  c.fill_(1.0);
  EXPECT_EQ(a.to_vector()[5], 5.0f);
  Tensor d = Tensor::zeros(Shape{2, 5}, DType::f32, Device::cpu(), "dst");
  d.copy_from(a);  // numel matches, shapes may differ
  EXPECT_EQ(d.to_vector()[9], 9.0f);
  Tensor t = a.to(Device::cpu());
  EXPECT_NE(t.data<float>(), a.data<float>());
  EXPECT_EQ(t.to_vector(), a.to_vector());
  Tensor wrong = Tensor::zeros(Shape{9}, DType::f32, Device::cpu(), "small");
  EXPECT_TRUE(throws_with([&] { wrong.copy_from(a); }, {"small", "(9)", "(10)"}));
  Tensor wrong_type = Tensor::zeros(Shape{10}, DType::bf16, Device::cpu());
  EXPECT_THROW(wrong_type.copy_from(a), Error);
  // Overlapping views on the host.
  a.view(2, Shape{5}).copy_from(a.view(0, Shape{5}));
  EXPECT_EQ(a.to_vector(), (std::vector<float>{0, 1, 0, 1, 2, 3, 4, 7, 8, 9}));
}

TEST(Tensor, FromVectorChecksTheCount) {
  EXPECT_TRUE(throws_with([] { Tensor::from_vector({1.0f, 2.0f}, Shape{3}, DType::f32, Device::cpu()); },
                          {"2 values", "(3)"}));
  Tensor t = Tensor::from_vector({1.0f, 2.0f, 3.0f}, Shape{3}, DType::f64, Device::cpu());
  EXPECT_EQ(t.to_vector_f64()[2], 3.0);
}

TEST(Tensor, UnsupportedOpsNameTheTensor) {
  Tensor h = Tensor::zeros(Shape{2}, DType::f16, Device::cpu(), "half");
  EXPECT_EQ(h.to_vector()[0], 0.0f);
  EXPECT_TRUE(throws_with([&] { h.fill_(1.0); }, {"half", "f16"}));
  EXPECT_TRUE(throws_with([&] { h.uniform_(1, 0); }, {"half"}));
  Tensor i = Tensor::zeros(Shape{2}, DType::i32, Device::cpu(), "ids");
  EXPECT_TRUE(throws_with([&] { i.normal_(1, 0); }, {"ids", "i32"}));
}

TEST(Tensor, MemoryGoesBackToTheAllocator) {
  CachingAllocator& a = allocator_for(Device::cpu());
  const size_t before = a.stats().in_use;
  {
    Tensor t = Tensor::empty(Shape{1000, 1000}, DType::f32, Device::cpu());
    EXPECT_GE(a.stats().in_use, before + 4000000u);
  }
  EXPECT_EQ(a.stats().in_use, before);
}

// --- GPU ---------------------------------------------------------------------

TEST(TensorGpu, HostDeviceRoundTrips) {
  KILN_REQUIRE_GPU();
  const Device g = Device::cuda(0);
  for (int64_t n : test::standard_sizes()) {
    std::vector<float> v = test::random_uniform(static_cast<size_t>(n), 3);
    Tensor h = Tensor::from_vector(v, Shape{n}, DType::f32, Device::cpu());
    Tensor d = h.to(g);
    EXPECT_TRUE(d.device() == g);
    EXPECT_TRUE(test::bitwise_equal(d.to_vector(), v, "round trip n=" + std::to_string(n)));
    Tensor d2 = d.clone();  // device to device
    EXPECT_TRUE(test::bitwise_equal(d2.to_vector(), v, "clone on the GPU"));
  }
}

TEST(TensorGpu, FillsViewsAndZeros) {
  KILN_REQUIRE_GPU();
  const Device g = Device::cuda(0);
  Tensor a = Tensor::arange(1000, DType::f32, g);
  EXPECT_TRUE(test::bitwise_equal(a.to_vector(), Tensor::arange(1000, DType::f32, Device::cpu()).to_vector(), "arange"));
  Tensor ab = Tensor::arange(1000, DType::bf16, g);
  EXPECT_TRUE(test::bitwise_equal(ab.to_vector(), Tensor::arange(1000, DType::bf16, Device::cpu()).to_vector(), "arange bf16"));
  Tensor ai = Tensor::arange(1000, DType::i32, g);
  EXPECT_EQ(ai.to_vector()[999], 999.0f);
  a.view(10, Shape{5}).fill_(-2.0);
  std::vector<float> v = a.to_vector();
  EXPECT_EQ(v[9], 9.0f);
  EXPECT_EQ(v[10], -2.0f);
  EXPECT_EQ(v[14], -2.0f);
  EXPECT_EQ(v[15], 15.0f);
  a.view(100, Shape{10}).zero_();
  EXPECT_EQ(a.to_vector()[105], 0.0f);
  for (DType t : {DType::f32, DType::bf16, DType::i32, DType::u16, DType::u8}) {
    Tensor f = Tensor::full(Shape{33}, 3.0, t, g);
    for (float x : f.to_vector()) ASSERT_EQ(x, 3.0f) << dtype_name(t);
  }
  // Host view into device view, and back.
  Tensor h = Tensor::from_vector({1, 2, 3}, Shape{3}, DType::f32, Device::cpu());
  a.view(500, Shape{3}).copy_from(h);
  EXPECT_EQ(a.to_vector()[501], 2.0f);
  Tensor back = Tensor::zeros(Shape{3}, DType::f32, Device::cpu());
  back.copy_from(a.view(500, Shape{3}));
  EXPECT_EQ(back.to_vector(), (std::vector<float>{1, 2, 3}));
}

TEST(TensorGpu, CastsMatchTheCpuBitForBit) {
  KILN_REQUIRE_GPU();
  const Device g = Device::cuda(0);
  std::vector<float> v = test::random_uniform(4097, 11, -1000.0f, 1000.0f);
  v[0] = NAN;
  v[1] = INFINITY;
  v[2] = 1.00390625f;
  Tensor h = Tensor::from_vector(v, Shape{4097}, DType::f32, Device::cpu());
  Tensor d = h.to(g);
  EXPECT_TRUE(test::bitwise_equal(d.cast(DType::bf16).to_vector(), h.cast(DType::bf16).to_vector(), "f32->bf16"));
  EXPECT_TRUE(test::bitwise_equal(d.cast(DType::bf16).cast(DType::f32).to_vector(),
                                  h.cast(DType::bf16).cast(DType::f32).to_vector(), "bf16->f32"));
  std::vector<int32_t> ints(1000);
  for (int i = 0; i < 1000; ++i) ints[static_cast<size_t>(i)] = (i * 7919) % 40000000 - 20000000;
  Tensor hi = Tensor::from_vector(ints, Shape{1000}, Device::cpu());
  Tensor di = hi.to(g);
  EXPECT_TRUE(test::bitwise_equal(di.cast(DType::f32).to_vector(), hi.cast(DType::f32).to_vector(), "i32->f32"));
  EXPECT_TRUE(test::bitwise_equal(di.cast(DType::bf16).to_vector(), hi.cast(DType::bf16).to_vector(), "i32->bf16"));
  Tensor u8 = Tensor::arange(256, DType::f32, Device::cpu()).cast(DType::u8);
  EXPECT_TRUE(test::bitwise_equal(u8.to(g).cast(DType::f32).to_vector(), u8.cast(DType::f32).to_vector(), "u8->f32"));
  Tensor u16 = Tensor::arange(4097, DType::f32, Device::cpu()).cast(DType::u16);
  EXPECT_TRUE(test::bitwise_equal(u16.to(g).cast(DType::bf16).to_vector(), u16.cast(DType::bf16).to_vector(), "u16->bf16"));
  EXPECT_THROW(d.cast(DType::i32), Error);  // not a CUDA cast
}

}  // namespace
}  // namespace kiln
