// gemm(): the CPU backend against a double-precision triple loop, argument
// checks, epilogues against the unfused computation, and (with a GPU) CUDA
// against the CPU, bit for bit on small-integer inputs.
#include "runtime/blas.h"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

struct Case {
  int64_t m, n, k;
  bool ta = false, tb = false;
  int64_t batch = 1;
  float alpha = 1.0f, beta = 0.0f;
  int64_t pad = 0;  // extra columns in every leading dimension
  DType in = DType::f32, out = DType::f32;
  Epilogue epi = Epilogue::none;
  bool aux = false;
  bool integers = false;  // small integers: exact in every precision
  int64_t stride_pad = 1;  // spare elements between batches (1 misaligns them)

  int64_t lda() const { return (ta ? m : k) + pad; }
  int64_t ldb() const { return (tb ? k : n) + pad; }
  int64_t ldc() const { return n + pad; }
  int64_t a_rows() const { return ta ? k : m; }
  int64_t b_rows() const { return tb ? n : k; }
  // Batches laid out back to back with stride_pad spare elements between them.
  int64_t stride_a() const { return a_rows() * lda() + stride_pad; }
  int64_t stride_b() const { return b_rows() * ldb() + stride_pad; }
  int64_t stride_c() const { return m * ldc() + stride_pad; }
  std::string str() const {
    std::ostringstream os;
    os << "m=" << m << " n=" << n << " k=" << k << (ta ? " ta" : "") << (tb ? " tb" : "") << " batch=" << batch
       << " alpha=" << alpha << " beta=" << beta << " pad=" << pad << " " << dtype_name(in) << "->" << dtype_name(out);
    if (epi != Epilogue::none) os << " epilogue=" << static_cast<int>(epi) << (aux ? "+aux" : "");
    return os.str();
  }
};

struct Inputs {
  std::vector<double> a, b, c, bias;  // values as stored (already rounded to the storage dtype)
};

std::vector<double> values(size_t n, uint64_t seed, DType t, bool integers) {
  std::vector<double> v(n);
  const std::vector<float> u = test::random_uniform(n, seed, -1.0f, 1.0f);
  for (size_t i = 0; i < n; ++i) {
    float x = integers ? std::round(u[i] * 4.0f) : u[i];  // integers in [-4, 4]
    if (t == DType::bf16) x = round_bf16(x);
    v[i] = t == DType::f64 ? (integers ? x : static_cast<double>(u[i]) + 1e-9 * u[(i + 1) % n]) : x;
  }
  return v;
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  in.a = values(static_cast<size_t>(c.stride_a() * c.batch), seed, c.in, c.integers);
  in.b = values(static_cast<size_t>(c.stride_b() * c.batch), seed + 1, c.in, c.integers);
  in.c = values(static_cast<size_t>(c.stride_c() * c.batch), seed + 2, c.out, c.integers);
  in.bias = values(static_cast<size_t>(std::max<int64_t>(c.n, 1)), seed + 3, c.out, c.integers);
  if (c.beta == 0.0f)
    for (double& x : in.c) x = NAN;  // beta == 0 must not read C
  return in;
}

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// The triple loop, in double: C over all batches (elements outside the
// m x n blocks keep their input value), the pre-GELU values for aux, and a
// per-element bound on the rounding error of an fp32 computation.
struct Reference {
  std::vector<double> c, aux, scale;
};
Reference reference(const Case& c, const Inputs& in) {
  Reference r;
  r.c = in.c;
  r.scale.assign(r.c.size(), 0.0);
  r.aux.assign(static_cast<size_t>(c.batch * c.m * c.n), 0.0);
  const bool bias = c.epi == Epilogue::bias || c.epi == Epilogue::bias_gelu;
  const bool gelu = c.epi == Epilogue::gelu || c.epi == Epilogue::bias_gelu;
  for (int64_t bi = 0; bi < c.batch; ++bi)
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double acc = 0, mag = 0;
        for (int64_t p = 0; p < c.k; ++p) {
          const double x = in.a[static_cast<size_t>(bi * c.stride_a() + (c.ta ? p * c.lda() + i : i * c.lda() + p))];
          const double y = in.b[static_cast<size_t>(bi * c.stride_b() + (c.tb ? j * c.ldb() + p : p * c.ldb() + j))];
          acc += x * y;
          mag += std::fabs(x * y);
        }
        const size_t ci = static_cast<size_t>(bi * c.stride_c() + i * c.ldc() + j);
        double v = c.alpha * acc + (c.beta != 0.0f ? c.beta * in.c[ci] : 0.0);
        double s = std::fabs(c.alpha) * mag + (c.beta != 0.0f ? std::fabs(c.beta * in.c[ci]) : 0.0);
        if (bias) {
          v += in.bias[static_cast<size_t>(j)];
          s += std::fabs(in.bias[static_cast<size_t>(j)]);
        }
        r.aux[static_cast<size_t>((bi * c.m + i) * c.n + j)] = v;
        if (gelu) v = gelu_ref(v);
        r.c[ci] = v;
        r.scale[ci] = s;
      }
  return r;
}

// Runs gemm on `device` with the inputs stored in the case's dtypes; returns
// C (all batches, padding included) and aux as doubles.
std::pair<std::vector<double>, std::vector<double>> run(const Case& c, const Inputs& in, Device device) {
  auto upload = [&](const std::vector<double>& v, DType t) {
    const Shape shape{static_cast<int64_t>(v.size())};
    Tensor h;
    if (t == DType::f64) {  // keep the double values exactly
      h = Tensor::empty(shape, DType::f64, Device::cpu());
      std::copy(v.begin(), v.end(), h.data<double>());
    } else {
      h = Tensor::from_vector(std::vector<float>(v.begin(), v.end()), shape, t, Device::cpu());
    }
    return device.is_cpu() ? h : h.to(device);
  };
  Tensor a = upload(in.a, c.in), b = upload(in.b, c.in), cc = upload(in.c, c.out), bias = upload(in.bias, c.out);
  Tensor aux = Tensor::zeros(Shape{std::max<int64_t>(1, c.batch * c.m * c.n)}, c.out, device);
  GemmArgs g;
  g.trans_a = c.ta;
  g.trans_b = c.tb;
  g.m = c.m;
  g.n = c.n;
  g.k = c.k;
  g.alpha = c.alpha;
  g.beta = c.beta;
  g.a = a.raw();
  g.lda = c.lda();
  g.stride_a = c.stride_a();
  g.b = b.raw();
  g.ldb = c.ldb();
  g.stride_b = c.stride_b();
  g.c = cc.raw();
  g.ldc = c.ldc();
  g.stride_c = c.stride_c();
  g.batch = c.batch;
  g.in_dtype = c.in;
  g.out_dtype = c.out;
  g.epilogue = c.epi;
  if (c.epi == Epilogue::bias || c.epi == Epilogue::bias_gelu) g.bias = bias.raw();
  if (c.aux) g.gelu_aux = aux.raw();
  gemm(g, device, compute_stream(device));
  return {cc.to_vector_f64(), aux.to_vector_f64()};
}

::testing::AssertionResult matches_reference(const Case& c, const std::vector<double>& got, const Reference& ref) {
  // fp32 accumulation: error <= ~k·eps·Σ|a·b| (a loose bound: 4·(k+2)·2^-24);
  // a bf16 output adds half a bf16 ulp of the value; f64 is near exact.
  const double eps = c.in == DType::f64 ? 1e-15 : 4.0 * (static_cast<double>(c.k) + 2.0) / 16777216.0;
  const double out_rel = c.out == DType::bf16 ? 1.0 / 256.0 : 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double want = ref.c[i];
    if (std::isnan(want) && std::isnan(got[i])) continue;  // untouched padding
    const double tol = eps * ref.scale[i] + out_rel * std::fabs(want) + 1e-30;
    if (!(std::fabs(got[i] - want) <= tol))
      return ::testing::AssertionFailure() << c.str() << ": element " << i << " got " << got[i] << ", want " << want
                                           << " (tolerance " << tol << ")";
  }
  return ::testing::AssertionSuccess();
}

std::vector<Case> grid(DType in, DType out) {
  std::vector<Case> cases;
  const int64_t dims[] = {0, 1, 2, 7, 33};
  for (int64_t m : dims)
    for (int64_t n : dims)
      for (int64_t k : dims)
        for (int t = 0; t < 4; ++t) {
          Case c{m, n, k};
          c.ta = t & 1;
          c.tb = t & 2;
          c.in = in;
          c.out = out;
          cases.push_back(c);
        }
  // Batches, padding, alpha/beta.
  for (int t = 0; t < 4; ++t) {
    Case c{13, 17, 19};
    c.ta = t & 1;
    c.tb = t & 2;
    c.batch = 3;
    c.pad = 3;
    c.alpha = -1.5f;
    c.beta = 0.25f;
    c.in = in;
    c.out = out;
    cases.push_back(c);
    c.alpha = 0.0f;  // only beta·C
    cases.push_back(c);
    c.alpha = 2.0f;
    c.beta = 1.0f;
    c.k = 0;  // no product at all
    cases.push_back(c);
  }
  Case big{127, 129, 131};
  big.in = in;
  big.out = out;
  cases.push_back(big);
  return cases;
}

void check_grid(DType in, DType out) {
  uint64_t seed = 100;
  for (const Case& c : grid(in, out)) {
    const Inputs inputs = make_inputs(c, seed++);
    const Reference ref = reference(c, inputs);
    ASSERT_TRUE(matches_reference(c, run(c, inputs, Device::cpu()).first, ref));
  }
}

TEST(Blas, CpuF32MatchesTheTripleLoop) { check_grid(DType::f32, DType::f32); }
TEST(Blas, CpuBf16InF32OutMatchesTheTripleLoop) { check_grid(DType::bf16, DType::f32); }
TEST(Blas, CpuBf16InBf16OutMatchesTheTripleLoop) { check_grid(DType::bf16, DType::bf16); }
TEST(Blas, CpuF64MatchesTheTripleLoop) { check_grid(DType::f64, DType::f64); }

TEST(Blas, CpuSmallIntegersAreExact) {
  for (DType in : {DType::f32, DType::bf16}) {
    Case c{31, 37, 257, true, false, 2, 1.0f, 1.0f, 1, in, DType::f32};
    c.integers = true;
    const Inputs inputs = make_inputs(c, 5);
    const Reference ref = reference(c, inputs);
    const std::vector<double> got = run(c, inputs, Device::cpu()).first;
    for (size_t i = 0; i < got.size(); ++i)
      if (!std::isnan(ref.c[i])) {
        ASSERT_EQ(got[i], ref.c[i]) << c.str() << " element " << i;
      }
  }
}

TEST(Blas, CpuEpiloguesMatchTheUnfusedComputation) {
  for (DType out : {DType::f32, DType::bf16}) {
    const DType in = out == DType::f32 ? DType::f32 : DType::bf16;
    for (Epilogue e : {Epilogue::bias, Epilogue::gelu, Epilogue::bias_gelu}) {
      for (bool aux : {false, true}) {
        if (aux && e == Epilogue::bias) continue;
        Case c{9, 16, 11, false, true, 2, 0.5f, 0.5f, 2, in, out, e, aux};
        const Inputs inputs = make_inputs(c, 17);
        const Reference ref = reference(c, inputs);
        const auto got = run(c, inputs, Device::cpu());
        ASSERT_TRUE(matches_reference(c, got.first, ref));
        if (aux) {  // the aux matrix holds the pre-GELU values
          for (size_t i = 0; i < got.second.size(); ++i)
            ASSERT_NEAR(got.second[i], ref.aux[i], 1e-5 + (out == DType::bf16 ? 1.0 / 256.0 : 1e-6) * std::fabs(ref.aux[i]))
                << c.str() << " aux " << i;
        }
      }
    }
  }
}

::testing::AssertionResult throws_naming(const GemmArgs& g, Device d, const char* part) {
  try {
    gemm(g, d);
  } catch (const Error& e) {
    if (std::string(e.what()).find(part) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "'" << part << "' not in: " << e.what();
  }
  return ::testing::AssertionFailure() << "no error";
}

TEST(Blas, BadArgumentsAreNamed) {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 0.0f);
  GemmArgs ok;
  ok.m = 4;
  ok.n = 4;
  ok.k = 4;
  ok.a = a.data();
  ok.lda = 4;
  ok.b = b.data();
  ok.ldb = 4;
  ok.c = c.data();
  ok.ldc = 4;
  gemm(ok, Device::cpu());
  EXPECT_EQ(c[5], 4.0f);
  GemmArgs g = ok;
  g.m = -1;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "m = -1"));
  g = ok;
  g.lda = 3;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "lda = 3"));
  g = ok;
  g.trans_b = true;
  g.n = 5;
  g.ldb = 3;
  g.ldc = 5;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "ldb = 3"));
  g = ok;
  g.ldc = 2;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "ldc = 2"));
  g = ok;
  g.batch = 0;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "batch = 0"));
  g = ok;
  g.batch = 2;
  g.stride_c = 4;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "stride_c = 4"));
  g = ok;
  g.b = nullptr;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "b is null"));
  g = ok;
  g.epilogue = Epilogue::bias;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "needs bias"));
  g = ok;
  g.gelu_aux = c.data();
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "gelu_aux"));
  g = ok;
  g.out_dtype = DType::bf16;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "out_dtype bf16"));
  g = ok;
  g.in_dtype = DType::i32;
  EXPECT_TRUE(throws_naming(g, Device::cpu(), "in_dtype i32"));
  g = ok;
  g.in_dtype = DType::f64;
  g.out_dtype = DType::f64;
  EXPECT_TRUE(throws_naming(g, Device::cuda(0), "f64"));
}

// The CPU pool splits a GEMM over its threads (whole batches, or blocks of
// rows or columns of C). Each split must still match the triple loop and be
// deterministic at a fixed thread count. (Bits may differ between thread
// counts: OpenBLAS's kernels may sum a block in another order than the whole
// product — its Haswell kernels do, its SkylakeX ones do not above its
// small-matrix size.)
TEST(Blas, CpuSplitsMatchTheTripleLoopAndRepeat) {
  std::vector<Case> cases;
  for (int t = 0; t < 4; ++t) {
    Case rows{601, 70, 65};  // M >= N: split by rows of C
    rows.ta = t & 1;
    rows.tb = t & 2;
    rows.pad = 1;
    cases.push_back(rows);
    Case cols{41, 666, 97};  // N > M: split by columns of C
    cols.ta = t & 1;
    cols.tb = t & 2;
    cols.beta = 0.5f;
    cases.push_back(cols);
  }
  Case batches{97, 81, 67};  // enough batches: split by batch
  batches.batch = 9;
  cases.push_back(batches);
  for (DType out : {DType::f32, DType::bf16}) {
    Case epi{403, 96, 70, false, true, 1, 1.0f, 0.0f, 0, DType::bf16, out, Epilogue::bias_gelu, true};
    cases.push_back(epi);
  }
  Case f64{300, 129, 60};
  f64.in = f64.out = DType::f64;
  cases.push_back(f64);
  const int before = cpu_threads();
  uint64_t seed = 700;
  for (const Case& c : cases) {
    const Inputs inputs = make_inputs(c, seed++);
    const Reference ref = reference(c, inputs);
    for (int threads : {1, 2, 3}) {
      set_cpu_threads(threads);
      const auto first = run(c, inputs, Device::cpu());
      ASSERT_TRUE(matches_reference(c, first.first, ref)) << "threads " << threads;
      const auto again = run(c, inputs, Device::cpu());
      for (size_t i = 0; i < first.first.size(); ++i) {
        if (std::isnan(first.first[i]) && std::isnan(again.first[i])) continue;
        ASSERT_EQ(again.first[i], first.first[i]) << c.str() << " threads " << threads << " element " << i;
      }
      ASSERT_EQ(again.second, first.second) << c.str() << " aux, threads " << threads;
    }
  }
  set_cpu_threads(before);
}

TEST(Blas, CpuThreads) {
  const int before = cpu_threads();
  set_cpu_threads(1);
  EXPECT_EQ(cpu_threads(), 1);
  set_cpu_threads(before);
  EXPECT_EQ(cpu_threads(), before);
  EXPECT_THROW(set_cpu_threads(0), Error);
}

// --- GPU ---------------------------------------------------------------------

void check_cpu_vs_cuda(DType in, DType out) {
  uint64_t seed = 900;
  for (const Case& c : grid(in, out)) {
    const Inputs inputs = make_inputs(c, seed++);
    const Reference ref = reference(c, inputs);
    ASSERT_TRUE(matches_reference(c, run(c, inputs, Device::cuda(0)).first, ref)) << "(CUDA)";
  }
}

TEST(BlasGpu, F32MatchesTheReference) {
  KILN_REQUIRE_GPU();
  check_cpu_vs_cuda(DType::f32, DType::f32);
}
TEST(BlasGpu, Bf16InF32OutMatchesTheReference) {
  KILN_REQUIRE_GPU();
  check_cpu_vs_cuda(DType::bf16, DType::f32);
}
TEST(BlasGpu, Bf16InBf16OutMatchesTheReference) {
  KILN_REQUIRE_GPU();
  check_cpu_vs_cuda(DType::bf16, DType::bf16);
}

TEST(BlasGpu, SmallIntegersAreBitwiseEqualToTheCpu) {
  KILN_REQUIRE_GPU();
  for (DType in : {DType::f32, DType::bf16})
    for (DType out : {DType::f32, DType::bf16}) {
      if (in == DType::f32 && out == DType::bf16) continue;
      for (int t = 0; t < 4; ++t) {
        Case c{61, 67, 509, (t & 1) != 0, (t & 2) != 0, 3, 1.0f, 1.0f, 2, in, out};
        c.integers = true;
        const Inputs inputs = make_inputs(c, 31 + static_cast<uint64_t>(t));
        const std::vector<double> cpu = run(c, inputs, Device::cpu()).first;
        const std::vector<double> gpu = run(c, inputs, Device::cuda(0)).first;
        ASSERT_EQ(cpu.size(), gpu.size());
        for (size_t i = 0; i < cpu.size(); ++i)
          if (!(std::isnan(cpu[i]) && std::isnan(gpu[i]))) {
            ASSERT_EQ(cpu[i], gpu[i]) << c.str() << " element " << i;
          }
      }
    }
}

TEST(BlasGpu, EpiloguesMatchTheCpu) {
  KILN_REQUIRE_GPU();
  for (DType out : {DType::f32, DType::bf16}) {
    const DType in = out == DType::f32 ? DType::f32 : DType::bf16;
    for (Epilogue e : {Epilogue::bias, Epilogue::gelu, Epilogue::bias_gelu}) {
      for (bool aux : {false, true}) {
        if (aux && e == Epilogue::bias) continue;
        // Aligned batches (multiples of 8, no spare elements): this checks the
        // epilogue's arithmetic, the grid above checks odd layouts.
        Case c{40, 64, 48, true, false, 2, 1.0f, 0.0f, 0, in, out, e, aux};
        c.stride_pad = 0;
        const Inputs inputs = make_inputs(c, 23);
        const Reference ref = reference(c, inputs);
        const auto gpu = run(c, inputs, Device::cuda(0));
        ASSERT_TRUE(matches_reference(c, gpu.first, ref)) << "(CUDA)";
        if (aux) {
          for (size_t i = 0; i < gpu.second.size(); ++i)
            ASSERT_NEAR(gpu.second[i], ref.aux[i], 1e-5 + (out == DType::bf16 ? 1.0 / 256.0 : 1e-5) * std::fabs(ref.aux[i]))
                << c.str() << " aux " << i;
        }
      }
    }
  }
  // cuBLASLt needs the aux leading dimension (n) divisible by 8.
  Case odd{5, 12, 7, false, false, 1, 1.0f, 0.0f, 0, DType::f32, DType::f32, Epilogue::gelu, true};
  const Inputs inputs = make_inputs(odd, 3);
  EXPECT_THROW(run(odd, inputs, Device::cuda(0)), Error);
}

}  // namespace
}  // namespace kiln
