// The CUDA attention kernels' real source (kernels/attention.cu and
// kernels/attention_backward.cu, tensor-core bf16 and scalar fp32 paths),
// compiled for the host and run under tests/kernels/cuda_host_emulation.h,
// against the fp64 CPU reference with the same criteria as the GPU tests.
// This exercises the tiling, fragment layouts, masking (causal,
// bidirectional, packed segments, head dims 16 to 128), the skipping of
// fully masked tiles (counted), online softmax and the launchers on machines
// without a GPU; it says nothing about speed,
// registers or races a real GPU could expose (see the emulator's notes).
// Only in CPU-only builds: with CUDA on, the same names come from the real
// library and attention_test.cpp runs the kernels on the device instead.
#include <gtest/gtest.h>

#include <algorithm>
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
std::vector<float> to_f32(const std::vector<float>& v) { return v; }
std::vector<float> to_f32(const std::vector<bf16>& v) { return test::from_bf16(v); }

// NaN in every element, so anything the kernels fail to write shows.
template <typename F>
std::vector<F> poisoned(size_t n) {
  std::vector<F> v(n);
  std::memset(static_cast<void*>(v.data()), 0xFF, n * sizeof(F));
  return v;
}

// Forward + backward through the launchers, separate (stride C) or fused
// (B, T, 3·C) q/k/v and dq/dk/dv buffers; results as floats. The emulated
// "device" is the host, so the mask's segment ids are the shape's own.
template <typename F>
Result run_emulated(const Shape& s, float scale, const Inputs& in, bool fused) {
  const int64_t C = C_of(s), stride = fused ? 3 * C : C;
  const AttentionMask mask = mask_of(s);
  std::vector<F> out = poisoned<F>(bhd_size(s));
  Result r;
  r.lse = poisoned<float>(lse_size(s));
  std::vector<float> ws = poisoned<float>(attention_backward_workspace_floats(s.B, s.T, s.H));
  const std::vector<F> dout = to_storage<F>(in.dout);
  if (fused) {
    const std::vector<F> qkv = to_storage<F>(fuse_qkv(s, in.q, in.k, in.v));
    std::vector<F> dqkv = poisoned<F>(qkv.size());
    const F* q = qkv.data();
    F* dq = dqkv.data();
    attention_forward(out.data(), r.lse.data(), q, q + C, q + 2 * C, s.B, s.T, s.H, s.D, stride, scale, mask,
                      nullptr);
    attention_backward(dq, dq + C, dq + 2 * C, ws.data(), dout.data(), q, q + C, q + 2 * C, out.data(), r.lse.data(),
                       s.B, s.T, s.H, s.D, stride, scale, mask, nullptr);
    const std::vector<float> g = to_f32(dqkv);
    r.dq = unfuse(s, g, 0);
    r.dk = unfuse(s, g, 1);
    r.dv = unfuse(s, g, 2);
  } else {
    const std::vector<F> q = to_storage<F>(in.q), k = to_storage<F>(in.k), v = to_storage<F>(in.v);
    std::vector<F> dq = poisoned<F>(bhd_size(s)), dk = poisoned<F>(bhd_size(s)), dv = poisoned<F>(bhd_size(s));
    attention_forward(out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D, stride, scale, mask,
                      nullptr);
    attention_backward(dq.data(), dk.data(), dv.data(), ws.data(), dout.data(), q.data(), k.data(), v.data(),
                       out.data(), r.lse.data(), s.B, s.T, s.H, s.D, stride, scale, mask, nullptr);
    r.dq = to_f32(dq);
    r.dk = to_f32(dk);
    r.dv = to_f32(dv);
  }
  r.out = to_f32(out);
  return r;
}

// T: one, a prime below one tile, exactly one tile, one past a tile, two
// tiles and one (the tile is 64 queries and 64 keys; 32 queries in the
// D = 128 dK/dV kernel). Every head dim, causal and not.
std::vector<Shape> bf16_shapes() {
  std::vector<Shape> v;
  int n = 0;
  for (int T : {1, 17, 64, 65, 129})
    for (int D : {16, 32, 64, 128})
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
  EXPECT_TRUE(bf16_result_within_budget(run_emulated<bf16>(s, scale, in, /*fused=*/false), plain, ref, name_of(s)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionEmulated, ::testing::ValuesIn(bf16_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// The scalar fp32 kernels (one warp per row) at a few small shapes: each key
// costs several emulated shuffles, so sizes stay small. D = 16 leaves half
// of each warp idle.
TEST(AttentionEmulatedFp32, MatchesReference) {
  for (const Shape& s : {Shape{1, 1, 1, 32, false}, Shape{2, 17, 2, 64, true}, Shape{1, 20, 1, 128, false},
                         Shape{1, 9, 3, 32, true}, Shape{2, 21, 2, 16, false}, Shape{1, 13, 1, 16, true}}) {
    const float scale = default_scale(s);
    const Inputs in = make_inputs(s, 2000 + s.T);
    EXPECT_TRUE(fp32_result_close(run_emulated<float>(s, scale, in, false), reference(s, scale, in), name_of(s)));
  }
}

// Packed rows equal each example run alone (the fp64 reference and the plain
// bf16 implementation on every example by itself), forward and gradients,
// every head dim, causal and bidirectional, over the shared packings.
class AttentionEmulatedPacked : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionEmulatedPacked, Bf16EqualsEachExampleAlone) {
  EXPECT_TRUE(packed_bf16_matches_alone(GetParam(), [](const Shape& sh, float scale, const Inputs& in) {
    return run_emulated<bf16>(sh, scale, in, false);
  }));
}

std::vector<Shape> emulated_packed_shapes() {
  std::vector<Shape> v;
  for (const Packing& p : shared_packings())
    for (int D : {16, 32, 64, 128})
      for (bool causal : {false, true}) v.push_back(packed_shape(p.T, D == 64 ? 2 : 1, D, causal, p.rows, p.name));
  for (bool causal : {false, true}) v.push_back(random_packed_shape(300, 2, 64, causal, 7));
  return v;
}

INSTANTIATE_TEST_SUITE_P(Packings, AttentionEmulatedPacked, ::testing::ValuesIn(emulated_packed_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// The scalar kernels have no tiles; small packings keep the emulated
// shuffles (several per key) affordable.
TEST(AttentionEmulatedPackedFp32, EqualsEachExampleAlone) {
  const Packing small{"small", 40, {{13, 1, 26}, {40}, {5, 5, 1, 29}}};
  for (const Packing& p : {shared_packings()[1], small})  // tiny, small
    for (int D : {16, 64})
      for (bool causal : {false, true}) {
        const Shape s = packed_shape(p.T, 1, D, causal, p.rows, p.name);
        EXPECT_TRUE(packed_fp32_matches_alone(s, [](const Shape& sh, float scale, const Inputs& in) {
          return run_emulated<float>(sh, scale, in, false);
        }));
      }
}

// Fully masked tiles are skipped, not computed and discarded: the number of
// tensor-core products each bf16 kernel issues is proportional to the number
// of (query tile, key tile) pairs holding at least one visible pair, counted
// here by brute force with the test's own mask rule (`hidden`). The constant
// of proportionality (products per tile pair) comes from a dense
// bidirectional run of one 64-token tile, which visits every pair.
int64_t visible_tile_pairs(const Shape& s, int q_tile, int k_tile) {
  int64_t n = 0;
  for (int b = 0; b < s.B; ++b)
    for (int q0 = 0; q0 < s.T; q0 += q_tile)
      for (int k0 = 0; k0 < s.T; k0 += k_tile) {
        bool any = false;
        for (int i = q0; i < std::min(q0 + q_tile, s.T) && !any; ++i)
          for (int j = k0; j < std::min(k0 + k_tile, s.T) && !any; ++j) any = !hidden(s, b, i, j);
        n += any;
      }
  return n * s.H;
}

// Products per bf16 launch of one forward + backward: {forward, dK/dV, dQ}.
std::vector<uint64_t> mma_counts(const Shape& s) {
  auto& launches = ::kiln_emu::counters().mma_per_launch;
  launches.clear();
  (void)run_emulated<bf16>(s, default_scale(s), make_inputs(s, 9), false);
  EXPECT_EQ(launches.size(), 4u) << "forward, delta, dK/dV, dQ";
  if (launches.size() != 4) return {0, 0, 0};
  EXPECT_EQ(launches[1], 0u) << "the delta kernel does no products";
  return {launches[0], launches[2], launches[3]};
}

TEST(AttentionEmulatedPacked, SkipsFullyMaskedTiles) {
  const std::vector<Packing> packings = shared_packings();
  for (const Packing& p : {packings[0], packings[2], packings[3]})  // mixed, aligned, padded
    for (int D : {16, 128})
      for (bool causal : {false, true}) {
        const Shape s = packed_shape(p.T, 1, D, causal, p.rows, p.name);
        const Shape dense{1, 64, 1, D, false};
        const std::vector<uint64_t> got = mma_counts(s), all = mma_counts(dense);
        const int dkdv_queries = D >= 128 ? 32 : 64;  // the dK/dV pass's query tile
        const int tiles[3][2] = {{64, 64}, {dkdv_queries, 64}, {64, 64}};  // (query tile, key tile) per kernel
        const char* names[3] = {"forward", "dK/dV", "dQ"};
        for (int kernel = 0; kernel < 3; ++kernel) {
          const int64_t vis = visible_tile_pairs(s, tiles[kernel][0], tiles[kernel][1]);
          const int64_t every = visible_tile_pairs(Shape{s.B, s.T, s.H, s.D, false}, tiles[kernel][0], tiles[kernel][1]);
          const int64_t one = visible_tile_pairs(dense, tiles[kernel][0], tiles[kernel][1]);
          ASSERT_GT(all[kernel], 0u);
          EXPECT_EQ(got[kernel] * static_cast<uint64_t>(one), all[kernel] * static_cast<uint64_t>(vis))
              << name_of(s) << " " << names[kernel] << ": " << got[kernel] << " products for " << vis
              << " visible tile pairs; " << all[kernel] << " for " << one << " in a dense run";
          EXPECT_LT(vis, every) << name_of(s) << ": the packing should leave some tiles fully masked";
        }
      }
}

// Fused (B, T, 3·C) q/k/v and dq/dk/dv give the same bits as separate
// tensors (and so fill the whole dQKV buffer), for both paths.
TEST(AttentionEmulatedLayout, FusedQkvMatchesSeparate) {
  for (const Shape& s : {Shape{1, 70, 2, 64, true}, Shape{1, 40, 3, 16, false},
                         packed_shape(70, 2, 32, true, {{20, 1, 49}, {70}}, "layout")}) {
    const Inputs in = make_inputs(s, 3000);
    const Result a = run_emulated<bf16>(s, default_scale(s), in, false);
    const Result f = run_emulated<bf16>(s, default_scale(s), in, true);
    EXPECT_TRUE(test::bitwise_equal(f.out, a.out, "bf16 out " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.lse, a.lse, "bf16 lse " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dq, a.dq, "bf16 dq " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dk, a.dk, "bf16 dk " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dv, a.dv, "bf16 dv " + name_of(s)));
  }
  for (const Shape& s : {Shape{1, 10, 2, 32, false}, packed_shape(10, 2, 16, false, {{3, 7}}, "layout")}) {
    const Inputs in = make_inputs(s, 3001);
    const Result a = run_emulated<float>(s, default_scale(s), in, false);
    const Result f = run_emulated<float>(s, default_scale(s), in, true);
    EXPECT_TRUE(test::bitwise_equal(f.out, a.out, "f32 out " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dq, a.dq, "f32 dq " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dk, a.dk, "f32 dk " + name_of(s)));
    EXPECT_TRUE(test::bitwise_equal(f.dv, a.dv, "f32 dv " + name_of(s)));
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
