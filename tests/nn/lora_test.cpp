// LoRA (nn/lora.h): the adapted Linear against finite differences in f64
// (dx, dA, dB with the base frozen; every gradient with the base trainable;
// with adapter dropout under a fixed mask), a fresh adapter changes nothing
// bit for bit, training leaves the frozen base bit-identical and gives it no
// gradient or optimizer state, merge then unmerge restores W, merged logits
// equal adapted logits (fp32, 1e-5 relative), target patterns and their
// errors; CPU vs GPU (Gpu suite, skipped without a device).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "nn/gpt.h"
#include "nn/linear.h"
#include "nn/lora.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"
#include "tests/nn/module_check.h"

namespace kiln::test {
namespace {

std::shared_ptr<nn::RngStream> make_rng(uint64_t seed) {
  auto r = std::make_shared<nn::RngStream>();
  r->seed = seed;
  return r;
}

// Overwrites a tensor with U(lo, hi) from a seeded stream (any dtype on the CPU).
void randomize(Tensor& t, uint64_t seed, float lo = -0.5f, float hi = 0.5f) {
  Tensor r = Tensor::empty(t.shape(), DType::f32, Device::cpu());
  r.uniform_(seed, 0, lo, hi);
  t.copy_from(r.dtype() == t.dtype() ? r : r.cast(t.dtype()));
}

// A Linear (in, out) with an adapter attached through attach_lora, and B set
// to random values so the adapter's term (and dA) is not zero.
std::unique_ptr<nn::Linear> adapted_linear(int64_t in, int64_t out, const nn::LoraOptions& o,
                                           std::shared_ptr<nn::RngStream> rng) {
  auto lin = std::make_unique<nn::Linear>(in, out, /*bias=*/true, 11, 0);
  nn::attach_lora(*lin, {"all-linear"}, o, rng, 5);
  randomize(lin->adapter()->lora_B().value, 77);
  return lin;
}

Tensor from_f64(const std::vector<double>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f64, Device::cpu());
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

double weighted_sum(const Tensor& y, const std::vector<double>& w) {
  const std::vector<double> v = y.to_vector_f64();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

// Finite differences over dx and every trainable parameter of `m` (f64,
// CPU). `before_forward` runs before every forward (dropout: rewinds the
// random stream so each evaluation draws the same mask).
void expect_fd(nn::Module& m, const Shape& xshape, const std::function<void()>& before_forward,
               const std::string& what) {
  m.to(Device::cpu(), DType::f64, DType::f64);
  Tensor x = from_f64(random_uniform_f64(static_cast<size_t>(xshape.numel()), 0x51), xshape);
  before_forward();
  Tensor y = m.forward(x);
  const std::vector<double> w = random_uniform_f64(static_cast<size_t>(y.numel()), 0x77);
  m.zero_grad();
  Tensor dx = m.backward(from_f64(w, y.shape()));
  GradCheckOptions opt;
  opt.rtol = 1e-5;
  opt.atol = 1e-8;
  const std::vector<double> x0 = x.to_vector_f64();
  auto lx = [&](const std::vector<double>& xv) {
    before_forward();
    return weighted_sum(m.forward(from_f64(xv, xshape)), w);
  };
  EXPECT_TRUE(check_gradient(lx, x0, dx.to_vector_f64(), what + " d/dx", opt));
  int checked = 0;
  for (nn::Parameter* p : m.trainable_parameters()) {
    const std::vector<double> p0 = p->value.to_vector_f64();
    auto lp = [&](const std::vector<double>& pv) {
      std::copy(pv.begin(), pv.end(), p->value.data<double>());
      before_forward();
      const double l = weighted_sum(m.forward(x), w);
      std::copy(p0.begin(), p0.end(), p->value.data<double>());
      return l;
    };
    EXPECT_TRUE(check_gradient(lp, p0, p->grad.to_vector_f64(), what + " d/d" + p->name, opt));
    ++checked;
  }
  EXPECT_GT(checked, 0) << what;
}

TEST(Lora, AdapterParametersAndInit) {
  nn::LoraOptions o;
  o.rank = 3;
  o.alpha = 6.0f;
  auto lin = std::make_unique<nn::Linear>(13, 7, true, 11, 0);
  nn::LoraAttachment at = nn::attach_lora(*lin, {"all-linear"}, o, make_rng(1), 5);
  EXPECT_EQ(at.adapter_parameters, 3 * 13 + 7 * 3);
  std::vector<std::string> names, trainable;
  for (nn::Parameter* p : lin->parameters()) names.push_back(p->name);
  for (nn::Parameter* p : lin->trainable_parameters()) trainable.push_back(p->name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"}));
  EXPECT_EQ(trainable, (std::vector<std::string>{"lora_A.weight", "lora_B.weight"}));
  EXPECT_FALSE(lin->weight().grad.defined());  // frozen: no gradient tensor at all
  EXPECT_FLOAT_EQ(lin->adapter()->scale(), 2.0f);
  // A ~ U(±1/√in) (PEFT's kaiming_uniform_(a=√5)), B = 0.
  const std::vector<float> a = lin->adapter()->lora_A().value.to_vector();
  const float bound = 1.0f / std::sqrt(13.0f);
  float amax = 0;
  for (float v : a) amax = std::max(amax, std::fabs(v));
  EXPECT_LE(amax, bound);
  EXPECT_GT(amax, 0.5f * bound);
  for (float v : lin->adapter()->lora_B().value.to_vector()) EXPECT_EQ(v, 0.0f);
}

TEST(Lora, FrozenBaseFiniteDifferences) {
  nn::LoraOptions o;
  o.rank = 3;
  o.alpha = 5.0f;
  auto lin = adapted_linear(13, 7, o, make_rng(1));
  // (2, 5, 13): leading dims flatten to rows.
  expect_fd(*lin, Shape({2, 5, 13}), [] {}, "lora frozen base");
  EXPECT_EQ(lin->trainable_parameters().size(), 2u);
}

TEST(Lora, TrainableBaseFiniteDifferences) {
  // The base unfrozen as well: dW and db beside dA and dB (the adapter adds to,
  // never replaces, the Linear's own gradients).
  nn::LoraOptions o;
  o.rank = 2;
  o.alpha = 3.0f;
  auto lin = adapted_linear(9, 11, o, make_rng(1));
  lin->set_trainable(true);
  expect_fd(*lin, Shape({7, 9}), [] {}, "lora trainable base");
  EXPECT_EQ(lin->trainable_parameters().size(), 4u);
}

TEST(Lora, DropoutFiniteDifferences) {
  nn::LoraOptions o;
  o.rank = 4;
  o.alpha = 4.0f;
  o.dropout = 0.3f;
  auto rng = make_rng(9);
  auto lin = adapted_linear(10, 6, o, rng);
  lin->train();
  // Same mask for every evaluation: the stream restarts at the same counter.
  expect_fd(*lin, Shape({5, 10}), [rng] { rng->offset = 0; }, "lora dropout");
  // The mask is real: the training forward differs from eval's.
  Tensor x = from_f64(random_uniform_f64(50, 3), {5, 10});
  rng->offset = 0;
  const std::vector<double> yt = lin->forward(x).to_vector_f64();
  lin->eval();
  const std::vector<double> ye = lin->forward(x).to_vector_f64();
  EXPECT_NE(yt, ye);
}

TEST(Lora, StandaloneAdapterFiniteDifferences) {
  // The adapter as a module of its own: its term s·B·A·x only.
  nn::LoraOptions o;
  o.rank = 3;
  o.alpha = 1.5f;
  nn::LoraAdapter ad(8, 5, o, make_rng(2), 4, 0);
  randomize(ad.lora_B().value, 8);
  expect_fd(ad, Shape({3, 8}), [] {}, "lora adapter");
}

nn::GptOptions tiny_gpt_options() {
  nn::GptOptions g;
  g.vocab_size = 41;
  g.block_size = 12;
  g.n_layer = 2;
  g.n_head = 2;
  g.n_embd = 16;
  g.seed = 3;
  return g;
}

Tensor tokens(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::vector<float> u = random_uniform(static_cast<size_t>(B * T), seed, 0.0f, 1.0f);
  std::vector<int32_t> ids(u.size());
  for (size_t i = 0; i < u.size(); ++i) ids[i] = std::min<int32_t>(static_cast<int32_t>(u[i] * V), V - 1);
  return Tensor::from_vector(ids, {B, T}, Device::cpu());
}

std::map<std::string, std::vector<float>> snapshot(nn::Module& m, bool adapters) {
  std::map<std::string, std::vector<float>> out;
  for (nn::Parameter* p : m.parameters())
    if (nn::is_lora_parameter(p->name) == adapters) out[p->name] = p->value.to_vector();
  return out;
}

TEST(Lora, GptAdapterGradientsFiniteDifferences) {
  // The adapters inside a whole GPT (attention and MLP projections, frozen
  // base): dA and dB of every layer against central differences in f64.
  nn::Gpt gpt(tiny_gpt_options(), make_rng(1));
  nn::LoraOptions o;
  o.rank = 2;
  o.alpha = 4.0f;
  nn::attach_lora(gpt, {"all-linear"}, o, make_rng(1), 5);
  uint64_t seed = 300;
  for (auto& [name, ad] : nn::named_adapters(gpt)) randomize(ad->lora_B().value, seed++, -0.3f, 0.3f);
  gpt.to(Device::cpu(), DType::f64, DType::f64);
  Tensor t = tokens(2, 6, 41, 8);
  Tensor y = gpt.forward(t);
  const std::vector<double> w = random_uniform_f64(static_cast<size_t>(y.numel()), 0x61);
  gpt.zero_grad();
  gpt.backward(from_f64(w, y.shape()));
  GradCheckOptions opt;
  opt.rtol = 1e-5;
  opt.atol = 1e-8;
  opt.max_checks = 40;
  const auto trainable = gpt.trainable_parameters();
  EXPECT_EQ(trainable.size(), 16u);
  for (nn::Parameter* p : trainable) {
    const std::vector<double> p0 = p->value.to_vector_f64();
    auto lp = [&](const std::vector<double>& pv) {
      std::copy(pv.begin(), pv.end(), p->value.data<double>());
      const double l = weighted_sum(gpt.forward(t), w);
      std::copy(p0.begin(), p0.end(), p->value.data<double>());
      return l;
    };
    EXPECT_TRUE(check_gradient(lp, p0, p->grad.to_vector_f64(), "gpt d/d" + p->name, opt));
  }
}

TEST(Lora, FreshAdapterChangesNothing) {
  nn::Gpt gpt(tiny_gpt_options(), make_rng(1));
  gpt.eval();
  Tensor t = tokens(2, 12, 41, 4);
  const std::vector<float> before = gpt.forward(t).to_vector();
  nn::LoraOptions o;
  o.rank = 4;
  o.alpha = 8.0f;
  nn::LoraAttachment at = nn::attach_lora(gpt, {"all-linear"}, o, make_rng(1), 5);
  EXPECT_EQ(at.adapted.size(), 8u);  // 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
  const std::vector<float> after = gpt.forward(t).to_vector();
  ASSERT_EQ(before.size(), after.size());
  EXPECT_EQ(0, std::memcmp(before.data(), after.data(), before.size() * sizeof(float)));  // bit for bit
}

TEST(Lora, TrainingLeavesTheBaseBitIdentical) {
  nn::Gpt gpt(tiny_gpt_options(), make_rng(1));
  nn::LoraOptions o;
  o.rank = 4;
  o.alpha = 8.0f;
  nn::attach_lora(gpt, {"attn.c_attn", "mlp.*"}, o, make_rng(1), 5);
  gpt.to(Device::cpu(), DType::f32, DType::f32);
  gpt.train();
  const auto base0 = snapshot(gpt, false);
  const auto ad0 = snapshot(gpt, true);
  EXPECT_EQ(ad0.size(), 2u * 2u * 3u);  // 2 blocks x (c_attn, c_fc, mlp.c_proj) x (A, B)
  nn::OptimizerOptions oo;
  oo.kind = nn::OptimizerKind::adamw;
  oo.weight_decay = 0.1;  // decay would move the base if the optimizer saw it
  nn::Optimizer opt(gpt.parameters(), oo);
  for (const auto& [name, t] : opt.state())
    EXPECT_TRUE(nn::is_lora_parameter(name.substr(0, name.rfind('.')))) << "optimizer state for " << name;
  EXPECT_EQ(opt.state().size(), 2u * ad0.size());  // exp_avg and exp_avg_sq per adapter tensor
  nn::CrossEntropyLoss ce;
  Tensor t = tokens(3, 12, 41, 4);
  std::vector<int32_t> tgt(36);
  for (size_t i = 0; i < tgt.size(); ++i) tgt[i] = static_cast<int32_t>((i * 5 + 1) % 41);
  double first = 0, last = 0;
  for (int s = 0; s < 12; ++s) {
    gpt.zero_grad();
    Tensor logits = gpt.forward(t);  // (3, 12, Vp)
    Tensor rows = logits.reshape({36, logits.size(2)});
    const nn::LossSum l = ce.forward_backward(rows, tgt, 41, 1.0f / 36.0f);  // dlogits in place
    gpt.backward(logits);
    opt.step(3e-2);
    const double loss = l.sum / static_cast<double>(l.count);
    if (s == 0) first = loss;
    last = loss;
  }
  EXPECT_LT(last, first);  // the adapters learn
  EXPECT_EQ(snapshot(gpt, false), base0);  // frozen base: every bit unchanged
  int moved = 0;
  const auto ad1 = snapshot(gpt, true);
  for (const auto& [name, v] : ad1) moved += v != ad0.at(name);
  EXPECT_EQ(moved, static_cast<int>(ad0.size()));
  for (nn::Parameter* p : gpt.parameters())
    EXPECT_EQ(p->grad.defined(), nn::is_lora_parameter(p->name)) << p->name;
}

TEST(Lora, MergeMatchesAdaptedLogitsAndUnmergeRestoresW) {
  nn::Gpt gpt(tiny_gpt_options(), make_rng(1));
  nn::LoraOptions o;
  o.rank = 8;
  o.alpha = 16.0f;
  nn::attach_lora(gpt, {"all-linear"}, o, make_rng(1), 5);
  uint64_t seed = 100;
  for (auto& [name, ad] : nn::named_adapters(gpt)) randomize(ad->lora_B().value, seed++, -0.2f, 0.2f);
  gpt.eval();
  Tensor t = tokens(2, 12, 41, 6);
  const std::vector<float> plain_base = [&] {
    std::vector<float> v;
    for (auto& [name, lin] : nn::named_linears(gpt)) {
      const std::vector<float> w = lin->weight().value.to_vector();
      v.insert(v.end(), w.begin(), w.end());
    }
    return v;
  }();
  const std::vector<float> adapted = gpt.forward(t).to_vector();
  nn::merge_lora(gpt);
  const std::vector<float> merged = gpt.forward(t).to_vector();
  // The adapters are not small: merging moves the logits visibly.
  double max_diff_base = 0, scale = 0;
  ASSERT_EQ(adapted.size(), merged.size());
  Tolerance tol;
  tol.rtol = 1e-5;
  tol.atol = 1e-5;  // relative, with a floor of 1e-5 at the logits' scale (|logit| ~ 1)
  EXPECT_TRUE(all_close(merged, adapted, tol, "merged vs adapted logits (fp32)"));
  for (float v : adapted) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  EXPECT_THROW(nn::merge_lora(gpt), Error);  // merged twice
  nn::unmerge_lora(gpt);
  size_t i = 0;
  double max_w = 0;
  for (auto& [name, lin] : nn::named_linears(gpt))
    for (float w : lin->weight().value.to_vector()) {
      max_diff_base = std::max(max_diff_base, static_cast<double>(std::fabs(w - plain_base[i])));
      max_w = std::max(max_w, static_cast<double>(std::fabs(plain_base[i])));
      ++i;
    }
  // W + Δ - Δ in fp32: within a couple of roundings of |W + Δ|.
  EXPECT_LE(max_diff_base, 4.0 * max_w * 1.2e-7) << "unmerge left W off by " << max_diff_base;
  const std::vector<float> again = gpt.forward(t).to_vector();
  EXPECT_TRUE(all_close(again, adapted, tol, "unmerged logits"));
  EXPECT_GT(scale, 0.0);
}

TEST(Lora, MergeUnmergeExactInF64) {
  // With small dyadic values every product and sum is exact, so W comes back
  // bit for bit.
  nn::LoraOptions o;
  o.rank = 2;
  o.alpha = 4.0f;  // s = 2
  auto lin = adapted_linear(5, 3, o, make_rng(1));
  lin->to(Device::cpu(), DType::f64, DType::f64);
  auto dyadic = [](Tensor& t, int k) {
    double* d = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = static_cast<double>((i * 7 + k) % 9 - 4) / 8.0;
  };
  dyadic(lin->weight().value, 1);
  dyadic(lin->adapter()->lora_A().value, 2);
  dyadic(lin->adapter()->lora_B().value, 3);
  const std::vector<double> w0 = lin->weight().value.to_vector_f64();
  lin->adapter()->merge(lin->weight());
  EXPECT_NE(lin->weight().value.to_vector_f64(), w0);
  lin->adapter()->unmerge(lin->weight());
  EXPECT_EQ(lin->weight().value.to_vector_f64(), w0);
  EXPECT_THROW(lin->adapter()->unmerge(lin->weight()), Error);
}

TEST(Lora, TargetPatterns) {
  EXPECT_TRUE(nn::lora_target_matches("attn.c_attn", "h.0.attn.c_attn"));
  EXPECT_FALSE(nn::lora_target_matches("attn.c_attn", "h.0.attn.c_proj"));
  EXPECT_TRUE(nn::lora_target_matches("mlp.*", "h.3.mlp.c_fc"));
  EXPECT_TRUE(nn::lora_target_matches("mlp.*", "h.3.mlp.c_proj"));
  EXPECT_FALSE(nn::lora_target_matches("mlp.*", "h.3.attn.c_proj"));
  EXPECT_TRUE(nn::lora_target_matches("c_proj", "h.1.attn.c_proj"));
  EXPECT_TRUE(nn::lora_target_matches("c_proj", "h.1.mlp.c_proj"));
  EXPECT_TRUE(nn::lora_target_matches("h.1.*.c_proj", "h.1.mlp.c_proj"));
  EXPECT_FALSE(nn::lora_target_matches("h.1.*.c_proj", "h.0.mlp.c_proj"));
  EXPECT_FALSE(nn::lora_target_matches("c_att", "h.0.attn.c_attn"));  // whole parts, not prefixes
  EXPECT_TRUE(nn::lora_target_matches("all-linear", "h.0.attn.c_attn"));

  nn::Gpt gpt(tiny_gpt_options(), make_rng(1));
  std::vector<std::string> names;
  for (auto& [name, lin] : nn::named_linears(gpt)) names.push_back(name);
  EXPECT_EQ(names.front(), "h.0.attn.c_attn");
  EXPECT_EQ(names.back(), "h.1.mlp.c_proj");
  EXPECT_EQ(names.size(), 8u);
  nn::LoraOptions o;
  try {
    nn::attach_lora(gpt, {"attn.c_attn", "attn.qkv"}, o, make_rng(1), 5);
    ADD_FAILURE() << "a pattern matching nothing was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("lora.targets: pattern 'attn.qkv' matches no Linear"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("h.0.attn.c_attn"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(nn::named_adapters(gpt).empty());  // nothing attached, nothing frozen
  EXPECT_EQ(gpt.num_trainable_parameters(), gpt.num_parameters());
}

TEST(LoraGpu, CpuAndGpuAgree) {
  KILN_REQUIRE_GPU();
  nn::LoraOptions o;
  o.rank = 5;
  o.alpha = 10.0f;
  auto make = [o] {
    auto lin = adapted_linear(33, 31, o, make_rng(1));
    lin->set_trainable(true);  // compare every gradient, the base's too
    return std::unique_ptr<nn::Module>(lin.release());
  };
  EXPECT_TRUE(compare_cpu_cuda(make, random_input({3, 7, 33}, 5), DType::f32, "lora f32"));
  EXPECT_TRUE(compare_cpu_cuda(make, random_input({3, 7, 33}, 5), DType::bf16, "lora bf16"));
}

}  // namespace
}  // namespace kiln::test
