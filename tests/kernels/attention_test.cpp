// Fused attention: CPU reference against an independent full-matrix
// formulation and finite differences; CUDA kernels (bf16 and fp32) against the
// fp64 CPU reference over the shape grid, with FlashAttention's
// criterion for bf16 (error at most ~2x that of a plain bf16 implementation
// of the same math, computed here on the CPU); determinism; the fused-QKV
// (B, T, 3·C) stride layout.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/attention_testing.h"

namespace kiln {
namespace {

using test::all_close;
using test::bitwise_equal;
using test::Tolerance;
using namespace attention_testing;  // NOLINT(build/namespaces): this test's own helpers

std::vector<Shape> cpu_shapes() {
  return {{1, 1, 1, 4, false}, {1, 1, 1, 4, true},   {2, 5, 3, 8, false},  {2, 5, 3, 8, true},
          {1, 17, 2, 16, true}, {3, 9, 1, 1, false}, {1, 33, 2, 32, false}, {2, 31, 2, 5, true}};
}

TEST(AttentionCpu, ForwardBackwardMatchNaiveFormulation) {
  for (const Shape& s : cpu_shapes()) {
    const float scale = default_scale(s);
    const Inputs in = make_inputs(s, 100 + s.T * 7 + s.D);
    const Naive want = naive_attention(s, scale, convert<float, double>(in.q), convert<float, double>(in.k),
                                       convert<float, double>(in.v), convert<float, double>(in.dout));
    const Naive got = reference(s, scale, in);
    const Tolerance f64{1e-11, 1e-13};
    EXPECT_TRUE(all_close(got.out, want.out, f64, "out f64 " + name_of(s)));
    EXPECT_TRUE(all_close(got.lse, want.lse, f64, "lse f64 " + name_of(s)));
    EXPECT_TRUE(all_close(got.dq, want.dq, f64, "dq f64 " + name_of(s)));
    EXPECT_TRUE(all_close(got.dk, want.dk, f64, "dk f64 " + name_of(s)));
    EXPECT_TRUE(all_close(got.dv, want.dv, f64, "dv f64 " + name_of(s)));

    // The float instantiation, against the same fp64 numbers.
    std::vector<float> out(bhd_size(s)), lse(lse_size(s)), dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
    attention_forward_cpu<float>(out.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, s.D,
                                 C_of(s), scale, s.causal);
    attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), in.dout.data(), in.q.data(), in.k.data(),
                                  in.v.data(), out.data(), lse.data(), s.B, s.T, s.H, s.D, C_of(s), scale, s.causal);
    const Tolerance f32{1e-4, 1e-5};
    EXPECT_TRUE(all_close(out, convert<double, float>(want.out), f32, "out f32 " + name_of(s)));
    EXPECT_TRUE(all_close(lse, convert<double, float>(want.lse), f32, "lse f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dq, convert<double, float>(want.dq), f32, "dq f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dk, convert<double, float>(want.dk), f32, "dk f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dv, convert<double, float>(want.dv), f32, "dv f32 " + name_of(s)));
  }
}

// Hand-checkable facts: with causal masking row 0 sees only key 0, so O_0 = V_0
// and LSE_0 = scale·q_0·k_0; with T = 1 the same holds without the mask.
TEST(AttentionCpu, FirstCausalRowCopiesFirstValue) {
  for (const Shape& s : {Shape{2, 6, 3, 4, true}, Shape{3, 1, 2, 8, false}}) {
    const float scale = 0.5f;
    const Inputs in = make_inputs(s, 7);
    std::vector<float> out(bhd_size(s)), lse(lse_size(s));
    attention_forward_cpu<float>(out.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, s.D,
                                 C_of(s), scale, s.causal);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h) {
        const size_t row0 = static_cast<size_t>(b) * s.T * C_of(s) + static_cast<size_t>(h) * s.D;
        float dot = 0;
        for (int d = 0; d < s.D; ++d) {
          EXPECT_EQ(out[row0 + d], in.v[row0 + d]) << name_of(s) << " b" << b << " h" << h << " d" << d;
          dot += in.q[row0 + d] * in.k[row0 + d];
        }
        EXPECT_NEAR(lse[(static_cast<size_t>(b) * s.H + h) * s.T], scale * dot, 1e-5) << name_of(s);
      }
  }
}

// Finite differences of L = Σ O ⊙ W through the fp64 reference, with q, k, v
// packed in one fused (B, T, 3·C) buffer, so the stride layout is differentiated too.
TEST(AttentionCpu, BackwardMatchesFiniteDifferences) {
  for (const Shape& s : {Shape{2, 5, 2, 3, false}, Shape{2, 5, 2, 3, true}, Shape{1, 7, 1, 4, true}}) {
    const float scale = default_scale(s);
    const int64_t C = C_of(s), stride = 3 * C;
    const std::vector<double> x = test::random_uniform_f64(rows_of(s) * stride, 11 + s.T, -1.5, 1.5);
    const std::vector<double> w = test::random_uniform_f64(bhd_size(s), 12 + s.T);
    std::vector<double> out(bhd_size(s)), lse(lse_size(s));
    auto loss = [&](const std::vector<double>& xx) {
      attention_forward_cpu<double>(out.data(), lse.data(), xx.data(), xx.data() + C, xx.data() + 2 * C, s.B, s.T,
                                    s.H, s.D, stride, scale, s.causal);
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += out[i] * w[i];
      return l;
    };
    loss(x);
    std::vector<double> grad(x.size(), std::numeric_limits<double>::quiet_NaN());  // every entry must be written
    attention_backward_cpu<double>(grad.data(), grad.data() + C, grad.data() + 2 * C, w.data(), x.data(),
                                   x.data() + C, x.data() + 2 * C, out.data(), lse.data(), s.B, s.T, s.H, s.D, stride,
                                   scale, s.causal);
    EXPECT_TRUE(test::check_gradient(loss, x, grad, "attention qkv " + name_of(s)));
  }
}

// The fused (B, T, 3·C) layout gives bit-identical results to separate
// tensors, and backward writes every element of a fused dQKV buffer.
TEST(AttentionCpu, FusedQkvLayoutMatchesSeparate) {
  const Shape s{2, 13, 3, 8, true};
  const float scale = default_scale(s);
  const int64_t C = C_of(s);
  const Inputs in = make_inputs(s, 21);
  std::vector<float> out(bhd_size(s)), lse(lse_size(s)), dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
  attention_forward_cpu<float>(out.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, s.D, C,
                               scale, s.causal);
  attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), in.dout.data(), in.q.data(), in.k.data(),
                                in.v.data(), out.data(), lse.data(), s.B, s.T, s.H, s.D, C, scale, s.causal);

  const std::vector<float> qkv = fuse_qkv(s, in.q, in.k, in.v);
  std::vector<float> out2(bhd_size(s)), lse2(lse_size(s));
  std::vector<float> dqkv(qkv.size(), std::numeric_limits<float>::quiet_NaN());
  attention_forward_cpu<float>(out2.data(), lse2.data(), qkv.data(), qkv.data() + C, qkv.data() + 2 * C, s.B, s.T,
                               s.H, s.D, 3 * C, scale, s.causal);
  attention_backward_cpu<float>(dqkv.data(), dqkv.data() + C, dqkv.data() + 2 * C, in.dout.data(), qkv.data(),
                                qkv.data() + C, qkv.data() + 2 * C, out2.data(), lse2.data(), s.B, s.T, s.H, s.D,
                                3 * C, scale, s.causal);
  EXPECT_TRUE(bitwise_equal(out2, out, "out"));
  EXPECT_TRUE(bitwise_equal(lse2, lse, "lse"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 0), dq, "dq"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 1), dk, "dk"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 2), dv, "dv"));
}

// The plain-bf16 baseline that sets the GPU error budget must itself be a
// sensible bf16 computation: clearly worse than fp32, clearly better than noise.
TEST(AttentionCpu, PlainBf16BaselineIsMeaningful) {
  for (const Shape& s : {Shape{1, 129, 2, 64, false}, Shape{2, 64, 1, 32, true}}) {
    const float scale = default_scale(s);
    const Inputs in = make_inputs(s, 31);
    const Naive ref = reference(s, scale, in);
    const Result plain = plain_bf16_attention(s, scale, in.q, in.k, in.v, in.dout);
    const std::pair<const std::vector<float>*, const std::vector<double>*> pairs[] = {
        {&plain.out, &ref.out}, {&plain.dq, &ref.dq}, {&plain.dk, &ref.dk}, {&plain.dv, &ref.dv}};
    for (const auto& [got, want] : pairs) {
      const double rel = max_err(*got, *want) / max_abs(*want);
      EXPECT_GT(rel, 1e-4) << name_of(s) << ": bf16 rounding should show";
      EXPECT_LT(rel, 5e-2) << name_of(s) << ": bf16 baseline is broken";
    }
  }
}

TEST(AttentionCpu, RejectsBadShapes) {
  std::vector<float> buf(64);
  EXPECT_THROW(attention_forward_cpu<float>(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), 1, 2, 2, 4,
                                            /*stride=*/7, 1.0f, false),
               Error);
  EXPECT_THROW(attention_forward_cpu<float>(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), 1, 2, 1, 0,
                                            0, 1.0f, false),
               Error);
}

// ===========================================================================
// CUDA
// ===========================================================================
#if KILN_WITH_CUDA

using test::DeviceBuffer;

// Host-side argument checks run before any CUDA call, so they are tested
// without a GPU too.
TEST(AttentionArgs, RejectsUnsupportedHeadDimAndMisalignedStride) {
  bf16* p = nullptr;
  float* f = nullptr;
  try {
    attention_forward(p, f, p, p, p, 1, 8, 1, 48, 48, 1.0f, false, nullptr);
    ADD_FAILURE() << "head dim 48 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 48"), std::string::npos) << e.what();
  }
  try {
    attention_backward(f, f, f, f, f, f, f, f, f, f, 1, 8, 1, 96, 96, 1.0f, true, nullptr);
    ADD_FAILURE() << "head dim 96 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 96"), std::string::npos) << e.what();
  }
  try {
    attention_forward(p, f, p, p, p, 1, 8, 2, 64, /*stride=*/129, 1.0f, false, nullptr);
    ADD_FAILURE() << "bf16 stride 129 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 8"), std::string::npos) << e.what();
  }
}

// The grid: T ∈ {1, 17, 64, 127, 128, 129, 1000} × D ∈ {32, 64, 128}
// × causal and not, with (B, H) varying across cases.
std::vector<Shape> gpu_shapes() {
  const int Bs[] = {1, 2, 3, 2}, Hs[] = {1, 3, 2, 1};
  std::vector<Shape> v;
  int n = 0;
  for (int T : {1, 17, 64, 127, 128, 129, 1000})
    for (int D : {32, 64, 128})
      for (bool causal : {false, true}) {
        const int B = T >= 1000 ? 1 : Bs[n % 4], H = T >= 1000 ? 2 : Hs[n % 4];
        v.push_back({B, T, H, D, causal});
        ++n;
      }
  return v;
}

// One forward + backward on the GPU through the launchers. `stride` 3·C
// runs the fused layout: q/k/v and dq/dk/dv are parts of one buffer each.
template <typename F>
struct GpuRun {
  std::vector<F> out, dq, dk, dv;
  std::vector<float> lse;
};

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

template <typename F>
GpuRun<F> run_gpu(const Shape& s, float scale, const Inputs& in, bool fused) {
  const int64_t C = C_of(s);
  const int64_t stride = fused ? 3 * C : C;
  GpuRun<F> r;
  DeviceBuffer<F> dout(to_storage<F>(in.dout)), out(bhd_size(s));
  DeviceBuffer<float> lse(lse_size(s)), ws(attention_backward_workspace_floats(s.B, s.T, s.H));
  out.poison();
  lse.poison();
  if (fused) {
    DeviceBuffer<F> qkv(to_storage<F>(fuse_qkv(s, in.q, in.k, in.v))), dqkv(rows_of(s) * 3 * C);
    dqkv.poison();
    const F* q = qkv.get();
    F* dq = dqkv.get();
    attention_forward(out.get(), lse.get(), q, q + C, q + 2 * C, s.B, s.T, s.H, s.D, stride, scale, s.causal,
                      nullptr);
    attention_backward(dq, dq + C, dq + 2 * C, ws.get(), dout.get(), q, q + C, q + 2 * C, out.get(), lse.get(), s.B,
                       s.T, s.H, s.D, stride, scale, s.causal, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<F> g = dqkv.to_host();
    r.dq = unfuse(s, g, 0);
    r.dk = unfuse(s, g, 1);
    r.dv = unfuse(s, g, 2);
  } else {
    DeviceBuffer<F> q(to_storage<F>(in.q)), k(to_storage<F>(in.k)), v(to_storage<F>(in.v));
    DeviceBuffer<F> dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
    dq.poison();
    dk.poison();
    dv.poison();
    attention_forward(out.get(), lse.get(), q.get(), k.get(), v.get(), s.B, s.T, s.H, s.D, stride, scale, s.causal,
                      nullptr);
    attention_backward(dq.get(), dk.get(), dv.get(), ws.get(), dout.get(), q.get(), k.get(), v.get(), out.get(),
                       lse.get(), s.B, s.T, s.H, s.D, stride, scale, s.causal, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    r.dq = dq.to_host();
    r.dk = dk.to_host();
    r.dv = dv.to_host();
  }
  r.out = out.to_host();
  r.lse = lse.to_host();
  return r;
}

class AttentionGpu : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionGpu, Bf16WithinTwiceThePlainBf16Error) {
  KILN_REQUIRE_GPU();
  const Shape s = GetParam();
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 1000 + s.T * 13 + s.D);
  const Naive ref = reference(s, scale, in);
  const Result plain = plain_bf16_attention(s, scale, in.q, in.k, in.v, in.dout);
  const GpuRun<bf16> got = run_gpu<bf16>(s, scale, in, /*fused=*/false);
  EXPECT_TRUE(within_bf16_budget(to_f32(got.out), plain.out, ref.out, "out " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(got.lse, plain.lse, ref.lse, "lse " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dq), plain.dq, ref.dq, "dq " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dk), plain.dk, ref.dk, "dk " + name_of(s)));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dv), plain.dv, ref.dv, "dv " + name_of(s)));
}

TEST_P(AttentionGpu, Fp32MatchesReference) {
  KILN_REQUIRE_GPU();
  const Shape s = GetParam();
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 2000 + s.T * 13 + s.D);
  const Naive ref = reference(s, scale, in);
  const GpuRun<float> got = run_gpu<float>(s, scale, in, /*fused=*/false);
  const Tolerance tol{1e-4, 1e-5};
  EXPECT_TRUE(all_close(got.out, convert<double, float>(ref.out), tol, "out " + name_of(s)));
  EXPECT_TRUE(all_close(got.lse, convert<double, float>(ref.lse), tol, "lse " + name_of(s)));
  EXPECT_TRUE(all_close(got.dq, convert<double, float>(ref.dq), tol, "dq " + name_of(s)));
  EXPECT_TRUE(all_close(got.dk, convert<double, float>(ref.dk), tol, "dk " + name_of(s)));
  EXPECT_TRUE(all_close(got.dv, convert<double, float>(ref.dv), tol, "dv " + name_of(s)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGpu, ::testing::ValuesIn(gpu_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// Two runs give identical bits; the fused-QKV layout gives the same bits as
// separate tensors (same math, different addresses) and fills all of dQKV.
template <typename F>
void check_determinism_and_layout(const Shape& s) {
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 3000 + s.T);
  const GpuRun<F> a = run_gpu<F>(s, scale, in, false), b = run_gpu<F>(s, scale, in, false);
  const GpuRun<F> f = run_gpu<F>(s, scale, in, true);
  const std::string n = name_of(s);
  EXPECT_TRUE(bitwise_equal(to_f32(a.out), to_f32(b.out), "out rerun " + n));
  EXPECT_TRUE(bitwise_equal(a.lse, b.lse, "lse rerun " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(a.dq), to_f32(b.dq), "dq rerun " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(a.dk), to_f32(b.dk), "dk rerun " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(a.dv), to_f32(b.dv), "dv rerun " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(f.out), to_f32(a.out), "out fused " + n));
  EXPECT_TRUE(bitwise_equal(f.lse, a.lse, "lse fused " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(f.dq), to_f32(a.dq), "dq fused " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(f.dk), to_f32(a.dk), "dk fused " + n));
  EXPECT_TRUE(bitwise_equal(to_f32(f.dv), to_f32(a.dv), "dv fused " + n));
}

TEST(AttentionGpuLayout, Bf16DeterministicAndFusedQkv) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{2, 1000, 3, 64, true}, Shape{3, 129, 2, 128, false}, Shape{1, 17, 4, 32, true}})
    check_determinism_and_layout<bf16>(s);
}

TEST(AttentionGpuLayout, Fp32DeterministicAndFusedQkv) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{2, 300, 3, 64, true}, Shape{1, 129, 2, 128, false}})
    check_determinism_and_layout<float>(s);
}

// The fused layout's results are also right (not just equal to the separate
// run): a fused run against the reference at a shape with several heads.
TEST(AttentionGpuLayout, Bf16FusedQkvWithinBudget) {
  KILN_REQUIRE_GPU();
  const Shape s{2, 129, 4, 64, true};
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 4000);
  const Naive ref = reference(s, scale, in);
  const Result plain = plain_bf16_attention(s, scale, in.q, in.k, in.v, in.dout);
  const GpuRun<bf16> got = run_gpu<bf16>(s, scale, in, /*fused=*/true);
  EXPECT_TRUE(within_bf16_budget(to_f32(got.out), plain.out, ref.out, "out fused"));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dq), plain.dq, ref.dq, "dq fused"));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dk), plain.dk, ref.dk, "dk fused"));
  EXPECT_TRUE(within_bf16_budget(to_f32(got.dv), plain.dv, ref.dv, "dv fused"));
}

#endif  // KILN_WITH_CUDA

}  // namespace
}  // namespace kiln
