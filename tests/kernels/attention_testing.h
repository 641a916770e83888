// Shared by the attention tests (attention_test.cpp: CPU reference and real
// GPU; attention_emulation_test.cpp: the CUDA kernels' source run under host
// emulation): shapes and masks, inputs, an independent full-matrix
// formulation, the fp64 reference, a plain bf16 implementation that sets the
// bf16 error budget, the fused-QKV packing helpers, and packed-sequence
// helpers (segment ids from example lengths; running each example alone and
// scattering the results back into the packed layout).
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
  std::vector<int32_t> seg = {};  // (B, T) segment ids, or empty: one sequence per row
  std::string packing = {};       // names the packing in test names ("" without segments)
};

inline std::string name_of(const Shape& s) {
  std::ostringstream os;
  os << "B" << s.B << "_T" << s.T << "_H" << s.H << "_D" << s.D << (s.causal ? "_causal" : "_full");
  if (!s.seg.empty()) os << "_packed_" << (s.packing.empty() ? "x" : s.packing);
  return os.str();
}

/// The shape's mask with host segment ids (for the CPU references).
inline AttentionMask mask_of(const Shape& s) { return AttentionMask{s.causal, s.seg.empty() ? nullptr : s.seg.data()}; }

/// Written out here, independently of attention_visible(): key j is hidden
/// from query i of row b by the causal rule or by a different segment.
inline bool hidden(const Shape& s, int b, int i, int j) {
  if (s.causal && j > i) return true;
  if (s.seg.empty()) return false;
  const size_t row = static_cast<size_t>(b) * s.T;
  return s.seg[row + i] != s.seg[row + j];
}

/// Example lengths per batch row → segment ids (B, T). A row whose lengths
/// sum to less than T is padded with one more segment (as a packer pads the
/// tail of a window). Ids start at a different, partly negative, value in
/// each row and skip numbers: only equality and order are in the contract.
inline std::vector<int32_t> pack_segments(const std::vector<std::vector<int>>& lengths, int T) {
  std::vector<int32_t> seg;
  for (size_t b = 0; b < lengths.size(); ++b) {
    int32_t id = static_cast<int32_t>(7 * b) - 5;
    int n = 0;
    for (int len : lengths[b]) {
      for (int t = 0; t < len; ++t) seg.push_back(id);
      n += len;
      id += 1 + static_cast<int32_t>(b % 3);
    }
    EXPECT_LE(n, T) << "row " << b << " lengths exceed T";
    seg.resize((b + 1) * static_cast<size_t>(T), id);
  }
  return seg;
}

/// Packings the CPU, emulator and GPU tests share: odd lengths, segments of
/// length 1, segments crossing the 64-token tiles (and the 32-query tiles of
/// the D = 128 dK/dV pass), T not a multiple of 64, B > 1 with a different
/// packing in every row, one example filling a whole row, a padded tail, and
/// tile-aligned segments (whole tiles skipped or left unmasked).
struct Packing {
  std::string name;
  int T;
  std::vector<std::vector<int>> rows;  // example lengths per batch row
};

inline std::vector<Packing> shared_packings() {
  return {
      {"mixed", 150, {{37, 1, 64, 48}, {1, 99, 50}, {150}, {70, 13, 1, 1, 65}}},
      {"tiny", 20, {{1, 19}, {7, 6, 7}}},
      {"aligned", 256, {{64, 64, 128}, {128, 1, 127}}},
      {"padded", 200, {{90, 45}, {1, 1, 1}}},
  };
}

/// A packed shape: B = lengths.size() rows of T tokens.
inline Shape packed_shape(int T, int H, int D, bool causal, const std::vector<std::vector<int>>& lengths,
                          const std::string& packing) {
  Shape s{static_cast<int>(lengths.size()), T, H, D, causal};
  s.seg = pack_segments(lengths, T);
  s.packing = packing;
  return s;
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
          S[i * T + j] = hidden(s, b, i, j) ? -std::numeric_limits<double>::infinity() : scale * dot;
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
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < T; ++j) {
          if (hidden(s, b, i, j)) continue;
          float dot = 0;
          for (int d = 0; d < D; ++d) dot += q[at(b, i, h, d)] * k[at(b, j, h, d)];
          S[i * T + j] = round_bf16(round_bf16(dot) * bf_scale);
          mx = std::max(mx, S[i * T + j]);
        }
        float sum = 0;
        for (int j = 0; j < T; ++j)
          if (!hidden(s, b, i, j)) sum += std::exp(S[i * T + j] - mx);
        for (int j = 0; j < T; ++j)
          P[i * T + j] = hidden(s, b, i, j) ? 0.0f : round_bf16(std::exp(S[i * T + j] - mx) / sum);
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
                                C_of(s), scale, mask_of(s));
  attention_backward_cpu<double>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                 r.out.data(), r.lse.data(), s.B, s.T, s.H, s.D, C_of(s), scale, mask_of(s));
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

// ---------------------------------------------------------------------------
// Packed sequences: each example of a packed shape run alone (B = 1, T = its
// length, no segment ids) and its results put back where the packed run has
// them, so "packed == separate" is one comparison of whole tensors.
// ---------------------------------------------------------------------------
struct Example {
  int b, start, len;  // batch row, first token, length
};

inline std::vector<Example> examples_of(const Shape& s) {
  std::vector<Example> v;
  for (int b = 0; b < s.B; ++b) {
    const size_t row = static_cast<size_t>(b) * s.T;
    for (int t = 0; t < s.T; ++t)
      if (t == 0 || s.seg[row + t] != s.seg[row + t - 1]) v.push_back({b, t, 0});
    for (size_t e = 0; e < v.size(); ++e)
      if (v[e].b == b) v[e].len = (e + 1 < v.size() && v[e + 1].b == b ? v[e + 1].start : s.T) - v[e].start;
  }
  return v;
}

/// Rows [start, start + len) of batch row b of a (B, T, C) tensor, as (1, len, C).
template <typename V>
inline V slice_rows(const Shape& s, const V& x, const Example& e) {
  const size_t C = static_cast<size_t>(C_of(s)), first = (static_cast<size_t>(e.b) * s.T + e.start) * C;
  return V(x.begin() + first, x.begin() + first + static_cast<size_t>(e.len) * C);
}

inline Inputs slice_inputs(const Shape& s, const Inputs& in, const Example& e) {
  return Inputs{slice_rows(s, in.q, e), slice_rows(s, in.k, e), slice_rows(s, in.v, e), slice_rows(s, in.dout, e)};
}

/// Runs `run(Shape, Inputs) -> R` (R has out, lse, dq, dk, dv) once per
/// example of the packed shape `s` and assembles the packed-layout result.
template <typename R, typename Run>
inline R run_separately(const Shape& s, const Inputs& in, Run run) {
  R whole;
  whole.out.assign(bhd_size(s), 0);
  whole.lse.assign(lse_size(s), 0);
  whole.dq.assign(bhd_size(s), 0);
  whole.dk.assign(bhd_size(s), 0);
  whole.dv.assign(bhd_size(s), 0);
  const size_t C = static_cast<size_t>(C_of(s));
  for (const Example& e : examples_of(s)) {
    const Shape one{1, e.len, s.H, s.D, s.causal};
    const R part = run(one, slice_inputs(s, in, e));
    const size_t first = (static_cast<size_t>(e.b) * s.T + e.start) * C, n = static_cast<size_t>(e.len) * C;
    std::copy(part.out.begin(), part.out.begin() + n, whole.out.begin() + first);
    std::copy(part.dq.begin(), part.dq.begin() + n, whole.dq.begin() + first);
    std::copy(part.dk.begin(), part.dk.begin() + n, whole.dk.begin() + first);
    std::copy(part.dv.begin(), part.dv.begin() + n, whole.dv.begin() + first);
    for (int h = 0; h < s.H; ++h)  // lse (1, H, len) into (B, H, T)
      std::copy(part.lse.begin() + static_cast<size_t>(h) * e.len, part.lse.begin() + static_cast<size_t>(h + 1) * e.len,
                whole.lse.begin() + (static_cast<size_t>(e.b) * s.H + h) * s.T + e.start);
  }
  return whole;
}

/// Every output of a bf16 run (out, lse, dq, dk, dv) within the bf16 budget.
inline ::testing::AssertionResult bf16_result_within_budget(const Result& got, const Result& plain, const Naive& ref,
                                                            const std::string& what) {
  const ::testing::AssertionResult parts[] = {within_bf16_budget(got.out, plain.out, ref.out, "out " + what),
                                              within_bf16_budget(got.lse, plain.lse, ref.lse, "lse " + what),
                                              within_bf16_budget(got.dq, plain.dq, ref.dq, "dq " + what),
                                              within_bf16_budget(got.dk, plain.dk, ref.dk, "dk " + what),
                                              within_bf16_budget(got.dv, plain.dv, ref.dv, "dv " + what)};
  std::string failures;
  for (const auto& r : parts)
    if (!r) failures += std::string(r.message()) + "\n";
  if (failures.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << failures;
}

/// Every output of an fp32 run close to the fp64 reference (rtol 1e-4, atol 1e-5).
inline ::testing::AssertionResult fp32_result_close(const Result& got, const Naive& ref, const std::string& what) {
  const test::Tolerance tol{1e-4, 1e-5};
  const ::testing::AssertionResult parts[] = {
      test::all_close(got.out, convert<double, float>(ref.out), tol, "out " + what),
      test::all_close(got.lse, convert<double, float>(ref.lse), tol, "lse " + what),
      test::all_close(got.dq, convert<double, float>(ref.dq), tol, "dq " + what),
      test::all_close(got.dk, convert<double, float>(ref.dk), tol, "dk " + what),
      test::all_close(got.dv, convert<double, float>(ref.dv), tol, "dv " + what)};
  std::string failures;
  for (const auto& r : parts)
    if (!r) failures += std::string(r.message()) + "\n";
  if (failures.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << failures;
}

/// Packed == each example alone for a bf16 kernel: `run_packed(shape, scale,
/// inputs) -> Result` on the packed shape, against the fp64 reference and the
/// plain bf16 implementation each run on every example alone.
template <typename Run>
inline ::testing::AssertionResult packed_bf16_matches_alone(const Shape& s, Run run_packed) {
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 5000 + s.T * 3 + s.D);
  const Naive ref = run_separately<Naive>(s, in, [&](const Shape& one, const Inputs& part) {
    return reference(one, scale, part);
  });
  const Result plain = run_separately<Result>(s, in, [&](const Shape& one, const Inputs& part) {
    return plain_bf16_attention(one, scale, part.q, part.k, part.v, part.dout);
  });
  return bf16_result_within_budget(run_packed(s, scale, in), plain, ref, name_of(s) + " vs each example alone");
}

/// Packed == each example alone for an fp32 kernel (tolerance as fp32_result_close).
template <typename Run>
inline ::testing::AssertionResult packed_fp32_matches_alone(const Shape& s, Run run_packed) {
  const float scale = default_scale(s);
  const Inputs in = make_inputs(s, 6000 + s.T * 3 + s.D);
  const Naive ref = run_separately<Naive>(s, in, [&](const Shape& one, const Inputs& part) {
    return reference(one, scale, part);
  });
  return fp32_result_close(run_packed(s, scale, in), ref, name_of(s) + " vs each example alone");
}

/// B rows of T tokens packed with pseudo-random example lengths in [1, 300]
/// (an SFT-like mix), a different packing in every row.
inline Shape random_packed_shape(int T, int B, int D, bool causal, uint64_t seed) {
  std::vector<std::vector<int>> rows(static_cast<size_t>(B));
  uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& row : rows) {
    int left = T;
    while (left > 0) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const int len = std::min(left, 1 + static_cast<int>((x >> 33) % 300));
      row.push_back(len);
      left -= len;
    }
  }
  return packed_shape(T, 1, D, causal, rows, "random" + std::to_string(seed));
}

}  // namespace kiln::attention_testing
