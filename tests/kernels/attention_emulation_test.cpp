// The CUDA attention kernels' real source (kernels/attention.cu and
// kernels/attention_backward.cu, tensor-core bf16 and scalar fp32 paths),
// compiled for the host and run under tests/kernels/cuda_host_emulation.h,
// against the fp64 CPU reference with the same criteria as the GPU tests.
// This exercises the tiling, fragment layouts, masking, online softmax and
// the launchers on machines without a GPU; it says nothing about speed,
// registers or races a real GPU could expose (see the emulator's notes).
// Only in CPU-only builds: with CUDA on, the same names come from the real
// library and attention_test.cpp runs the kernels on the device instead.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/common.h"

#if !KILN_WITH_CUDA
// clang-format off
#include "tests/kernels/cuda_host_emulation.h"
#include "kernels/attention.cu"
#include "kernels/attention_backward.cu"
// clang-format on
#endif

#include "tests/harness/harness.h"
#include "tests/kernels/attention_testing.h"

namespace kiln {
namespace {

using namespace attention_testing;  // NOLINT(build/namespaces): this test's own helpers

#if !KILN_WITH_CUDA

template <typename F>
std::vector<F> to_storage(const std::vector<float>& v);
template <>
std::vector<float> to_storage<float>(const std::vector<float>& v) {
  return v;
}
template <>
std::vector<bf16> to_storage<bf16>(const std::vector<float>& v) {
  return test::to_bf16(v);
}
std::vector<float> to_f32(const std::vector<bf16>& v) { return test::from_bf16(v); }

// NaN in every element, so anything the kernels fail to write shows.
template <typename F>
std::vector<F> poisoned(size_t n) {
  std::vector<F> v(n);
  std::memset(static_cast<void*>(v.data()), 0xFF, n * sizeof(F));
  return v;
}

template <typename F>
struct EmuRun {
  std::vector<F> out, dq, dk, dv;
  std::vector<float> lse;
};

// Forward + backward through the launchers, separate (stride C) or fused
// (B, T, 3·C) q/k/v and dq/dk/dv buffers.
template <typename F>
EmuRun<F> run_emulated(const Shape& s, float scale, const Inputs& in, bool fused) {
  const int64_t C = C_of(s), stride = fused ? 3 * C : C;
  EmuRun<F> r;
  r.out = poisoned<F>(bhd_size(s));
  r.lse = poisoned<float>(lse_size(s));
  std::vector<float> ws = poisoned<float>(attention_backward_workspace_floats(s.B, s.T, s.H));
  const std::vector<F> dout = to_storage<F>(in.dout);
  if (fused) {
    const std::vector<F> qkv = to_storage<F>(fuse_qkv(s, in.q, in.k, in.v));
    std::vector<F> dqkv = poisoned<F>(qkv.size());
    const F* q = qkv.data();
    F* dq = dqkv.data();
    attention_forward(r.out.data(), r.lse.data(), q, q + C, q + 2 * C, s.B, s.T, s.H, s.D, stride, scale, mask_of(s),
                      nullptr);
    attention_backward(dq, dq + C, dq + 2 * C, ws.data(), dout.data(), q, q + C, q + 2 * C, r.out.data(),
                       r.lse.data(), s.B, s.T, s.H, s.D, stride, scale, mask_of(s), nullptr);
    r.dq = unfuse(s, dqkv, 0);
    r.dk = unfuse(s, dqkv, 1);
    r.dv = unfuse(s, dqkv, 2);
  } else {
    const std::vector<F> q = to_storage<F>(in.q), k = to_storage<F>(in.k), v = to_storage<F>(in.v);
    r.dq = poisoned<F>(bhd_size(s));
    r.dk = poisoned<F>(bhd_size(s));
    r.dv = poisoned<F>(bhd_size(s));
    attention_forward(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D, stride, scale,
                      mask_of(s), nullptr);
    attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), ws.data(), dout.data(), q.data(), k.data(), v.data(),
                       r.out.data(), r.lse.data(), s.B, s.T, s.H, s.D, stride, scale, mask_of(s), nullptr);
  }
  return r;
}

// T: one, a prime below one tile, exactly one tile, one past a tile, two
// tiles and one (the tile is 64 queries and 64 keys; 32 queries in the
// D = 128 dK/dV kernel). Every head dim, causal and not.
std::vector<Shape> bf16_shapes() {
  std::vector<Shape> v;
  int n = 0;
  for (int T : {1, 17, 64, 65, 129})
    for (int D : {32, 64, 128})
      for (bool causal : {false, true}) {
        v.push_back({1 + n % 2, T, 1 + (n / 2) % 2, D, causal});
        ++n;
      }
  return v;
}

class AttentionEmulated : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionEmulated, Bf16WithinTwiceThePlainBf16Error) {
  const Shape s = GetParam();
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 1000 + s.T * 13 + s.D);
  const Naive ref = reference(s, scale, in);
  const Result plain = plain_bf16_attention(s, scale, in.q, in.k, in.v, in.dout);
  const EmuRun<bf16> got = run_emulated<bf16>(s, scale, in, /*fused=*/false);
  EXPECT_TRUE(within_bf16_budget(to_f32(got.out), plain.out, ref.out, "out " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(got.lse, plain.lse, ref.lse, "lse " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dq), plain.dq, ref.dq, "dq " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dk), plain.dk, ref.dk, "dk " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dv), plain.dv, ref.dv, "dv " + name_of(s)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionEmulated, ::testing::ValuesIn(bf16_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// The scalar fp32 kernels (one warp per row) at a few small shapes: each key
// costs several emulated shuffles, so sizes stay small.
TEST(AttentionEmulatedFp32, MatchesReference) {
  for (const Shape& s : {Shape{1, 1, 1, 32, false}, Shape{2, 17, 2, 64, true}, Shape{1, 20, 1, 128, false},
                         Shape{1, 9, 3, 32, true}}) {
    const float scale = default_scale(s);
    const Inputs in = make_inputs(s, 2000 + s.T);
    const Naive ref = reference(s, scale, in);
    const EmuRun<float> got = run_emulated<float>(s, scale, in, false);
    const test::Tolerance tol{1e-4, 1e-5};
    EXPECT_TRUE(test::all_close(got.out, convert<double, float>(ref.out), tol, "out " + name_of(s)));
    EXPECT_TRUE(test::all_close(got.lse, convert<double, float>(ref.lse), tol, "lse " + name_of(s)));
    EXPECT_TRUE(test::all_close(got.dq, convert<double, float>(ref.dq), tol, "dq " + name_of(s)));
    EXPECT_TRUE(test::all_close(got.dk, convert<double, float>(ref.dk), tol, "dk " + name_of(s)));
    EXPECT_TRUE(test::all_close(got.dv, convert<double, float>(ref.dv), tol, "dv " + name_of(s)));
  }
}

// Fused (B, T, 3·C) q/k/v and dq/dk/dv give the same bits as separate
// tensors (and so fill the whole dQKV buffer), for both paths.
TEST(AttentionEmulatedLayout, FusedQkvMatchesSeparate) {
  {
    const Shape s{1, 70, 2, 64, true};
    const Inputs in = make_inputs(s, 3000);
    const EmuRun<bf16> a = run_emulated<bf16>(s, default_scale(s), in, false);
    const EmuRun<bf16> f = run_emulated<bf16>(s, default_scale(s), in, true);
    EXPECT_TRUE(test::bitwise_equal(to_f32(f.out), to_f32(a.out), "bf16 out"));
    EXPECT_TRUE(test::bitwise_equal(f.lse, a.lse, "bf16 lse"));
    EXPECT_TRUE(test::bitwise_equal(to_f32(f.dq), to_f32(a.dq), "bf16 dq"));
    EXPECT_TRUE(test::bitwise_equal(to_f32(f.dk), to_f32(a.dk), "bf16 dk"));
    EXPECT_TRUE(test::bitwise_equal(to_f32(f.dv), to_f32(a.dv), "bf16 dv"));
  }
  {
    const Shape s{1, 10, 2, 32, false};
    const Inputs in = make_inputs(s, 3001);
    const EmuRun<float> a = run_emulated<float>(s, default_scale(s), in, false);
    const EmuRun<float> f = run_emulated<float>(s, default_scale(s), in, true);
    EXPECT_TRUE(test::bitwise_equal(f.out, a.out, "f32 out"));
    EXPECT_TRUE(test::bitwise_equal(f.dq, a.dq, "f32 dq"));
    EXPECT_TRUE(test::bitwise_equal(f.dk, a.dk, "f32 dk"));
    EXPECT_TRUE(test::bitwise_equal(f.dv, a.dv, "f32 dv"));
  }
}

// The emulator itself: one m16n8k16 and the two ldmatrix forms against
// their definitions, so a kernel bug and an emulator bug cannot cancel out
// unnoticed in the tests above.
TEST(AttentionEmulatedSelfCheck, MmaAndLdmatrixFollowThePtxLayouts) {
  // A (16×16) and B as Bᵀ (8×16, i.e. [n][k]) in shared memory, small integers (exact).
  constexpr int LD = 24;  // pitch with the kernels' +8 padding
  float want[16][8] = {};
  auto a_val = [](int r, int k) { return static_cast<float>((r * 3 + k * 5) % 7 - 3); };
  auto b_val = [](int k, int n) { return static_cast<float>((k * 2 + n * 7) % 5 - 2); };
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < 16; ++k) want[r][n] += a_val(r, k) * b_val(k, n);
  float got[16][8];
  for (auto& row : got)
    for (float& x : row) x = std::numeric_limits<float>::quiet_NaN();
  uint32_t trans_ok = 1;
  auto body = [&]() {
    auto* sm = reinterpret_cast<__nv_bfloat16*>(::kiln_emu::shared_memory());
    __nv_bfloat16* sA = sm;            // (16, LD) row-major A
    __nv_bfloat16* sBt = sm + 16 * LD;  // (16, LD): rows 0..7 = Bᵀ[n][k], rows 8..15 = Bᵀ of n + 8 (zeros)
    __nv_bfloat16* sB = sm + 32 * LD;   // (16, LD) B[k][n], n < 16
    const int lane = static_cast<int>(threadIdx.x);
    if (lane == 0) {
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 16; ++k) {
          sA[r * LD + k] = __float2bfloat16_rn(a_val(r, k));
          sBt[r * LD + k] = __float2bfloat16_rn(r < 8 ? b_val(k, r) : 0.0f);
          sB[k * LD + r] = __float2bfloat16_rn(r < 8 ? b_val(k, r) : 0.0f);
        }
    }
    __syncthreads();
    uint32_t a[4], b[4], bt[4];
    attn::ldsm_x4(a, attn::a_frag_ptr(sA, LD, 0, 0, lane));
    attn::ldsm_x4(b, attn::nk_frag_ptr(sBt, LD, 0, 0, lane));
    attn::ldsm_x4_trans(bt, attn::a_frag_ptr(sB, LD, 0, 0, lane));
    if (b[0] != bt[0] || b[1] != bt[1]) trans_ok = 0;  // both give B's fragment for n-tile 0
    float c[4] = {0, 0, 0, 0};
    attn::mma_bf16(c, a, b[0], b[1]);
    const int g = lane / 4, t = lane % 4;
    got[g][2 * t] = c[0];
    got[g][2 * t + 1] = c[1];
    got[g + 8][2 * t] = c[2];
    got[g + 8][2 * t + 1] = c[3];
  };
  ::kiln_emu::run_block(dim3(1), dim3(32), dim3(0), body);
  EXPECT_EQ(trans_ok, 1u) << "ldmatrix.trans of B[k][n] differs from ldmatrix of Bᵀ[n][k]";
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) EXPECT_EQ(got[r][n], want[r][n]) << "C(" << r << ", " << n << ")";
}

#else  // KILN_WITH_CUDA

TEST(AttentionEmulated, OnlyInCpuOnlyBuilds) {
  GTEST_SKIP() << "CUDA build: the kernels run on the device in attention_test.cpp instead";
}

#endif

}  // namespace
}  // namespace kiln
