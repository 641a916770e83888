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

namespace kiln {
namespace {

using test::all_close;
using test::bitwise_equal;
using test::Tolerance;

struct Shape {
  int B, T, H, D;
  bool causal;
};

std::string name_of(const Shape& s) {
  std::ostringstream os;
  os << "B" << s.B << "_T" << s.T << "_H" << s.H << "_D" << s.D << (s.causal ? "_causal" : "_full");
  return os.str();
}

int64_t C_of(const Shape& s) { return static_cast<int64_t>(s.H) * s.D; }
size_t rows_of(const Shape& s) { return static_cast<size_t>(s.B) * s.T; }
size_t bhd_size(const Shape& s) { return rows_of(s) * static_cast<size_t>(C_of(s)); }   // (B, T, C)
size_t lse_size(const Shape& s) { return static_cast<size_t>(s.B) * s.H * s.T; }        // (B, H, T)
float default_scale(const Shape& s) { return 1.0f / std::sqrt(static_cast<float>(s.D)); }

template <typename A, typename B>
std::vector<B> convert(const std::vector<A>& v) {
  return std::vector<B>(v.begin(), v.end());
}

// ---------------------------------------------------------------------------
// Independent formulation: permute to (B, H, T, D), build the full T×T score
// matrix, mask with -inf, softmax as exp(s - max) / Σ, O = P V; the LSE
// as log Σ exp(s) with no max subtracted (inputs are small); backward from
// the full matrices with delta = rowsum(P ⊙ dP) (not dO·O as in the reference).
// q, k, v, dq, dk, dv are contiguous (B, T, C) here.
// ---------------------------------------------------------------------------
struct Naive {
  std::vector<double> out, lse, dq, dk, dv;
};

Naive naive_attention(const Shape& s, float scale, const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v, const std::vector<double>& dout) {
  const int B = s.B, T = s.T, H = s.H, D = s.D;
  const int64_t C = C_of(s);
  Naive r;
  r.out.assign(bhd_size(s), 0.0);
  r.lse.assign(lse_size(s), 0.0);
  r.dq.assign(bhd_size(s), 0.0);
  r.dk.assign(bhd_size(s), 0.0);
  r.dv.assign(bhd_size(s), 0.0);
  auto at = [&](int b, int t, int h, int d) { return (static_cast<int64_t>(b) * T + t) * C + h * D + d; };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      std::vector<double> S(static_cast<size_t>(T) * T), P(S.size()), dP(S.size());  // (T, T)
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[at(b, i, h, d)] * k[at(b, j, h, d)];
          S[i * T + j] = (s.causal && j > i) ? -std::numeric_limits<double>::infinity() : scale * dot;
        }
        double mx = -std::numeric_limits<double>::infinity(), sum = 0, sum_raw = 0;
        for (int j = 0; j < T; ++j) mx = std::max(mx, S[i * T + j]);
        for (int j = 0; j < T; ++j) {
          sum += std::exp(S[i * T + j] - mx);
          sum_raw += std::exp(S[i * T + j]);
        }
        for (int j = 0; j < T; ++j) P[i * T + j] = std::exp(S[i * T + j] - mx) / sum;
        r.lse[(static_cast<size_t>(b) * H + h) * T + i] = std::log(sum_raw);
      }
      for (int i = 0; i < T; ++i)
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j < T; ++j) o += P[i * T + j] * v[at(b, j, h, d)];
          r.out[at(b, i, h, d)] = o;
        }
      if (dout.empty()) continue;
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j) {
          double x = 0;
          for (int d = 0; d < D; ++d) x += dout[at(b, i, h, d)] * v[at(b, j, h, d)];
          dP[i * T + j] = x;
        }
      std::vector<double> dS(S.size());
      for (int i = 0; i < T; ++i) {
        double rs = 0;
        for (int j = 0; j < T; ++j) rs += P[i * T + j] * dP[i * T + j];
        for (int j = 0; j < T; ++j) dS[i * T + j] = P[i * T + j] * (dP[i * T + j] - rs);
      }
      for (int i = 0; i < T; ++i)
        for (int d = 0; d < D; ++d) {
          double gq = 0, gk = 0, gv = 0;
          for (int j = 0; j < T; ++j) {
            gq += dS[i * T + j] * k[at(b, j, h, d)];
            gk += dS[j * T + i] * q[at(b, j, h, d)];
            gv += P[j * T + i] * dout[at(b, j, h, d)];
          }
          r.dq[at(b, i, h, d)] = scale * gq;
          r.dk[at(b, i, h, d)] = scale * gk;
          r.dv[at(b, i, h, d)] = gv;
        }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------
// A plain bf16 implementation of the same math, as a framework without a
// fused kernel would run it in bf16 (matmul outputs, the scaled scores, P and
// every gradient stored in bf16; accumulation and softmax in fp32). Its error
// against the fp64 reference sets the bf16 kernel's error budget.
// Inputs: contiguous (B, T, C) floats already rounded to bf16.
// ---------------------------------------------------------------------------
struct Result {
  std::vector<float> out, lse, dq, dk, dv;
};

Result plain_bf16_attention(const Shape& s, float scale, const std::vector<float>& q, const std::vector<float>& k,
                            const std::vector<float>& v, const std::vector<float>& dout) {
  const int B = s.B, T = s.T, H = s.H, D = s.D;
  const int64_t C = C_of(s);
  Result r;
  r.out.assign(bhd_size(s), 0.0f);
  r.lse.assign(lse_size(s), 0.0f);
  r.dq.assign(bhd_size(s), 0.0f);
  r.dk.assign(bhd_size(s), 0.0f);
  r.dv.assign(bhd_size(s), 0.0f);
  auto at = [&](int b, int t, int h, int d) { return (static_cast<int64_t>(b) * T + t) * C + h * D + d; };
  const float bf_scale = round_bf16(scale);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      std::vector<float> S(static_cast<size_t>(T) * T), P(S.size()), dP(S.size()), dS(S.size());  // (T, T)
      for (int i = 0; i < T; ++i) {
        const int n = s.causal ? i + 1 : T;
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < n; ++j) {
          float dot = 0;
          for (int d = 0; d < D; ++d) dot += q[at(b, i, h, d)] * k[at(b, j, h, d)];
          S[i * T + j] = round_bf16(round_bf16(dot) * bf_scale);
          mx = std::max(mx, S[i * T + j]);
        }
        float sum = 0;
        for (int j = 0; j < n; ++j) sum += std::exp(S[i * T + j] - mx);
        for (int j = 0; j < T; ++j) P[i * T + j] = j < n ? round_bf16(std::exp(S[i * T + j] - mx) / sum) : 0.0f;
        r.lse[(static_cast<size_t>(b) * H + h) * T + i] = mx + std::log(sum);
      }
      for (int i = 0; i < T; ++i)
        for (int d = 0; d < D; ++d) {
          float o = 0;
          for (int j = 0; j < T; ++j) o += P[i * T + j] * v[at(b, j, h, d)];
          r.out[at(b, i, h, d)] = round_bf16(o);
        }
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          float x = 0;
          for (int d = 0; d < D; ++d) x += dout[at(b, i, h, d)] * v[at(b, j, h, d)];
          dP[i * T + j] = round_bf16(x);
        }
        float rs = 0;  // softmax backward in fp32
        for (int j = 0; j < T; ++j) rs += P[i * T + j] * dP[i * T + j];
        for (int j = 0; j < T; ++j)
          dS[i * T + j] = round_bf16(round_bf16(P[i * T + j] * (dP[i * T + j] - rs)) * bf_scale);
      }
      for (int i = 0; i < T; ++i)
        for (int d = 0; d < D; ++d) {
          float gq = 0, gk = 0, gv = 0;
          for (int j = 0; j < T; ++j) {
            gq += dS[i * T + j] * k[at(b, j, h, d)];
            gk += dS[j * T + i] * q[at(b, j, h, d)];
            gv += P[j * T + i] * dout[at(b, j, h, d)];
          }
          r.dq[at(b, i, h, d)] = round_bf16(gq);
          r.dk[at(b, i, h, d)] = round_bf16(gk);
          r.dv[at(b, i, h, d)] = round_bf16(gv);
        }
    }
  }
  return r;
}

// Inputs for one shape: q, k in [-2, 2] (peaked softmax rows), v and dO in
// [-1, 1], all rounded to bf16 so every backend sees the same numbers.
struct Inputs {
  std::vector<float> q, k, v, dout;
};

Inputs make_inputs(const Shape& s, uint64_t seed) {
  const size_t n = bhd_size(s);
  Inputs in;
  in.q = test::round_to_bf16(test::random_uniform(n, seed + 1, -2.0f, 2.0f));
  in.k = test::round_to_bf16(test::random_uniform(n, seed + 2, -2.0f, 2.0f));
  in.v = test::round_to_bf16(test::random_uniform(n, seed + 3, -1.0f, 1.0f));
  in.dout = test::round_to_bf16(test::random_uniform(n, seed + 4, -1.0f, 1.0f));
  return in;
}

// fp64 CPU reference on contiguous inputs.
Naive reference(const Shape& s, float scale, const Inputs& in) {
  const auto q = convert<float, double>(in.q), k = convert<float, double>(in.k), v = convert<float, double>(in.v),
             dout = convert<float, double>(in.dout);
  Naive r;
  r.out.resize(bhd_size(s));
  r.lse.resize(lse_size(s));
  r.dq.resize(bhd_size(s));
  r.dk.resize(bhd_size(s));
  r.dv.resize(bhd_size(s));
  attention_forward_cpu<double>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.D,
                                C_of(s), scale, s.causal);
  attention_backward_cpu<double>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                 r.out.data(), r.lse.data(), s.B, s.T, s.H, s.D, C_of(s), scale, s.causal);
  return r;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

/// Largest |got - want|; NaN anywhere gives +inf.
double max_err(const std::vector<float>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    m = std::max(m, e);
  }
  return m;
}

// ===========================================================================
// CPU reference
// ===========================================================================

std::vector<Shape> cpu_shapes() {
  return {{1, 1, 1, 4, false}, {1, 1, 1, 4, true},   {2, 5, 3, 8, false},  {2, 5, 3, 8, true},
          {1, 17, 2, 16, true}, {3, 9, 1, 1, false}, {1, 33, 2, 32, false}, {2, 31, 2, 5, true}};
}

// Strided (B, T, 3·C) copy of contiguous q, k, v: the fused QKV layout.
template <typename F>
std::vector<F> fuse_qkv(const Shape& s, const std::vector<F>& q, const std::vector<F>& k, const std::vector<F>& v) {
  const int64_t C = C_of(s);
  std::vector<F> qkv(rows_of(s) * 3 * C);
  for (size_t r = 0; r < rows_of(s); ++r)
    for (int64_t c = 0; c < C; ++c) {
      qkv[r * 3 * C + c] = q[r * C + c];
      qkv[r * 3 * C + C + c] = k[r * C + c];
      qkv[r * 3 * C + 2 * C + c] = v[r * C + c];
    }
  return qkv;
}
// Part `which` (0 = q, 1 = k, 2 = v) of a fused (B, T, 3·C) buffer, contiguous.
template <typename F>
std::vector<F> unfuse(const Shape& s, const std::vector<F>& qkv, int which) {
  const int64_t C = C_of(s);
  std::vector<F> x(bhd_size(s));
  for (size_t r = 0; r < rows_of(s); ++r)
    for (int64_t c = 0; c < C; ++c) x[r * C + c] = qkv[r * 3 * C + which * C + c];
  return x;
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

/// The FlashAttention test criterion: the kernel's max error against the
/// fp64 reference is at most twice the plain bf16 implementation's, plus a
/// floor of 2^-16 of the output's magnitude (for outputs the plain version
/// happens to get exactly, e.g. dQ = dK = 0 at T = 1).
::testing::AssertionResult within_bf16_budget(const std::vector<float>& kernel, const std::vector<float>& plain,
                                              const std::vector<double>& ref, const std::string& what) {
  const double ek = max_err(kernel, ref), ep = max_err(plain, ref);
  const double floor = std::ldexp(std::max(1.0, max_abs(ref)), -16);
  if (ek <= 2.0 * ep + floor) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": kernel max error " << ek << " > 2 x plain-bf16 max error " << ep
                                       << " + " << floor << " (max |ref| " << max_abs(ref) << ")";
}

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
