// Fused attention: the mask rule and its range/tile helpers against brute
// force; the CPU attention (sgemm tiles) against the scalar oracle it
// replaced (tests/kernels/attention_scalar.h) over tile-straddling shapes,
// against an independent full-matrix formulation and finite differences,
// with causal, bidirectional and packed (segment-id) masks, packed == each
// example run alone, bit for bit, and equal results at 1, 2 and 3 threads;
// CUDA kernels (bf16 and fp32) against the
// fp64 CPU reference over the shape grid, with FlashAttention's
// criterion for bf16 (error at most ~2x that of a plain bf16 implementation
// of the same math, computed here on the CPU); determinism; the fused-QKV
// (B, T, 3·C) stride layout.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "runtime/error.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/kernels/attention_scalar.h"
#include "tests/kernels/attention_testing.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::all_close;
using test::bitwise_equal;
using test::Tolerance;
using namespace attention_testing;  // NOLINT(build/namespaces): this test's own helpers

std::vector<Shape> cpu_shapes() {
  std::vector<Shape> v = {{1, 1, 1, 4, false},   {1, 1, 1, 4, true},    {2, 5, 3, 8, false},
                          {2, 5, 3, 8, true},    {1, 17, 2, 16, true},  {3, 9, 1, 1, false},
                          {1, 33, 2, 32, false}, {2, 31, 2, 5, true}};
  for (bool causal : {false, true}) {
    v.push_back(packed_shape(20, 2, 8, causal, {{1, 19}, {7, 6, 7}}, "tiny"));
    v.push_back(packed_shape(33, 1, 5, causal, {{1, 1, 1, 30}, {33}, {10, 10}}, "ones_pad"));
  }
  return v;
}


// ===========================================================================
// The mask rule and the helpers the CUDA kernels skip tiles with
// ===========================================================================

TEST(AttentionMask, VisibleRule) {
  EXPECT_TRUE(attention_visible(3, 3, 5, 5, true));    // itself
  EXPECT_TRUE(attention_visible(3, 1, 5, 5, true));    // earlier, same segment
  EXPECT_FALSE(attention_visible(3, 4, 5, 5, true));   // later, causal
  EXPECT_TRUE(attention_visible(3, 4, 5, 5, false));   // later, bidirectional
  EXPECT_FALSE(attention_visible(3, 1, 5, 4, true));   // other segment
  EXPECT_FALSE(attention_visible(3, 4, 5, 6, false));  // other segment, bidirectional
  EXPECT_TRUE(causal_mask().causal);
  EXPECT_FALSE(bidirectional_mask().causal);
  EXPECT_EQ(causal_mask().segment_ids, nullptr);
}

// Random non-decreasing id rows (runs of length 1 included) and no ids at all:
// for every query run [first, last] the key range is exactly the set of keys
// some query of the run sees (and the transpose for key runs), and the block
// test says "all visible" exactly when every pair of the block is.
TEST(AttentionMask, RangesAndBlocksAreExactForNonDecreasingIds) {
  std::mt19937 rng(12345);
  int checked = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int T = 1 + trial % 13;
    std::vector<int32_t> seg(static_cast<size_t>(T));
    int32_t id = static_cast<int32_t>(rng() % 5) - 2;
    for (int t = 0; t < T; ++t) {
      if (t > 0 && rng() % 3 == 0) id += 1 + static_cast<int32_t>(rng() % 2);
      seg[t] = id;
    }
    for (bool use_seg : {true, false}) {
      const int32_t* sp = use_seg ? seg.data() : nullptr;
      auto sid = [&](int t) { return use_seg ? seg[t] : 0; };
      for (bool causal : {false, true}) {
        auto vis = [&](int i, int j) { return attention_visible(i, j, sid(i), sid(j), causal); };
        for (int first = 0; first < T; ++first)
          for (int last = first; last < T; ++last) {
            const IndexRange keys = attention_keys_for_queries(sp, T, causal, first, last);
            const IndexRange queries = attention_queries_for_keys(sp, T, causal, first, last);
            for (int x = 0; x < T; ++x) {
              bool key_seen = false, query_sees = false;
              for (int y = first; y <= last; ++y) {
                key_seen = key_seen || vis(y, x);      // key x seen by a query of the run
                query_sees = query_sees || vis(x, y);  // query x sees a key of the run
              }
              EXPECT_EQ(key_seen, x >= keys.begin && x < keys.end)
                  << "T " << T << " causal " << causal << " queries " << first << ".." << last << " key " << x;
              EXPECT_EQ(query_sees, x >= queries.begin && x < queries.end)
                  << "T " << T << " causal " << causal << " keys " << first << ".." << last << " query " << x;
              ++checked;
            }
          }
        if (T > 9) continue;  // blocks: O(T^6) below
        for (int q0 = 0; q0 < T; ++q0)
          for (int q1 = q0; q1 < T; ++q1)
            for (int k0 = 0; k0 < T; ++k0)
              for (int k1 = k0; k1 < T; ++k1) {
                bool all = true;
                for (int i = q0; i <= q1; ++i)
                  for (int j = k0; j <= k1; ++j) all = all && vis(i, j);
                EXPECT_EQ(all, attention_block_all_visible(q0, k1, sid(q0), sid(q1), sid(k0), sid(k1), causal))
                    << "T " << T << " causal " << causal << " block " << q0 << ".." << q1 << " x " << k0 << ".."
                    << k1;
              }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

TEST(AttentionMask, DecreasingIdsAreRejected) {
  const std::vector<int32_t> ok = {-3, -3, 0, 0, 4, 4, 4, 9}, bad = {0, 0, 1, 1, 2, 2, 1, 3};  // (2, 4)
  EXPECT_NO_THROW(check_attention_segments(ok.data(), 2, 4, "test"));
  EXPECT_NO_THROW(check_attention_segments(nullptr, 2, 4, "test"));
  try {
    check_attention_segments(bad.data(), 2, 4, "test");
    ADD_FAILURE() << "decreasing ids accepted";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("batch row 1"), std::string::npos) << m;
    EXPECT_NE(m.find("position 2"), std::string::npos) << m;
  }
  // The CPU references check before computing anything.
  const Shape s{2, 4, 1, 4, true};
  const Inputs in = make_inputs(s, 5);
  std::vector<float> out(bhd_size(s)), lse(lse_size(s)), g(bhd_size(s));
  const AttentionMask m = causal_mask(bad.data());
  EXPECT_THROW(attention_forward_cpu<float>(out.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), 2, 4, 1,
                                            4, 4, 0.5f, m),
               InputError);
  EXPECT_THROW(attention_backward_cpu<float>(g.data(), g.data(), g.data(), in.dout.data(), in.q.data(), in.k.data(),
                                             in.v.data(), out.data(), lse.data(), 2, 4, 1, 4, 4, 0.5f, m),
               InputError);
}

// ===========================================================================
// CPU reference
// ===========================================================================

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
                                 C_of(s), scale, mask_of(s));
    attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), in.dout.data(), in.q.data(), in.k.data(),
                                  in.v.data(), out.data(), lse.data(), s.B, s.T, s.H, s.D, C_of(s), scale, mask_of(s));
    const Tolerance f32{1e-4, 1e-5};
    EXPECT_TRUE(all_close(out, convert<double, float>(want.out), f32, "out f32 " + name_of(s)));
    EXPECT_TRUE(all_close(lse, convert<double, float>(want.lse), f32, "lse f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dq, convert<double, float>(want.dq), f32, "dq f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dk, convert<double, float>(want.dk), f32, "dk f32 " + name_of(s)));
    EXPECT_TRUE(all_close(dv, convert<double, float>(want.dv), f32, "dv f32 " + name_of(s)));
  }
}

// The tiled CPU attention against the scalar oracle, fp64 (to rounding: the
// two sum in different orders) and fp32 (both against the fp64 oracle, the
// tiled one no worse than the scalar one by more than a rounding step), over
// shapes whose runs start, end and straddle the 64-query tiles, head dims
// that are not multiples of the vector width, the fused (B, T, 3·C) layout
// and every shared packing.
std::vector<Shape> oracle_shapes() {
  std::vector<Shape> v;
  int n = 0;
  for (int T : {1, 2, 63, 64, 65, 128, 129, 200})
    for (int D : {1, 5, 32})
      for (bool causal : {false, true}) {
        const int B = 1 + n % 2, H = 1 + (n / 2) % 3;
        v.push_back({B, T, H, D, causal});
        ++n;
      }
  for (const Packing& p : shared_packings())
    for (bool causal : {false, true}) v.push_back(packed_shape(p.T, 2, 16, causal, p.rows, p.name));
  return v;
}

template <typename Real>
Naive run_tiled(const Shape& s, float scale, const Inputs& in, bool fused) {
  const int64_t C = C_of(s), stride = fused ? 3 * C : C;
  std::vector<Real> q = convert<float, Real>(in.q), k = convert<float, Real>(in.k), v = convert<float, Real>(in.v);
  const std::vector<Real> dout = convert<float, Real>(in.dout);
  std::vector<Real> out(bhd_size(s)), lse(lse_size(s));
  Naive r;
  if (fused) {
    const std::vector<Real> qkv = fuse_qkv(s, q, k, v);
    std::vector<Real> g(qkv.size(), std::numeric_limits<Real>::quiet_NaN());
    attention_forward_cpu<Real>(out.data(), lse.data(), qkv.data(), qkv.data() + C, qkv.data() + 2 * C, s.B, s.T, s.H,
                                s.D, stride, scale, mask_of(s));
    attention_backward_cpu<Real>(g.data(), g.data() + C, g.data() + 2 * C, dout.data(), qkv.data(), qkv.data() + C,
                                 qkv.data() + 2 * C, out.data(), lse.data(), s.B, s.T, s.H, s.D, stride, scale,
                                 mask_of(s));
    r.dq = convert<Real, double>(unfuse(s, g, 0));
    r.dk = convert<Real, double>(unfuse(s, g, 1));
    r.dv = convert<Real, double>(unfuse(s, g, 2));
  } else {
    std::vector<Real> dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
    attention_forward_cpu<Real>(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D, C, scale,
                                mask_of(s));
    attention_backward_cpu<Real>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                 out.data(), lse.data(), s.B, s.T, s.H, s.D, C, scale, mask_of(s));
    r.dq = convert<Real, double>(dq);
    r.dk = convert<Real, double>(dk);
    r.dv = convert<Real, double>(dv);
  }
  r.out = convert<Real, double>(out);
  r.lse = convert<Real, double>(lse);
  return r;
}

template <typename Real>
Naive run_scalar(const Shape& s, float scale, const Inputs& in) {
  const int64_t C = C_of(s);
  const std::vector<Real> q = convert<float, Real>(in.q), k = convert<float, Real>(in.k),
                          v = convert<float, Real>(in.v), dout = convert<float, Real>(in.dout);
  std::vector<Real> out(bhd_size(s)), lse(lse_size(s)), dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
  attention_forward_scalar<Real>(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D, C, scale,
                                 mask_of(s));
  attention_backward_scalar<Real>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                  out.data(), lse.data(), s.B, s.T, s.H, s.D, C, scale, mask_of(s));
  return Naive{convert<Real, double>(out), convert<Real, double>(lse), convert<Real, double>(dq),
               convert<Real, double>(dk), convert<Real, double>(dv)};
}

// Largest |a - b| over two fp64 vectors (+inf on a size mismatch or NaN).
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(a[i] - b[i]);
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    m = std::max(m, e);
  }
  return m;
}

TEST(AttentionCpu, TiledMatchesScalarOracle) {
  int cases = 0;
  for (const Shape& s : oracle_shapes()) {
    const float scale = default_scale(s);
    const Inputs in = make_inputs(s, 700 + s.T * 5 + s.D);
    const Naive oracle = run_scalar<double>(s, scale, in);
    const Naive oracle32 = run_scalar<float>(s, scale, in);
    for (bool fused : {false, true}) {
      const std::string n = name_of(s) + (fused ? " fused" : "");
      const Naive t64 = run_tiled<double>(s, scale, in, fused);
      const Tolerance f64{1e-12, 1e-13};
      EXPECT_TRUE(all_close(t64.out, oracle.out, f64, "out f64 " + n));
      EXPECT_TRUE(all_close(t64.lse, oracle.lse, f64, "lse f64 " + n));
      EXPECT_TRUE(all_close(t64.dq, oracle.dq, f64, "dq f64 " + n));
      EXPECT_TRUE(all_close(t64.dk, oracle.dk, f64, "dk f64 " + n));
      EXPECT_TRUE(all_close(t64.dv, oracle.dv, f64, "dv f64 " + n));
      const Naive t32 = run_tiled<float>(s, scale, in, fused);
      const std::pair<const std::vector<double>*, const std::vector<double>*> parts[] = {
          {&t32.out, &oracle32.out}, {&t32.lse, &oracle32.lse}, {&t32.dq, &oracle32.dq},
          {&t32.dk, &oracle32.dk},   {&t32.dv, &oracle32.dv}};
      const std::vector<double>* exact[] = {&oracle.out, &oracle.lse, &oracle.dq, &oracle.dk, &oracle.dv};
      const char* names[] = {"out", "lse", "dq", "dk", "dv"};
      for (int p = 0; p < 5; ++p) {
        // fp32 error of the tiled version vs the scalar one, both against fp64.
        const double et = max_diff(*parts[p].first, *exact[p]), es = max_diff(*parts[p].second, *exact[p]);
        const double floor = 4e-7 * std::max(1.0, max_abs(*exact[p]));
        EXPECT_LE(et, 2.0 * es + floor) << names[p] << " f32 " << n << ": tiled error " << et << ", scalar " << es;
      }
      ++cases;
    }
  }
  EXPECT_GE(cases, 100);
}

// Every output is the same at 1, 2 and 3 threads (each (batch, head) pair is
// computed whole by one part), plain and packed, forward and backward.
TEST(AttentionCpu, SameAtThreadCounts) {
  for (const Shape& s : {Shape{2, 128, 3, 32, true}, Shape{3, 65, 2, 16, false},
                         packed_shape(150, 3, 32, true, shared_packings()[0].rows, "mixed")}) {
    const Inputs in = make_inputs(s, 900 + s.T);
    auto run = [&] {
      const Naive r = run_tiled<float>(s, default_scale(s), in, /*fused=*/true);
      std::vector<double> all;
      for (const std::vector<double>* v : {&r.out, &r.lse, &r.dq, &r.dk, &r.dv}) all.insert(all.end(), v->begin(), v->end());
      return all;
    };
    EXPECT_TRUE(test::same_at_thread_counts(run, name_of(s)));
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
                                 C_of(s), scale, mask_of(s));
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
  std::vector<Shape> shapes = {Shape{2, 5, 2, 3, false}, Shape{2, 5, 2, 3, true}, Shape{1, 7, 1, 4, true}};
  for (bool causal : {false, true}) shapes.push_back(packed_shape(7, 2, 3, causal, {{3, 1, 3}, {2, 4}}, "fd"));
  for (const Shape& s : shapes) {
    const float scale = default_scale(s);
    const int64_t C = C_of(s), stride = 3 * C;
    const std::vector<double> x = test::random_uniform_f64(rows_of(s) * stride, 11 + s.T, -1.5, 1.5);
    const std::vector<double> w = test::random_uniform_f64(bhd_size(s), 12 + s.T);
    std::vector<double> out(bhd_size(s)), lse(lse_size(s));
    auto loss = [&](const std::vector<double>& xx) {
      attention_forward_cpu<double>(out.data(), lse.data(), xx.data(), xx.data() + C, xx.data() + 2 * C, s.B, s.T,
                                    s.H, s.D, stride, scale, mask_of(s));
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += out[i] * w[i];
      return l;
    };
    loss(x);
    std::vector<double> grad(x.size(), std::numeric_limits<double>::quiet_NaN());  // every entry must be written
    attention_backward_cpu<double>(grad.data(), grad.data() + C, grad.data() + 2 * C, w.data(), x.data(),
                                   x.data() + C, x.data() + 2 * C, out.data(), lse.data(), s.B, s.T, s.H, s.D, stride,
                                   scale, mask_of(s));
    EXPECT_TRUE(test::check_gradient(loss, x, grad, "attention qkv " + name_of(s)));
  }
}

// The fused (B, T, 3·C) layout gives bit-identical results to separate
// tensors, and backward writes every element of a fused dQKV buffer (here
// with packed rows: a segment of one example has no gradient path to another).
TEST(AttentionCpu, FusedQkvLayoutMatchesSeparate) {
  const Shape s = packed_shape(13, 3, 8, true, {{5, 1, 7}, {13}}, "fused");
  const float scale = default_scale(s);
  const int64_t C = C_of(s);
  const Inputs in = make_inputs(s, 21);
  std::vector<float> out(bhd_size(s)), lse(lse_size(s)), dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
  attention_forward_cpu<float>(out.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, s.D, C,
                               scale, mask_of(s));
  attention_backward_cpu<float>(dq.data(), dk.data(), dv.data(), in.dout.data(), in.q.data(), in.k.data(),
                                in.v.data(), out.data(), lse.data(), s.B, s.T, s.H, s.D, C, scale, mask_of(s));

  const std::vector<float> qkv = fuse_qkv(s, in.q, in.k, in.v);
  std::vector<float> out2(bhd_size(s)), lse2(lse_size(s));
  std::vector<float> dqkv(qkv.size(), std::numeric_limits<float>::quiet_NaN());
  attention_forward_cpu<float>(out2.data(), lse2.data(), qkv.data(), qkv.data() + C, qkv.data() + 2 * C, s.B, s.T,
                               s.H, s.D, 3 * C, scale, mask_of(s));
  attention_backward_cpu<float>(dqkv.data(), dqkv.data() + C, dqkv.data() + 2 * C, in.dout.data(), qkv.data(),
                                qkv.data() + C, qkv.data() + 2 * C, out2.data(), lse2.data(), s.B, s.T, s.H, s.D,
                                3 * C, scale, mask_of(s));
  EXPECT_TRUE(bitwise_equal(out2, out, "out"));
  EXPECT_TRUE(bitwise_equal(lse2, lse, "lse"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 0), dq, "dq"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 1), dk, "dk"));
  EXPECT_TRUE(bitwise_equal(unfuse(s, dqkv, 2), dv, "dv"));
}

// Packed rows (segment ids) give exactly the numbers of each example run
// alone as its own batch of one: forward, LSE and all three gradients, fp64
// and fp32, causal and bidirectional. The reference visits visible pairs in
// the same order either way, so the match is bit for bit.
template <typename Real>
Naive cpu_run(const Shape& s, float scale, const Inputs& in) {
  const std::vector<Real> q = convert<float, Real>(in.q), k = convert<float, Real>(in.k),
                          v = convert<float, Real>(in.v), dout = convert<float, Real>(in.dout);
  std::vector<Real> out(bhd_size(s)), lse(lse_size(s)), dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
  attention_forward_cpu<Real>(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D, C_of(s),
                              scale, mask_of(s));
  attention_backward_cpu<Real>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                               lse.data(), s.B, s.T, s.H, s.D, C_of(s), scale, mask_of(s));
  return Naive{convert<Real, double>(out), convert<Real, double>(lse), convert<Real, double>(dq),
               convert<Real, double>(dk), convert<Real, double>(dv)};
}

template <typename Real>
void expect_packed_equals_separate(const Shape& s) {
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 400 + s.T + s.D);
  const Naive packed = cpu_run<Real>(s, scale, in);
  const Naive alone = run_separately<Naive>(
      s, in, [&](const Shape& one, const Inputs& part) { return cpu_run<Real>(one, scale, part); });
  const std::string n = name_of(s) + (sizeof(Real) == 8 ? " f64" : " f32");
  const Tolerance exact{0.0, 0.0};
  EXPECT_TRUE(all_close(packed.out, alone.out, exact, "out " + n));
  EXPECT_TRUE(all_close(packed.lse, alone.lse, exact, "lse " + n));
  EXPECT_TRUE(all_close(packed.dq, alone.dq, exact, "dq " + n));
  EXPECT_TRUE(all_close(packed.dk, alone.dk, exact, "dk " + n));
  EXPECT_TRUE(all_close(packed.dv, alone.dv, exact, "dv " + n));
}

TEST(AttentionCpu, PackedEqualsEachExampleAlone) {
  for (const Packing& p : shared_packings())
    for (bool causal : {false, true})
      for (int D : {16, 5}) {
        const Shape s = packed_shape(p.T, 2, D, causal, p.rows, p.name);
        expect_packed_equals_separate<double>(s);
        expect_packed_equals_separate<float>(s);
      }
}

// The same packed inputs without their ids give other outputs: the segments
// are what separates the examples (and these inputs would show a leak).
TEST(AttentionCpu, SegmentIdsMatter) {
  Shape s = packed_shape(20, 1, 8, false, {{7, 6, 7}}, "mix");
  const Inputs in = make_inputs(s, 77);
  const Naive with = cpu_run<double>(s, 0.5f, in);
  s.seg.clear();
  const Naive without = cpu_run<double>(s, 0.5f, in);
  EXPECT_GT(max_err(convert<double, float>(with.out), without.out), 1e-3);
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
                                            /*stride=*/7, 1.0f, bidirectional_mask()),
               Error);
  EXPECT_THROW(attention_forward_cpu<float>(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), 1, 2, 1, 0,
                                            0, 1.0f, bidirectional_mask()),
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
    attention_forward(p, f, p, p, p, 1, 8, 1, 48, 48, 1.0f, bidirectional_mask(), nullptr);
    ADD_FAILURE() << "head dim 48 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 48"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("16, 32, 64 or 128"), std::string::npos) << e.what();
  }
  try {
    attention_backward(f, f, f, f, f, f, f, f, f, f, 1, 8, 1, 96, 96, 1.0f, causal_mask(), nullptr);
    ADD_FAILURE() << "head dim 96 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 96"), std::string::npos) << e.what();
  }
  try {
    attention_forward(p, f, p, p, p, 1, 8, 2, 64, /*stride=*/129, 1.0f, bidirectional_mask(), nullptr);
    ADD_FAILURE() << "bf16 stride 129 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 8"), std::string::npos) << e.what();
  }
}

// The grid: T ∈ {1, 17, 64, 127, 128, 129, 1000} × D ∈ {16, 32, 64,
// 128} × causal and not, with (B, H) varying across cases.
std::vector<Shape> gpu_shapes() {
  const int Bs[] = {1, 2, 3, 2}, Hs[] = {1, 3, 2, 1};
  std::vector<Shape> v;
  int n = 0;
  for (int T : {1, 17, 64, 127, 128, 129, 1000})
    for (int D : {16, 32, 64, 128})
      for (bool causal : {false, true}) {
        const int B = T >= 1000 ? 1 : Bs[n % 4], H = T >= 1000 ? 2 : Hs[n % 4];
        v.push_back({B, T, H, D, causal});
        ++n;
      }
  return v;
}

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

// One forward + backward on the GPU through the launchers, results as
// floats. `fused` runs the (B, T, 3·C) layout: q/k/v and dq/dk/dv are parts
// of one buffer each. Segment ids, if the shape has them, are uploaded.
template <typename F>
Result run_gpu(const Shape& s, float scale, const Inputs& in, bool fused) {
  const int64_t C = C_of(s);
  const int64_t stride = fused ? 3 * C : C;
  Result r;
  std::unique_ptr<DeviceBuffer<int32_t>> seg;
  if (!s.seg.empty()) seg = std::make_unique<DeviceBuffer<int32_t>>(s.seg);
  const AttentionMask mask{s.causal, seg ? seg->get() : nullptr};
  DeviceBuffer<F> dout(to_storage<F>(in.dout)), out(bhd_size(s));
  DeviceBuffer<float> lse(lse_size(s)), ws(attention_backward_workspace_floats(s.B, s.T, s.H));
  out.poison();
  lse.poison();
  if (fused) {
    DeviceBuffer<F> qkv(to_storage<F>(fuse_qkv(s, in.q, in.k, in.v))), dqkv(rows_of(s) * 3 * C);
    dqkv.poison();
    const F* q = qkv.get();
    F* dq = dqkv.get();
    attention_forward(out.get(), lse.get(), q, q + C, q + 2 * C, s.B, s.T, s.H, s.D, stride, scale, mask, nullptr);
    attention_backward(dq, dq + C, dq + 2 * C, ws.get(), dout.get(), q, q + C, q + 2 * C, out.get(), lse.get(), s.B,
                       s.T, s.H, s.D, stride, scale, mask, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> g = to_f32(dqkv.to_host());
    r.dq = unfuse(s, g, 0);
    r.dk = unfuse(s, g, 1);
    r.dv = unfuse(s, g, 2);
  } else {
    DeviceBuffer<F> q(to_storage<F>(in.q)), k(to_storage<F>(in.k)), v(to_storage<F>(in.v));
    DeviceBuffer<F> dq(bhd_size(s)), dk(bhd_size(s)), dv(bhd_size(s));
    dq.poison();
    dk.poison();
    dv.poison();
    attention_forward(out.get(), lse.get(), q.get(), k.get(), v.get(), s.B, s.T, s.H, s.D, stride, scale, mask,
                      nullptr);
    attention_backward(dq.get(), dk.get(), dv.get(), ws.get(), dout.get(), q.get(), k.get(), v.get(), out.get(),
                       lse.get(), s.B, s.T, s.H, s.D, stride, scale, mask, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    r.dq = to_f32(dq.to_host());
    r.dk = to_f32(dk.to_host());
    r.dv = to_f32(dv.to_host());
  }
  r.out = to_f32(out.to_host());
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
  EXPECT_TRUE(bf16_result_within_budget(run_gpu<bf16>(s, scale, in, /*fused=*/false), plain, ref, name_of(s)));
}

TEST_P(AttentionGpu, Fp32MatchesReference) {
  KILN_REQUIRE_GPU();
  const Shape s = GetParam();
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 2000 + s.T * 13 + s.D);
  EXPECT_TRUE(fp32_result_close(run_gpu<float>(s, scale, in, /*fused=*/false), reference(s, scale, in), name_of(s)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGpu, ::testing::ValuesIn(gpu_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// Packed rows on the GPU equal each example run alone (through the CPU
// reference: fp64 for the error, plain bf16 for the budget), forward and
// gradients, for every head dim; plus a long row of many random examples.
class AttentionGpuPacked : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionGpuPacked, Bf16EqualsEachExampleAlone) {
  KILN_REQUIRE_GPU();
  const Shape s = GetParam();
  EXPECT_TRUE(packed_bf16_matches_alone(
      s, [](const Shape& sh, float scale, const Inputs& in) { return run_gpu<bf16>(sh, scale, in, false); }));
}

TEST_P(AttentionGpuPacked, Fp32EqualsEachExampleAlone) {
  KILN_REQUIRE_GPU();
  const Shape s = GetParam();
  EXPECT_TRUE(packed_fp32_matches_alone(
      s, [](const Shape& sh, float scale, const Inputs& in) { return run_gpu<float>(sh, scale, in, false); }));
}

std::vector<Shape> gpu_packed_shapes() {
  std::vector<Shape> v;
  for (const Packing& p : shared_packings())
    for (int D : {16, 32, 64, 128})
      for (bool causal : {false, true}) v.push_back(packed_shape(p.T, 2, D, causal, p.rows, p.name));
  for (int D : {64, 128})
    for (bool causal : {false, true}) v.push_back(random_packed_shape(1000, 2, D, causal, 99 + D));
  return v;
}

INSTANTIATE_TEST_SUITE_P(Packings, AttentionGpuPacked, ::testing::ValuesIn(gpu_packed_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) { return name_of(info.param); });

// Two runs give identical bits; the fused-QKV layout gives the same bits as
// separate tensors (same math, different addresses) and fills all of dQKV.
template <typename F>
void check_determinism_and_layout(const Shape& s) {
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 3000 + s.T);
  const Result a = run_gpu<F>(s, scale, in, false), b = run_gpu<F>(s, scale, in, false);
  const Result f = run_gpu<F>(s, scale, in, true);
  const std::string n = name_of(s);
  EXPECT_TRUE(bitwise_equal(a.out, b.out, "out rerun " + n));
  EXPECT_TRUE(bitwise_equal(a.lse, b.lse, "lse rerun " + n));
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq, "dq rerun " + n));
  EXPECT_TRUE(bitwise_equal(a.dk, b.dk, "dk rerun " + n));
  EXPECT_TRUE(bitwise_equal(a.dv, b.dv, "dv rerun " + n));
  EXPECT_TRUE(bitwise_equal(f.out, a.out, "out fused " + n));
  EXPECT_TRUE(bitwise_equal(f.lse, a.lse, "lse fused " + n));
  EXPECT_TRUE(bitwise_equal(f.dq, a.dq, "dq fused " + n));
  EXPECT_TRUE(bitwise_equal(f.dk, a.dk, "dk fused " + n));
  EXPECT_TRUE(bitwise_equal(f.dv, a.dv, "dv fused " + n));
}

TEST(AttentionGpuLayout, Bf16DeterministicAndFusedQkv) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{2, 1000, 3, 64, true}, Shape{3, 129, 2, 128, false}, Shape{1, 17, 4, 32, true},
                         Shape{2, 100, 4, 16, false}})
    check_determinism_and_layout<bf16>(s);
  check_determinism_and_layout<bf16>(packed_shape(150, 3, 64, true, shared_packings()[0].rows, "mixed"));
}

TEST(AttentionGpuLayout, Fp32DeterministicAndFusedQkv) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{2, 300, 3, 64, true}, Shape{1, 129, 2, 128, false}, Shape{1, 40, 2, 16, true}})
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
  EXPECT_TRUE(bf16_result_within_budget(run_gpu<bf16>(s, scale, in, /*fused=*/true), plain, ref, "fused"));
}

#endif  // KILN_WITH_CUDA

}  // namespace
}  // namespace kiln
