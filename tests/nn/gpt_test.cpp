// GPT and its parts: LayerNorm (plain and fused residual), the embedding,
// causal self-attention, a block and a tiny GPT against finite differences in
// f64 on the CPU; CPU vs GPU (Gpu suites); a single batch overfits; Hugging
// Face export -> import is exact and the Conv1D layout is right; KV-cache
// generation equals full-recompute generation.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <algorithm>
#include <numeric>
#include <set>

#include "data/safetensors.h"
#include "nn/gpt.h"
#include "nn/gpt_io.h"
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

// Token ids in [0, V) of shape (B, T), the same for every device.
InputFactory token_input(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  return [=](Device d, DType) {
    std::vector<float> u = random_uniform(static_cast<size_t>(B * T), seed, 0.0f, 1.0f);
    std::vector<int32_t> ids(u.size());
    for (size_t i = 0; i < u.size(); ++i) ids[i] = std::min<int32_t>(static_cast<int32_t>(u[i] * V), V - 1);
    Tensor t = Tensor::from_vector(ids, {B, T}, d);
    t.set_name("tokens");
    return t;
  };
}

nn::GptOptions tiny_options(int64_t V = 37, int64_t T = 8, int64_t L = 2, int64_t H = 2, int64_t C = 8) {
  nn::GptOptions o;
  o.vocab_size = V;
  o.block_size = T;
  o.n_layer = L;
  o.n_head = H;
  o.n_embd = C;
  o.seed = 3;
  return o;
}

// The GPT with larger-than-GPT-2 init so finite differences see real
// curvature (at std 0.02 everything is nearly linear and small).
std::unique_ptr<nn::Gpt> tiny_gpt(const nn::GptOptions& o, float scale = 1.0f) {
  auto m = std::make_unique<nn::Gpt>(o, make_rng(1));
  if (scale != 1.0f) {
    uint64_t off = 1000003;
    for (nn::Parameter* p : m->parameters()) {
      std::vector<float> v = p->value.to_vector();
      Tensor noise = Tensor::empty(p->value.shape(), DType::f32, Device::cpu());
      off = noise.normal_(99, off, 0.0f, 0.02f * scale);
      std::vector<float> nv = noise.to_vector();
      for (size_t i = 0; i < v.size(); ++i) v[i] += nv[i];
      // The padding rows of wte stay zero, as in every real model.
      if (p->name == "wte.weight") std::fill(v.begin() + o.vocab_size * o.n_embd, v.end(), 0.0f);
      p->value.copy_from(Tensor::from_vector(v, p->value.shape(), DType::f32, Device::cpu()));
    }
  }
  return m;
}

// --- finite differences --------------------------------------------------------------

TEST(LayerNormModule, BackwardMatchesFiniteDifferences) {
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::LayerNorm>(7); }, random_input({3, 5, 7}, 21),
                                     "layernorm"));
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::LayerNorm>(1); }, random_input({4, 1}, 22),
                                     "layernorm_c1"));
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::LayerNorm>(33, false); },
                                     random_input({2, 33}, 23), "layernorm_nobias"));
}

TEST(LayerNormModule, FusedResidualFormMatchesFiniteDifferences) {
  // out = y + 0.5·sum with (sum, y) = forward_residual(x, r): the gradient
  // reaches sum both through the LayerNorm and directly (the residual path).
  struct Fused : nn::Module {
    nn::LayerNorm ln{9};
    Tensor r;
    Fused() {
      register_module("ln", &ln);
      r = Tensor::empty({4, 9}, DType::f64, Device::cpu());
      r.uniform_(31, 0, -1.0f, 1.0f);
    }
    Tensor forward(const Tensor& x) override {
      auto [sum, y] = ln.forward_residual(x, r);
      Tensor out = Tensor::empty(x.shape(), DType::f64, Device::cpu());
      for (int64_t i = 0; i < x.numel(); ++i) out.data<double>()[i] = y.data<double>()[i] + 0.5 * sum.data<double>()[i];
      return out;
    }
    Tensor backward(const Tensor& dy) override {
      Tensor dres = Tensor::empty(dy.shape(), DType::f64, Device::cpu());
      for (int64_t i = 0; i < dy.numel(); ++i) dres.data<double>()[i] = 0.5 * dy.data<double>()[i];
      return ln.backward(dy, dres);
    }
    std::string describe() const override { return "fused"; }
  };
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<Fused>(); }, random_input({4, 9}, 24), "fused"));
}

TEST(LayerNormModule, FusedEqualsAddThenNormalize) {
  nn::LayerNorm a(13), b(13);
  Tensor x = random_input({5, 13}, 1)(Device::cpu(), DType::f32);
  Tensor r = random_input({5, 13}, 2)(Device::cpu(), DType::f32);
  auto [sum, y] = a.forward_residual(x, r);
  std::vector<float> xs = x.to_vector(), rs = r.to_vector(), s(xs.size());
  for (size_t i = 0; i < s.size(); ++i) s[i] = xs[i] + rs[i];
  EXPECT_TRUE(bitwise_equal(sum.to_vector(), s, "sum"));
  EXPECT_TRUE(bitwise_equal(y.to_vector(), b.forward(Tensor::from_vector(s, {5, 13}, DType::f32, Device::cpu())).to_vector(), "y"));
}

TEST(EmbeddingModule, BackwardMatchesFiniteDifferences) {
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::Embedding>(11, 16, 9, 6, 0.5f, 4, 0); },
                                     token_input(2, 5, 11, 41), "embedding", /*check_input_grad=*/false));
}

TEST(EmbeddingModule, PaddingRowsStartAtZeroAndIdsAreChecked) {
  nn::Embedding e(11, 16, 9, 6, 0.02f, 4, 0);
  std::vector<float> w = e.wte().value.to_vector();
  for (size_t i = 11 * 6; i < w.size(); ++i) ASSERT_EQ(w[i], 0.0f) << i;
  EXPECT_EQ(e.parameters()[0]->name, "wte.weight");
  EXPECT_EQ(e.parameters()[1]->name, "wpe.weight");
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{1, 2, 11}, {1, 3}, Device::cpu());
  EXPECT_THROW(e.forward(bad), InputError);
  Tensor ok = Tensor::from_vector(std::vector<int32_t>{3}, {1, 1}, Device::cpu());
  // Position 4: row 3 of wte plus row 4 of wpe.
  std::vector<float> y = e.forward_at(ok, 4).to_vector(), p = e.wpe().value.to_vector();
  for (int c = 0; c < 6; ++c) EXPECT_EQ(y[c], w[3 * 6 + c] + p[4 * 6 + c]);
  EXPECT_THROW(e.forward_at(ok, 9), InputError);
}

TEST(AttentionModule, BackwardMatchesFiniteDifferences) {
  auto rng = make_rng(2);
  EXPECT_TRUE(check_module_gradients(
      [rng] { return std::make_unique<nn::CausalSelfAttention>(8, 2, true, 0.0f, rng, 5); },
      random_input({2, 5, 8}, 51), "attention"));
  EXPECT_TRUE(check_module_gradients(
      [rng] { return std::make_unique<nn::CausalSelfAttention>(6, 3, false, 0.0f, rng, 6); },
      random_input({1, 7, 6}, 52), "attention_nobias"));
}

TEST(AttentionModule, IsCausal) {
  // Changing the last position's input changes no earlier output.
  nn::CausalSelfAttention a(8, 2, true, 0.0f, make_rng(1), 7);
  Tensor x = random_input({1, 6, 8}, 3)(Device::cpu(), DType::f32);
  std::vector<float> y0 = a.forward(x).to_vector();
  std::vector<float> xv = x.to_vector();
  for (int c = 0; c < 8; ++c) xv[5 * 8 + c] += 1.0f;
  std::vector<float> y1 = a.forward(Tensor::from_vector(xv, {1, 6, 8}, DType::f32, Device::cpu())).to_vector();
  for (int i = 0; i < 5 * 8; ++i) EXPECT_EQ(y0[i], y1[i]) << i;
  bool changed = false;
  for (int i = 5 * 8; i < 6 * 8; ++i) changed |= y0[i] != y1[i];
  EXPECT_TRUE(changed);
}

TEST(GptBlockModule, BackwardMatchesFiniteDifferences) {
  nn::GptOptions o = tiny_options();
  EXPECT_TRUE(check_module_gradients([o] { return std::make_unique<nn::GptBlock>(o, make_rng(3)); },
                                     random_input({2, 5, 8}, 61), "block"));
}

TEST(Gpt, BackwardMatchesFiniteDifferences) {
  const nn::GptOptions o = tiny_options();
  EXPECT_TRUE(check_module_gradients([o] { return tiny_gpt(o, 10.0f); }, token_input(2, 6, o.vocab_size, 71), "gpt",
                                     /*check_input_grad=*/false));
  nn::GptOptions nb = tiny_options(20, 5, 1, 1, 4);
  nb.bias = false;
  EXPECT_TRUE(check_module_gradients([nb] { return tiny_gpt(nb, 10.0f); }, token_input(1, 5, nb.vocab_size, 72),
                                     "gpt_nobias", /*check_input_grad=*/false));
}

// --- structure -----------------------------------------------------------------------

TEST(Gpt, NamesShapesAndInit) {
  nn::GptOptions o = tiny_options(37, 8, 2, 2, 8);
  nn::Gpt m(o, make_rng(1));
  EXPECT_EQ(m.padded_vocab(), 128);
  std::vector<std::string> names;
  for (nn::Parameter* p : m.parameters()) names.push_back(p->name);
  const std::vector<std::string> want = {
      "wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight",
      "h.0.attn.c_attn.bias", "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.ln_2.weight", "h.0.ln_2.bias",
      "h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(names[i], want[i]);
  EXPECT_EQ(names.back(), "ln_f.bias");
  EXPECT_EQ(names.size(), 2u + 12u * 2u + 2u);
  // Parameter count: wte Vp·C + wpe T·C + per block 12C² + 13C + ln_f 2C.
  const int64_t C = 8;
  EXPECT_EQ(m.num_parameters(), 128 * C + 8 * C + 2 * (12 * C * C + 13 * C) + 2 * C);
  EXPECT_EQ(m.flops_parameters(), m.num_parameters() - 8 * C - (128 - 37) * C);
  EXPECT_DOUBLE_EQ(m.train_flops_per_token(8), 6.0 * m.flops_parameters() + 12.0 * 2 * 2 * 4 * 8);

  // Init statistics on a wider model: std 0.02, projections 0.02/sqrt(2L).
  nn::GptOptions w = tiny_options(300, 16, 4, 4, 128);
  nn::Gpt g(w, make_rng(1));
  auto stddev = [](const Tensor& t) {
    std::vector<double> v = t.to_vector_f64();
    double s = 0, s2 = 0;
    for (double x : v) { s += x; s2 += x * x; }
    const double n = static_cast<double>(v.size());
    return std::sqrt(s2 / n - (s / n) * (s / n));
  };
  EXPECT_NEAR(stddev(g.block(0).attn().c_attn().weight().value), 0.02, 0.001);
  EXPECT_NEAR(stddev(g.block(1).mlp().c_fc().weight().value), 0.02, 0.001);
  EXPECT_NEAR(stddev(g.block(2).attn().c_proj().weight().value), 0.02 / std::sqrt(8.0), 0.0005);
  EXPECT_NEAR(stddev(g.block(3).mlp().c_proj().weight().value), 0.02 / std::sqrt(8.0), 0.0005);
  EXPECT_EQ(g.block(0).attn().c_attn().bias()->value.to_vector(), std::vector<float>(3 * 128, 0.0f));
  // Same seed, same model; another seed, another model.
  nn::Gpt g2(w, make_rng(1));
  EXPECT_TRUE(bitwise_equal(g.block(3).mlp().c_proj().weight().value.to_vector(),
                            g2.block(3).mlp().c_proj().weight().value.to_vector(), "same seed"));
  w.seed = 4;
  nn::Gpt g3(w, make_rng(1));
  EXPECT_NE(g.block(3).mlp().c_proj().weight().value.to_vector(), g3.block(3).mlp().c_proj().weight().value.to_vector());
}

TEST(Gpt, FusedForwardEqualsBlockByBlock) {
  // The GPT's fused residual+LayerNorm chain computes what running each
  // block's plain forward and then ln_f and the head would.
  nn::GptOptions o = tiny_options(50, 8, 3, 2, 16);
  auto m = tiny_gpt(o, 5.0f);
  Tensor tok = token_input(2, 7, o.vocab_size, 5)(Device::cpu(), DType::f32);
  std::vector<float> logits = m->forward(tok).to_vector();
  Tensor r = m->embedding().forward(tok);
  for (int64_t l = 0; l < o.n_layer; ++l) r = m->block(l).forward(r);
  std::vector<float> y = m->ln_f().forward(r).to_vector();
  std::vector<float> wte = m->embedding().wte().value.to_vector();
  ASSERT_EQ(logits.size(), static_cast<size_t>(2 * 7 * 128));
  for (int64_t row = 0; row < 14; ++row) {
    for (int64_t v = 0; v < 128; ++v) {
      double s = 0;
      for (int64_t c = 0; c < 16; ++c) s += static_cast<double>(y[row * 16 + c]) * wte[v * 16 + c];
      EXPECT_NEAR(logits[row * 128 + v], s, 1e-4) << row << "," << v;
    }
  }
}

// --- training ------------------------------------------------------------------------

TEST(Gpt, SingleBatchOverfits) {
  nn::GptOptions o = tiny_options(64, 16, 2, 2, 32);
  nn::Gpt m(o, make_rng(1));
  m.to(Device::cpu());
  nn::OptimizerOptions oo;
  oo.weight_decay = 0.0;
  nn::Optimizer opt(m.parameters(), oo);
  nn::CrossEntropyLoss ce;
  Tensor tok = token_input(4, 17, o.vocab_size, 9)(Device::cpu(), DType::f32);
  std::vector<int32_t> all(68);
  std::copy(tok.data<int32_t>(), tok.data<int32_t>() + 68, all.begin());
  std::vector<int32_t> x, y;
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 16; ++t) {
      x.push_back(all[b * 17 + t]);
      y.push_back(all[b * 17 + t + 1]);
    }
  Tensor xt = Tensor::from_vector(x, {4, 16}, Device::cpu());
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    m.zero_grad();
    Tensor logits = m.forward(xt);
    nn::LossSum l = ce.forward_backward(logits, y, o.vocab_size, 1.0f);
    m.backward(logits);
    opt.step(3e-3, nn::clip_scale(nn::grad_norm(m.parameters()), 1.0));
    const double mean = l.sum / static_cast<double>(l.count);
    if (step == 0) first = mean;
    last = mean;
  }
  EXPECT_NEAR(first, std::log(64.0), 0.1);  // uniform at init
  EXPECT_LT(last, 0.05) << "from " << first;
}

// --- Hugging Face interop ------------------------------------------------------------

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((std::filesystem::temp_directory_path() / ("kiln_gpt_test_" + std::to_string(::getpid()) + "_" + name))
                 .string()) {}
  ~TempFile() { std::filesystem::remove(path); }
};

TEST(GptIo, ExportImportRoundTripIsExact) {
  nn::GptOptions o = tiny_options(37, 8, 2, 2, 8);
  auto a = tiny_gpt(o, 3.0f);
  TempFile f("roundtrip.safetensors");
  nn::export_gpt_safetensors(*a, f.path);

  SafetensorsFile file = read_safetensors(f.path);
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_EQ(file.tensors.at("wte.weight").shape, (std::vector<int64_t>{37, 8}));    // V rows, not Vp
  EXPECT_EQ(file.tensors.at("h.0.attn.c_attn.weight").shape, (std::vector<int64_t>{8, 24}));  // Conv1D (in, out)
  EXPECT_EQ(file.tensors.at("h.1.mlp.c_proj.weight").shape, (std::vector<int64_t>{32, 8}));
  EXPECT_EQ(file.tensors.at("h.0.ln_1.weight").shape, (std::vector<int64_t>{8}));
  EXPECT_FALSE(file.has("lm_head.weight"));
  const nn::GptOptions back = nn::gpt_options_from_hf(file);
  EXPECT_EQ(back.vocab_size, 37);
  EXPECT_EQ(back.block_size, 8);
  EXPECT_EQ(back.n_layer, 2);
  EXPECT_EQ(back.n_head, 2);
  EXPECT_EQ(back.n_embd, 8);
  EXPECT_TRUE(back.bias);

  nn::GptOptions o2 = o;
  o2.seed = 77;
  nn::Gpt b(o2, make_rng(2));
  nn::import_gpt_safetensors(b, file);
  auto pa = a->parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(bitwise_equal(pb[i]->value.to_vector(), pa[i]->value.to_vector(), pa[i]->name));
}

TEST(GptIo, Conv1DLayoutIsHuggingFaces) {
  // HF's Conv1D computes y = x · W + b with W (in, out): check it against
  // kiln's Linear on the exported tensors.
  nn::GptOptions o = tiny_options(37, 8, 1, 2, 8);
  auto m = tiny_gpt(o, 3.0f);
  std::vector<NamedTensor> hf = nn::gpt_to_hf(*m);
  std::map<std::string, Tensor> byname(hf.begin(), hf.end());
  Tensor x = random_input({3, 8}, 5)(Device::cpu(), DType::f32);
  std::vector<float> y = m->block(0).attn().c_attn().forward(x).to_vector();
  std::vector<float> W = byname.at("h.0.attn.c_attn.weight").to_vector(), b = byname.at("h.0.attn.c_attn.bias").to_vector();
  std::vector<float> xv = x.to_vector();
  for (int r = 0; r < 3; ++r)
    for (int j = 0; j < 24; ++j) {
      double s = b[j];
      for (int i = 0; i < 8; ++i) s += static_cast<double>(xv[r * 8 + i]) * W[i * 24 + j];
      EXPECT_NEAR(y[r * 24 + j], s, 1e-5);
    }
}

TEST(GptIo, ImportsTransformersSpellingsAndRejectsMismatches) {
  nn::GptOptions o = tiny_options(37, 8, 2, 2, 8);
  auto a = tiny_gpt(o, 3.0f);
  std::vector<NamedTensor> hf = nn::gpt_to_hf(*a);
  // As saved from GPT2LMHeadModel: "transformer." prefix, the causal-mask
  // buffers and a tied lm_head.
  std::vector<NamedTensor> lm;
  for (auto& [n, t] : hf) lm.emplace_back("transformer." + n, t);
  for (int l = 0; l < 2; ++l)
    lm.emplace_back("transformer.h." + std::to_string(l) + ".attn.bias", Tensor::zeros({1, 1, 8, 8}, DType::f32, Device::cpu()));
  lm.emplace_back("lm_head.weight", hf[0].second);
  TempFile f("lmhead.safetensors");
  write_named_tensors(f.path, lm);
  nn::Gpt b(o, make_rng(2));
  nn::import_gpt_safetensors(b, f.path);
  EXPECT_TRUE(bitwise_equal(b.block(1).mlp().c_fc().weight().value.to_vector(),
                            a->block(1).mlp().c_fc().weight().value.to_vector(), "c_fc"));

  // Another width: an error naming the tensor and both shapes.
  nn::Gpt wide(tiny_options(37, 8, 2, 2, 16), make_rng(1));
  try {
    nn::import_gpt_safetensors(wide, f.path);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.wte.weight"), std::string::npos) << e.what();
  }
  // A tensor with no place in the model.
  hf.emplace_back("h.9.mlp.c_fc.weight", Tensor::zeros({8, 32}, DType::f32, Device::cpu()));
  TempFile g("extra.safetensors");
  write_named_tensors(g.path, hf);
  EXPECT_THROW(nn::import_gpt_safetensors(b, g.path), InputError);
}

// --- generation ----------------------------------------------------------------------

TEST(GptGenerate, KvCacheEqualsFullRecompute) {
  nn::GptOptions o = tiny_options(61, 32, 2, 2, 16);
  auto m = tiny_gpt(o, 20.0f);
  m->to(Device::cpu(), DType::f64, DType::f64);
  const std::vector<int32_t> prompt = {5, 17, 3};
  nn::GenerateOptions g;
  g.max_new_tokens = 29;  // prompt + output = 32 = block_size
  g.temperature = 0.0f;
  g.use_cache = true;
  const std::vector<int32_t> cached = m->generate(prompt, g);
  g.use_cache = false;
  const std::vector<int32_t> full = m->generate(prompt, g);
  EXPECT_EQ(cached.size(), 29u);
  EXPECT_EQ(cached, full);
  // Not a degenerate constant sequence.
  EXPECT_GT(std::set<int32_t>(cached.begin(), cached.end()).size(), 3u);

  // Sampling with temperature and top-k: same draws, same tokens.
  g.temperature = 0.9f;
  g.top_k = 5;
  g.seed = 11;
  g.use_cache = true;
  const std::vector<int32_t> s1 = m->generate(prompt, g);
  g.use_cache = false;
  EXPECT_EQ(s1, m->generate(prompt, g));
  g.use_cache = true;
  EXPECT_EQ(s1, m->generate(prompt, g));  // reproducible
  g.seed = 12;
  EXPECT_NE(s1, m->generate(prompt, g));
  EXPECT_TRUE(m->training());  // mode restored
}

TEST(GptGenerate, PastTheContextAndStopToken) {
  nn::GptOptions o = tiny_options(61, 8, 1, 2, 8);
  auto m = tiny_gpt(o, 20.0f);
  m->to(Device::cpu());
  nn::GenerateOptions g;
  g.max_new_tokens = 40;  // five times the context: the cache restarts
  g.temperature = 1.0f;
  g.seed = 3;
  std::vector<int32_t> out = m->generate({1, 2}, g);
  ASSERT_EQ(out.size(), 40u);
  for (int32_t t : out) EXPECT_TRUE(t >= 0 && t < 61);
  // Stop at the first occurrence of a token that does appear.
  g.stop_token = out[4];
  std::vector<int32_t> stopped = m->generate({1, 2}, g);
  const size_t first = static_cast<size_t>(std::find(out.begin(), out.end(), out[4]) - out.begin());
  EXPECT_EQ(stopped.size(), first + 1);
  // min_new_tokens: the stop token cannot be drawn before then.
  g.min_new_tokens = 40;
  std::vector<int32_t> full = m->generate({1, 2}, g);
  EXPECT_EQ(full.size(), 40u);
  EXPECT_EQ(std::count(full.begin(), full.end(), out[4]), 0);
  g.min_new_tokens = 0;
  EXPECT_THROW(m->generate({}, g), InputError);
  EXPECT_THROW(m->generate({61}, g), InputError);
}

TEST(GptGenerate, TopKOneIsGreedy) {
  nn::GptOptions o = tiny_options(61, 16, 1, 2, 8);
  auto m = tiny_gpt(o, 20.0f);
  m->to(Device::cpu());
  nn::GenerateOptions g;
  g.max_new_tokens = 10;
  g.temperature = 0.0f;
  const std::vector<int32_t> greedy = m->generate({7}, g);
  g.temperature = 1.5f;
  g.top_k = 1;
  EXPECT_EQ(m->generate({7}, g), greedy);
}

// --- GPU -----------------------------------------------------------------------------

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return aa == 0 && bb == 0 ? 1.0 : ab / std::sqrt(aa * bb);
}

TEST(GptModulesGpu, MatchCpuFp32AndBf16) {
  KILN_REQUIRE_GPU();
  auto rng = make_rng(2);
  nn::GptOptions o = tiny_options(100, 40, 2, 2, 64);  // head dim 32: a size the GPU kernel has
  for (DType dt : {DType::f32, DType::bf16}) {
    EXPECT_TRUE(compare_cpu_cuda([] { return std::make_unique<nn::LayerNorm>(64); }, random_input({3, 33, 64}, 1), dt,
                                 "layernorm"));
    EXPECT_TRUE(compare_cpu_cuda([] { return std::make_unique<nn::Embedding>(100, 128, 40, 64, 0.5f, 1, 0); },
                                 token_input(3, 33, 100, 2), dt, "embedding", false));
    EXPECT_TRUE(compare_cpu_cuda([rng] { return std::make_unique<nn::CausalSelfAttention>(64, 2, true, 0.0f, rng, 3); },
                                 random_input({2, 33, 64}, 3), dt, "attention"));
    EXPECT_TRUE(compare_cpu_cuda([o] { return std::make_unique<nn::GptBlock>(o, make_rng(1)); },
                                 random_input({2, 33, 64}, 4), dt, "block"));
  }
}

TEST(GptGpu, LogitsLossAndGradientsMatchCpu) {
  KILN_REQUIRE_GPU();
  nn::GptOptions o = tiny_options(300, 64, 2, 4, 128);  // head dim 32
  for (DType dt : {DType::f32, DType::bf16}) {
    auto cpu = tiny_gpt(o, 5.0f), gpu = tiny_gpt(o, 5.0f);
    cpu->to(Device::cpu());
    gpu->to(Device::cuda(0), DType::f32, dt);
    Tensor tc = token_input(2, 64, o.vocab_size, 8)(Device::cpu(), DType::f32);
    Tensor tg = token_input(2, 64, o.vocab_size, 8)(Device::cuda(0), DType::f32);
    std::vector<int32_t> targets(128);
    for (int i = 0; i < 128; ++i) targets[i] = (i * 7 + 3) % 300;
    Tensor lc = cpu->forward(tc), lg = gpu->forward(tg);
    const std::vector<float> vc = lc.to_vector(), vg = lg.to_vector();
    if (dt == DType::f32) {
      EXPECT_TRUE(all_close(vg, vc, {1e-3, 1e-4}, "logits f32"));
    }
    EXPECT_GT(cosine(vg, vc), dt == DType::f32 ? 0.99999 : 0.999) << dtype_name(dt);
    nn::CrossEntropyLoss ce;
    cpu->zero_grad();
    gpu->zero_grad();
    nn::LossSum sc = ce.forward_backward(lc, targets, o.vocab_size, 1.0f);
    nn::LossSum sg = ce.forward_backward(lg, targets, o.vocab_size, 1.0f);
    EXPECT_NEAR(sg.sum / sg.count, sc.sum / sc.count, dt == DType::f32 ? 1e-4 : 2e-2);
    cpu->backward(lc);
    gpu->backward(lg);
    auto pc = cpu->parameters(), pg = gpu->parameters();
    for (size_t i = 0; i < pc.size(); ++i)
      EXPECT_GT(cosine(pg[i]->grad.to_vector(), pc[i]->grad.to_vector()), dt == DType::f32 ? 0.9999 : 0.99)
          << pc[i]->name << " " << dtype_name(dt);
  }
}

TEST(GptGpu, KvCacheGenerationMatchesCpu) {
  KILN_REQUIRE_GPU();
  nn::GptOptions o = tiny_options(300, 64, 2, 2, 64);
  auto cpu = tiny_gpt(o, 20.0f), gpu = tiny_gpt(o, 20.0f);
  cpu->to(Device::cpu());
  gpu->to(Device::cuda(0));
  nn::GenerateOptions g;
  g.max_new_tokens = 30;
  g.temperature = 0.0f;
  const std::vector<int32_t> c = cpu->generate({1, 2, 3}, g);
  EXPECT_EQ(gpu->generate({1, 2, 3}, g), c);
  g.use_cache = false;
  EXPECT_EQ(gpu->generate({1, 2, 3}, g), c);
}

}  // namespace
}  // namespace kiln::test
