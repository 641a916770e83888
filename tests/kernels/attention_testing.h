// Shared by the attention tests (attention_test.cpp: CPU reference and real
// GPU; attention_emulation_test.cpp: the CUDA kernels' source run under host
// emulation): shapes, inputs, an independent full-matrix formulation, the fp64
// reference, a plain bf16 implementation that sets the bf16 error budget, and
// the fused-QKV packing helpers.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/common.h"
#include "tests/harness/harness.h"

namespace kiln::attention_testing {

struct Shape {
  int B, T, H, D;
  bool causal;
};

inline std::string name_of(const Shape& s) {
  std::ostringstream os;
  os << "B" << s.B << "_T" << s.T << "_H" << s.H << "_D" << s.D << (s.causal ? "_causal" : "_full");
  return os.str();
}

inline int64_t C_of(const Shape& s) { return static_cast<int64_t>(s.H) * s.D; }
inline size_t rows_of(const Shape& s) { return static_cast<size_t>(s.B) * s.T; }
inline size_t bhd_size(const Shape& s) { return rows_of(s) * static_cast<size_t>(C_of(s)); }   // (B, T, C)
inline size_t lse_size(const Shape& s) { return static_cast<size_t>(s.B) * s.H * s.T; }        // (B, H, T)
inline float default_scale(const Shape& s) { return 1.0f / std::sqrt(static_cast<float>(s.D)); }

template <typename A, typename B>
inline std::vector<B> convert(const std::vector<A>& v) {
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

inline Naive naive_attention(const Shape& s, float scale, const std::vector<double>& q,
                             const std::vector<double>& k, const std::vector<double>& v,
                             const std::vector<double>& dout) {
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

inline Result plain_bf16_attention(const Shape& s, float scale, const std::vector<float>& q,
                                   const std::vector<float>& k, const std::vector<float>& v,
                                   const std::vector<float>& dout) {
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

inline Inputs make_inputs(const Shape& s, uint64_t seed) {
  const size_t n = bhd_size(s);
  Inputs in;
  in.q = test::round_to_bf16(test::random_uniform(n, seed + 1, -2.0f, 2.0f));
  in.k = test::round_to_bf16(test::random_uniform(n, seed + 2, -2.0f, 2.0f));
  in.v = test::round_to_bf16(test::random_uniform(n, seed + 3, -1.0f, 1.0f));
  in.dout = test::round_to_bf16(test::random_uniform(n, seed + 4, -1.0f, 1.0f));
  return in;
}

// fp64 CPU reference on contiguous inputs.
inline Naive reference(const Shape& s, float scale, const Inputs& in) {
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

inline double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

/// Largest |got - want|; NaN anywhere gives +inf.
inline double max_err(const std::vector<float>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    m = std::max(m, e);
  }
  return m;
}

// Strided (B, T, 3·C) copy of contiguous q, k, v: the fused QKV layout.
template <typename F>
inline std::vector<F> fuse_qkv(const Shape& s, const std::vector<F>& q, const std::vector<F>& k,
                               const std::vector<F>& v) {
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
inline std::vector<F> unfuse(const Shape& s, const std::vector<F>& qkv, int which) {
  const int64_t C = C_of(s);
  std::vector<F> x(bhd_size(s));
  for (size_t r = 0; r < rows_of(s); ++r)
    for (int64_t c = 0; c < C; ++c) x[r * C + c] = qkv[r * 3 * C + which * C + c];
  return x;
}

/// The FlashAttention test criterion: the kernel's max error against the
/// fp64 reference is at most twice the plain bf16 implementation's, plus a
/// floor of 2^-16 of the output's magnitude (for outputs the plain version
/// happens to get exactly, e.g. dQ = dK = 0 at T = 1).
inline ::testing::AssertionResult within_bf16_budget(const std::vector<float>& kernel,
                                                     const std::vector<float>& plain, const std::vector<double>& ref,
                                                     const std::string& what) {
  const double ek = max_err(kernel, ref), ep = max_err(plain, ref);
  const double floor = std::ldexp(std::max(1.0, max_abs(ref)), -16);
  if (ek <= 2.0 * ep + floor) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": kernel max error " << ek << " > 2 x plain-bf16 max error " << ep
                                       << " + " << floor << " (max |ref| " << max_abs(ref) << ")";
}

}  // namespace kiln::attention_testing
