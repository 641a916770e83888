// Multi-tensor AdamW and SGD: the CPU references against a straightforward
// scalar implementation of PyTorch's published update rules (written here,
// in double, in the shape of the torch.optim docs' pseudo-code), over several
// steps; the CUDA launchers against the CPU reference, including misaligned
// tensors, lists longer than one launch holds, a device-side grad scale and
// the bf16 copy; memory between tensors must stay untouched.
#include "kernels/optimizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/philox.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/kernels/thread_counts.h"

namespace kiln {
namespace {

using test::all_close;
using test::random_uniform;

constexpr float kGapValue = 12345.0f;  // fills the space between tensors

// Several tensors laid out in one array each for p, g, m, v, with gaps
// between them (1 element when misaligned, else up to the next 16 bytes).
struct ParamSet {
  std::vector<int64_t> sizes, offsets;
  std::vector<float> wd;
  int64_t total = 0;
  std::vector<float> p, g, m, v;

  ParamSet(const std::vector<int64_t>& n, bool misalign, uint64_t seed) : sizes(n) {
    int64_t off = 0;
    for (size_t k = 0; k < n.size(); ++k) {
      off = misalign ? off + 1 : (off + 3) / 4 * 4;
      offsets.push_back(off);
      wd.push_back(k % 3 == 0 ? 0.0f : 0.01f * static_cast<float>(k % 7));
      off += n[k];
    }
    total = off + 1;
    p.assign(total, kGapValue);
    g.assign(total, kGapValue);
    m.assign(total, kGapValue);
    v.assign(total, kGapValue);
    const std::vector<float> rp = random_uniform(total, seed, -1.0f, 1.0f);
    for (size_t k = 0; k < n.size(); ++k) {
      for (int64_t i = offsets[k]; i < offsets[k] + n[k]; ++i) {
        p[i] = rp[i];
        m[i] = 0.0f;
        v[i] = 0.0f;
      }
    }
    new_grads(seed + 1);
  }

  void new_grads(uint64_t seed) {
    const std::vector<float> rg = random_uniform(total, seed, -1.0f, 1.0f);
    for (size_t k = 0; k < sizes.size(); ++k)
      for (int64_t i = offsets[k]; i < offsets[k] + sizes[k]; ++i) g[i] = rg[i];
  }

  /// Descriptors over arrays whose element 0 is at the given bases.
  std::vector<OptimizerTensor> tensors(float* pb, const float* gb, float* mb, float* vb, bf16* bb) const {
    std::vector<OptimizerTensor> t(sizes.size());
    for (size_t k = 0; k < sizes.size(); ++k) {
      t[k].param = pb + offsets[k];
      t[k].grad = gb + offsets[k];
      t[k].m = mb ? mb + offsets[k] : nullptr;
      t[k].v = vb ? vb + offsets[k] : nullptr;
      t[k].param_bf16 = bb ? bb + offsets[k] : nullptr;
      t[k].n = sizes[k];
      t[k].weight_decay = wd[k];
    }
    return t;
  }
  std::vector<OptimizerTensor> host_tensors(bf16* bb = nullptr) {
    return tensors(p.data(), g.data(), m.data(), v.data(), bb);
  }

  bool in_tensor(int64_t i) const {
    for (size_t k = 0; k < sizes.size(); ++k)
      if (i >= offsets[k] && i < offsets[k] + sizes[k]) return true;
    return false;
  }
};

// --- the scalar reference (torch.optim docs, in double) ----------------------

struct ScalarState {
  std::vector<double> p, m, v;
};

ScalarState scalar_state(const ParamSet& s) {
  return {std::vector<double>(s.p.begin(), s.p.end()), std::vector<double>(s.m.begin(), s.m.end()),
          std::vector<double>(s.v.begin(), s.v.end())};
}

// torch.optim.AdamW (amsgrad=False, maximize=False):
//   θ ← θ - γλθ;  m ← β1 m + (1-β1) g;  v ← β2 v + (1-β2) g²
//   m̂ = m / (1-β1^t);  v̂ = v / (1-β2^t);  θ ← θ - γ m̂ / (sqrt(v̂) + ε)
void scalar_adamw(ScalarState& st, const ParamSet& s, double lr, double b1, double b2, double eps, int t,
                  double gscale) {
  for (size_t k = 0; k < s.sizes.size(); ++k) {
    for (int64_t i = s.offsets[k]; i < s.offsets[k] + s.sizes[k]; ++i) {
      const double g = static_cast<double>(s.g[i]) * gscale;
      st.p[i] -= lr * s.wd[k] * st.p[i];
      st.m[i] = b1 * st.m[i] + (1 - b1) * g;
      st.v[i] = b2 * st.v[i] + (1 - b2) * g * g;
      const double mhat = st.m[i] / (1 - std::pow(b1, t));
      const double vhat = st.v[i] / (1 - std::pow(b2, t));
      st.p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
}

// torch.optim.SGD (dampening τ = 0): g ← g + λθ; b ← g on step 1, else
// b ← μb + g; g ← nesterov ? g + μb : b; θ ← θ - γg.
void scalar_sgd(ScalarState& st, const ParamSet& s, double lr, double mu, bool nesterov, int t, double gscale) {
  for (size_t k = 0; k < s.sizes.size(); ++k) {
    for (int64_t i = s.offsets[k]; i < s.offsets[k] + s.sizes[k]; ++i) {
      double g = static_cast<double>(s.g[i]) * gscale + s.wd[k] * st.p[i];
      if (mu != 0) {
        st.m[i] = t == 1 ? g : mu * st.m[i] + g;
        g = nesterov ? g + mu * st.m[i] : st.m[i];
      }
      st.p[i] -= lr * g;
    }
  }
}

std::vector<double> as_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Compares only the tensor elements; gaps are checked separately.
::testing::AssertionResult close_in_tensors(const ParamSet& s, const std::vector<float>& got,
                                            const std::vector<double>& want, test::Tolerance tol,
                                            const std::string& what) {
  std::vector<double> g, w;
  for (size_t k = 0; k < s.sizes.size(); ++k) {
    for (int64_t i = s.offsets[k]; i < s.offsets[k] + s.sizes[k]; ++i) {
      g.push_back(got[i]);
      w.push_back(want[i]);
    }
  }
  return all_close(g, w, tol, what);
}

::testing::AssertionResult gaps_untouched(const ParamSet& s, const std::vector<float>& a, const std::string& what) {
  for (int64_t i = 0; i < s.total; ++i) {
    if (!s.in_tensor(i) && a[i] != kGapValue)
      return ::testing::AssertionFailure() << what << ": element " << i << " between tensors was written";
  }
  return ::testing::AssertionSuccess();
}

const std::vector<int64_t> kSizes = {1, 31, 33, 0, 509, 768, 4097, 7};

TEST(OptimizerCpu, AdamWMatchesScalarReferenceOverSteps) {
  ParamSet s(kSizes, false, 1);
  ScalarState ref = scalar_state(s);
  AdamWConfig cfg;
  cfg.lr = 1e-2f;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.95f;
  cfg.eps = 1e-8f;
  for (int t = 1; t <= 6; ++t) {
    s.new_grads(100 + t);
    cfg.step = t;
    auto tens = s.host_tensors();
    adamw_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), cfg);
    scalar_adamw(ref, s, cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, t, 1.0);
    const std::string at = " after step " + std::to_string(t);
    ASSERT_TRUE(close_in_tensors(s, s.p, ref.p, {1e-5, 1e-6}, "AdamW param" + at));
    ASSERT_TRUE(close_in_tensors(s, s.m, ref.m, {1e-5, 1e-7}, "AdamW m" + at));
    ASSERT_TRUE(close_in_tensors(s, s.v, ref.v, {1e-5, 1e-8}, "AdamW v" + at));
  }
  EXPECT_TRUE(gaps_untouched(s, s.p, "AdamW param"));
}

TEST(OptimizerCpu, AdamWDoubleMatchesScalarReferenceTightly) {
  ParamSet s({5, 17, 3}, false, 2);
  ScalarState ref = scalar_state(s);
  std::vector<double> p = as_double(s.p), m = as_double(s.m), v = as_double(s.v);
  AdamWConfig cfg;
  cfg.lr = 3e-3f;
  for (int t = 1; t <= 4; ++t) {
    s.new_grads(200 + t);
    const std::vector<double> g = as_double(s.g);
    cfg.step = t;
    std::vector<OptimizerTensorT<double>> tens(s.sizes.size());
    for (size_t k = 0; k < tens.size(); ++k)
      tens[k] = {p.data() + s.offsets[k], g.data() + s.offsets[k], m.data() + s.offsets[k], v.data() + s.offsets[k],
                 nullptr, s.sizes[k], s.wd[k]};
    adamw_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), cfg);
    scalar_adamw(ref, s, cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, t, 1.0);
  }
  // Same math, different arrangement (sqrt(v)/sqrt(bc2) vs sqrt(v/bc2)).
  EXPECT_TRUE(all_close(p, ref.p, {1e-12, 1e-14}, "AdamW double"));
}

TEST(OptimizerCpu, AdamWDecayIsDecoupled) {
  // Zero gradient, zero moments: the Adam part is 0 / (0 + eps) = 0, so only
  // the decoupled decay acts: p ← p · (1 - lr·wd). (L2-coupled Adam would
  // instead move p by about lr·sign(p).)
  float p = 2.0f, g = 0.0f, m = 0.0f, v = 0.0f;
  OptimizerTensor t{&p, &g, &m, &v, nullptr, 1, 0.1f};
  AdamWConfig cfg;
  cfg.lr = 0.5f;
  adamw_step_cpu(&t, 1, cfg);
  EXPECT_FLOAT_EQ(p, 2.0f * (1.0f - 0.05f));
}

TEST(OptimizerCpu, AdamWFirstStepMovesByLrTimesSign) {
  // Step 1 without decay: m̂ = g, v̂ = g², so Δp = -lr · g / (|g| + eps).
  std::vector<float> p = {1.0f, 1.0f, 1.0f}, g = {0.5f, -2.0f, 1e-3f}, m(3, 0.0f), v(3, 0.0f);
  OptimizerTensor t{p.data(), g.data(), m.data(), v.data(), nullptr, 3, 0.0f};
  AdamWConfig cfg;
  cfg.lr = 0.1f;
  adamw_step_cpu(&t, 1, cfg);
  EXPECT_NEAR(p[0], 0.9f, 1e-6);
  EXPECT_NEAR(p[1], 1.1f, 1e-6);
  EXPECT_NEAR(p[2], 0.9f, 1e-5);
}

TEST(OptimizerCpu, SgdVariantsMatchScalarReferenceOverSteps) {
  struct Variant {
    float momentum;
    bool nesterov;
    bool decay;
  };
  for (const Variant& var : {Variant{0.0f, false, false}, Variant{0.0f, false, true}, Variant{0.9f, false, true},
                             Variant{0.9f, true, false}, Variant{0.5f, true, true}}) {
    ParamSet s(kSizes, false, 3);
    if (!var.decay) std::fill(s.wd.begin(), s.wd.end(), 0.0f);
    ScalarState ref = scalar_state(s);
    SgdConfig cfg;
    cfg.lr = 0.05f;
    cfg.momentum = var.momentum;
    cfg.nesterov = var.nesterov;
    const std::string name = "SGD momentum " + std::to_string(var.momentum) + (var.nesterov ? " nesterov" : "") +
                             (var.decay ? " wd" : "");
    for (int t = 1; t <= 5; ++t) {
      s.new_grads(300 + t);
      auto tens = s.host_tensors();
      sgd_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), cfg);
      scalar_sgd(ref, s, cfg.lr, cfg.momentum, cfg.nesterov, t, 1.0);
      ASSERT_TRUE(close_in_tensors(s, s.p, ref.p, {1e-5, 1e-6}, name + " param, step " + std::to_string(t)));
      if (var.momentum != 0.0f) {
        ASSERT_TRUE(close_in_tensors(s, s.m, ref.m, {1e-5, 1e-6}, name + " momentum, step " + std::to_string(t)));
      }
    }
    EXPECT_TRUE(gaps_untouched(s, s.p, name));
  }
}

TEST(OptimizerCpu, GradScaleEqualsPrescaledGradients) {
  // 0.5 · 0.25 = 0.125 is exact, so scaling inside equals scaling before.
  ParamSet a(kSizes, false, 4), b(kSizes, false, 4);
  for (size_t k = 0; k < b.sizes.size(); ++k)
    for (int64_t i = b.offsets[k]; i < b.offsets[k] + b.sizes[k]; ++i) b.g[i] *= 0.125f;
  const float ptr_scale = 0.25f;
  AdamWConfig ca;
  ca.grad_scale = 0.5f;
  ca.grad_scale_ptr = &ptr_scale;
  AdamWConfig cb;
  auto ta = a.host_tensors();
  auto tb = b.host_tensors();
  adamw_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), ca);
  adamw_step_cpu(tb.data(), static_cast<int64_t>(tb.size()), cb);
  EXPECT_TRUE(test::bitwise_equal(a.p, b.p, "AdamW scaled vs prescaled"));
  SgdConfig sa, sb;
  sa.momentum = sb.momentum = 0.9f;
  sa.grad_scale = 0.5f;
  sa.grad_scale_ptr = &ptr_scale;
  sgd_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), sa);
  sgd_step_cpu(tb.data(), static_cast<int64_t>(tb.size()), sb);
  EXPECT_TRUE(test::bitwise_equal(a.p, b.p, "SGD scaled vs prescaled"));
}

TEST(OptimizerCpu, WritesTheBf16Copy) {
  ParamSet s(kSizes, true, 5);
  std::vector<bf16> copy(s.total, bf16{0xFFFF});
  auto tens = s.host_tensors(copy.data());
  adamw_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), AdamWConfig{});
  for (int64_t i = 0; i < s.total; ++i) {
    if (s.in_tensor(i)) {
      ASSERT_EQ(copy[i].bits, float_to_bf16(s.p[i]).bits) << "element " << i;
    } else {
      ASSERT_EQ(copy[i].bits, 0xFFFF) << "gap element " << i << " written";
    }
  }
}

// Large enough lists to be split over the CPU pool (parts start and end
// inside tensors, empty tensors between them): AdamW (with the bf16 copy) and
// SGD with momentum give the same bits at 1, 2 and 3 threads, still match
// the scalar reference, and leave the gaps between tensors untouched.
TEST(OptimizerCpu, SameAtThreadCounts) {
  const std::vector<int64_t> sizes = {70001, 0, 1, 33, 40000, 0, 65537, 3};
  for (const char* opt : {"adamw", "sgd"}) {
    SCOPED_TRACE(opt);
    const bool adamw = std::string(opt) == "adamw";
    ParamSet last(sizes, true, 1);
    auto run = [&] {
      ParamSet s(sizes, true, 7);
      std::vector<bf16> copy(s.total, bf16{0xFFFF});
      for (int t = 1; t <= 3; ++t) {
        s.new_grads(40 + t);
        auto tens = s.host_tensors(adamw ? copy.data() : nullptr);
        if (adamw) {
          AdamWConfig c;
          c.lr = 1e-2f;
          c.step = t;
          c.grad_scale = 0.5f;
          adamw_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), c);
        } else {
          SgdConfig c;
          c.lr = 1e-2f;
          c.momentum = 0.9f;
          c.grad_scale = 0.5f;
          sgd_step_cpu(tens.data(), static_cast<int64_t>(tens.size()), c);
        }
      }
      last = s;
      std::vector<float> all = s.p;
      all.insert(all.end(), s.m.begin(), s.m.end());
      all.insert(all.end(), s.v.begin(), s.v.end());
      for (bf16 b : copy) all.push_back(static_cast<float>(b.bits));
      return all;
    };
    EXPECT_TRUE(test::same_at_thread_counts(run, opt));
    // The last run (3 threads) against the scalar reference in double.
    ParamSet s(sizes, true, 7);
    ScalarState ref = scalar_state(s);
    for (int t = 1; t <= 3; ++t) {
      s.new_grads(40 + t);
      if (adamw) scalar_adamw(ref, s, 1e-2, 0.9, 0.999, 1e-8, t, 0.5);
      else scalar_sgd(ref, s, 1e-2, 0.9, false, t, 0.5);
    }
    EXPECT_TRUE(close_in_tensors(last, last.p, ref.p, {1e-5, 1e-6}, std::string(opt) + " param at 3 threads"));
    EXPECT_TRUE(gaps_untouched(last, last.p, std::string(opt) + " param at 3 threads"));
  }
}

TEST(OptimizerCpu, RejectsBadArguments) {
  float p = 1, g = 1, m = 0, v = 0;
  OptimizerTensor ok{&p, &g, &m, &v, nullptr, 1, 0.0f};
  AdamWConfig cfg;
  cfg.step = 0;
  EXPECT_THROW(adamw_step_cpu(&ok, 1, cfg), Error);
  cfg.step = 1;
  cfg.beta2 = 1.0f;
  EXPECT_THROW(adamw_step_cpu(&ok, 1, cfg), Error);
  OptimizerTensor no_v{&p, &g, &m, nullptr, nullptr, 1, 0.0f};
  EXPECT_THROW(adamw_step_cpu(&no_v, 1, AdamWConfig{}), Error);
  OptimizerTensor no_m{&p, &g, nullptr, nullptr, nullptr, 1, 0.0f};
  SgdConfig sgd;
  EXPECT_NO_THROW(sgd_step_cpu(&no_m, 1, sgd));  // no momentum: no buffer needed
  sgd.momentum = 0.9f;
  EXPECT_THROW(sgd_step_cpu(&no_m, 1, sgd), Error);
  sgd.momentum = 0.0f;
  sgd.nesterov = true;
  EXPECT_THROW(sgd_step_cpu(&ok, 1, sgd), Error);
}

// A set skip flag leaves every array and the step counter as they were; a
// step counter gives the same update as the explicit step.
TEST(OptimizerCpu, SkipFlagAndStepCounter) {
  for (const char* opt : {"adamw", "sgd"}) {
    SCOPED_TRACE(opt);
    ParamSet a(kSizes, false, 3), b = a;
    int32_t counter = 0;
    const float skip_on = 1.0f, skip_off = 0.0f;
    for (int t = 1; t <= 4; ++t) {
      a.new_grads(300 + t);
      b.new_grads(300 + t);
      // b: explicit step t; a: the counter, with a skipped try before each step.
      auto ta = a.host_tensors(), tb = b.host_tensors();
      const ParamSet before = a;
      if (std::string(opt) == "adamw") {
        AdamWConfig c;
        c.lr = 1e-2f;
        c.step_counter = &counter;
        c.skip = &skip_on;
        adamw_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), c);
        ASSERT_EQ(counter, t - 1);
        ASSERT_EQ(a.p, before.p);
        ASSERT_EQ(a.m, before.m);
        ASSERT_EQ(a.v, before.v);
        c.skip = &skip_off;
        adamw_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), c);
        AdamWConfig e;
        e.lr = 1e-2f;
        e.step = t;
        adamw_step_cpu(tb.data(), static_cast<int64_t>(tb.size()), e);
      } else {
        SgdConfig c;
        c.lr = 1e-2f;
        c.momentum = 0.9f;
        c.step_counter = &counter;
        c.skip = &skip_on;
        sgd_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), c);
        ASSERT_EQ(counter, t - 1);
        ASSERT_EQ(a.p, before.p);
        ASSERT_EQ(a.m, before.m);
        c.skip = nullptr;
        sgd_step_cpu(ta.data(), static_cast<int64_t>(ta.size()), c);
        SgdConfig e = c;
        e.step_counter = nullptr;
        sgd_step_cpu(tb.data(), static_cast<int64_t>(tb.size()), e);
      }
      ASSERT_EQ(counter, t);
      ASSERT_TRUE(test::bitwise_equal(a.p, b.p, "param after step " + std::to_string(t)));
      ASSERT_TRUE(test::bitwise_equal(a.m, b.m, "m after step " + std::to_string(t)));
    }
  }
}

// --- CUDA vs CPU -----------------------------------------------------------

#if KILN_WITH_CUDA
// The arrays of a ParamSet on the device.
struct DeviceSet {
  test::DeviceBuffer<float> p, g, m, v, scale;
  test::DeviceBuffer<bf16> copy;
  explicit DeviceSet(const ParamSet& s)
      : p(s.p), g(s.g), m(s.m), v(s.v), scale(std::vector<float>{1.0f}), copy(static_cast<size_t>(s.total)) {
    copy.poison();
  }
  std::vector<OptimizerTensor> tensors(const ParamSet& s, bool with_copy) {
    return s.tensors(p.get(), g.get(), m.get(), v.get(), with_copy ? copy.get() : nullptr);
  }
};

// Runs `steps` steps on the CPU (float) and the GPU from the same start and
// compares every array; `opt` is "adamw" or "sgd".
void check_gpu_vs_cpu(const std::vector<int64_t>& sizes, bool misalign, const std::string& opt, SgdConfig sgd,
                      int steps, float device_scale) {
  ParamSet cpu(sizes, misalign, 7);
  ParamSet start = cpu;
  DeviceSet dev(cpu);
  dev.scale.upload({device_scale});
  AdamWConfig adam;
  adam.lr = 1e-2f;
  adam.beta2 = 0.95f;
  adam.grad_scale = 0.5f;
  sgd.grad_scale = 0.5f;
  const std::string what = opt + " (" + std::to_string(sizes.size()) + " tensors" + (misalign ? ", misaligned" : "") +
                           (opt == "sgd" ? ", momentum " + std::to_string(sgd.momentum) : "") + ")";
  for (int t = 1; t <= steps; ++t) {
    cpu.new_grads(500 + t);
    dev.g.upload(cpu.g);
    const float host_scale = device_scale;
    auto ct = cpu.host_tensors();
    auto dt = dev.tensors(cpu, true);
    if (opt == "adamw") {
      adam.step = t;
      AdamWConfig c = adam, d = adam;
      c.grad_scale_ptr = &host_scale;
      d.grad_scale_ptr = dev.scale.get();
      adamw_step_cpu(ct.data(), static_cast<int64_t>(ct.size()), c);
      adamw_step(dt.data(), static_cast<int64_t>(dt.size()), d, nullptr);
    } else {
      SgdConfig c = sgd, d = sgd;
      c.grad_scale_ptr = &host_scale;
      d.grad_scale_ptr = dev.scale.get();
      sgd_step_cpu(ct.data(), static_cast<int64_t>(ct.size()), c);
      sgd_step(dt.data(), static_cast<int64_t>(dt.size()), d, nullptr);
    }
  }
  const std::vector<float> p = dev.p.to_host(), m = dev.m.to_host(), v = dev.v.to_host();
  EXPECT_TRUE(close_in_tensors(cpu, p, as_double(cpu.p), {1e-5, 1e-6}, what + " param"));
  if (opt == "adamw" || sgd.momentum != 0.0f) {
    EXPECT_TRUE(close_in_tensors(cpu, m, as_double(cpu.m), {1e-5, 1e-6}, what + " m"));
  }
  if (opt == "adamw") {
    EXPECT_TRUE(close_in_tensors(cpu, v, as_double(cpu.v), {1e-5, 1e-7}, what + " v"));
  }
  EXPECT_TRUE(gaps_untouched(cpu, p, what + " param"));
  EXPECT_TRUE(gaps_untouched(cpu, m, what + " m"));
  EXPECT_TRUE(gaps_untouched(cpu, v, what + " v"));
  // The bf16 copy is the GPU's own fp32 result rounded once; gaps stay poisoned.
  const std::vector<bf16> copy = dev.copy.to_host();
  for (int64_t i = 0; i < cpu.total; ++i) {
    if (cpu.in_tensor(i)) {
      ASSERT_EQ(copy[i].bits, float_to_bf16(p[i]).bits) << what << " bf16 copy element " << i;
    } else {
      ASSERT_EQ(copy[i].bits, 0xFFFF) << what << " bf16 gap element " << i << " written";
    }
  }
  // Determinism: the same steps again from the same start give the same bits.
  DeviceSet again(start);
  again.scale.upload({device_scale});
  ParamSet replay = start;
  for (int t = 1; t <= steps; ++t) {
    replay.new_grads(500 + t);
    again.g.upload(replay.g);
    auto dt = again.tensors(replay, true);
    if (opt == "adamw") {
      adam.step = t;
      adam.grad_scale_ptr = again.scale.get();
      adamw_step(dt.data(), static_cast<int64_t>(dt.size()), adam, nullptr);
    } else {
      sgd.grad_scale_ptr = again.scale.get();
      sgd_step(dt.data(), static_cast<int64_t>(dt.size()), sgd, nullptr);
    }
  }
  EXPECT_TRUE(test::bitwise_equal(again.p.to_host(), p, what + " rerun"));
}

std::vector<int64_t> gpu_sizes() {
  std::vector<int64_t> s = test::standard_sizes();
  s.push_back(kOptimizerChunk);
  s.push_back(kOptimizerChunk + 1);
  s.push_back(100003);
  s.push_back((1 << 20) + 5);
  return s;
}

// More tensors than one launch takes, of small random sizes.
std::vector<int64_t> many_sizes() {
  std::vector<int64_t> s(2 * kOptimizerTensorsPerLaunch + 37);
  for (size_t k = 0; k < s.size(); ++k) s[k] = 1 + static_cast<int64_t>(philox_uniform(77, 0, k) * 300.0f);
  return s;
}
#endif

// The device flag and counter: a skipped step writes nothing and keeps the
// count; the counted steps match the CPU's explicit ones.
TEST(OptimizerGpu, SkipFlagAndStepCounterOnTheDevice) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  ParamSet cpu(gpu_sizes(), false, 9);
  DeviceSet dev(cpu);
  test::DeviceBuffer<int32_t> counter(std::vector<int32_t>{0});
  test::DeviceBuffer<float> skip(std::vector<float>{1.0f});
  for (int t = 1; t <= 3; ++t) {
    cpu.new_grads(700 + t);
    dev.g.upload(cpu.g);
    auto dt = dev.tensors(cpu, true);
    AdamWConfig d;
    d.lr = 1e-2f;
    d.step_counter = counter.get();
    d.skip = skip.get();
    skip.upload({1.0f});
    const std::vector<float> before = dev.p.to_host();
    adamw_step(dt.data(), static_cast<int64_t>(dt.size()), d, nullptr);
    ASSERT_TRUE(test::bitwise_equal(dev.p.to_host(), before, "skipped step"));
    ASSERT_EQ(counter.to_host()[0], t - 1);
    skip.upload({0.0f});
    adamw_step(dt.data(), static_cast<int64_t>(dt.size()), d, nullptr);
    ASSERT_EQ(counter.to_host()[0], t);
    auto ct = cpu.host_tensors();
    AdamWConfig c;
    c.lr = 1e-2f;
    c.step = t;
    adamw_step_cpu(ct.data(), static_cast<int64_t>(ct.size()), c);
  }
  EXPECT_TRUE(close_in_tensors(cpu, dev.p.to_host(), as_double(cpu.p), {1e-5, 1e-6}, "counted AdamW param"));
#endif
}

TEST(OptimizerGpu, AdamWMatchesCpu) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (bool misalign : {false, true}) check_gpu_vs_cpu(gpu_sizes(), misalign, "adamw", SgdConfig{}, 5, 0.75f);
#endif
}

TEST(OptimizerGpu, SgdMatchesCpu) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (bool misalign : {false, true}) {
    SgdConfig plain;
    plain.lr = 0.05f;
    check_gpu_vs_cpu(gpu_sizes(), misalign, "sgd", plain, 4, 1.0f);
    SgdConfig mom = plain;
    mom.momentum = 0.9f;
    check_gpu_vs_cpu(gpu_sizes(), misalign, "sgd", mom, 4, 0.5f);
    SgdConfig nest = mom;
    nest.nesterov = true;
    check_gpu_vs_cpu(gpu_sizes(), misalign, "sgd", nest, 4, 1.0f);
  }
#endif
}

TEST(OptimizerGpu, ManyTensorsTakeSeveralLaunches) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  check_gpu_vs_cpu(many_sizes(), true, "adamw", SgdConfig{}, 3, 1.0f);
  SgdConfig mom;
  mom.momentum = 0.9f;
  check_gpu_vs_cpu(many_sizes(), false, "sgd", mom, 3, 1.0f);
#endif
}

TEST(OptimizerGpu, EmptyListAndRejects) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  EXPECT_NO_THROW(adamw_step(nullptr, 0, AdamWConfig{}, nullptr));
  EXPECT_NO_THROW(sgd_step(nullptr, 0, SgdConfig{}, nullptr));
  test::DeviceBuffer<float> p(4), g(4);
  OptimizerTensor t{p.get(), g.get(), nullptr, nullptr, nullptr, 4, 0.0f};
  EXPECT_THROW(adamw_step(&t, 1, AdamWConfig{}, nullptr), Error);
#endif
}

}  // namespace
}  // namespace kiln
