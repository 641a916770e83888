// The ViT and its parts: patch embedding, class token + positions, token
// pooling, the shared transformer block in its bidirectional form, and a tiny
// ViT (cls and mean pooling) against finite differences in f64 on the CPU;
// the patch embedding equals a strided convolution with PyTorch's weight
// layout; bidirectional attention sees later tokens; names, init and option
// checks; a single batch overfits; CPU vs GPU (Gpu suites).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "nn/loss.h"
#include "nn/optimizer.h"
#include "nn/vit.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/nn/module_check.h"

namespace kiln::test {
namespace {

std::shared_ptr<nn::RngStream> make_rng(uint64_t seed) {
  auto r = std::make_shared<nn::RngStream>();
  r->seed = seed;
  return r;
}

nn::VitOptions tiny_options(nn::VitPool pool = nn::VitPool::cls) {
  nn::VitOptions o;
  o.image_h = 8;
  o.image_w = 12;
  o.channels = 2;
  o.patch = 4;  // 2 x 3 = 6 patches of 32 values
  o.dim = 8;
  o.depth = 2;
  o.heads = 2;
  o.mlp_hidden = 12;  // not 4·dim: the hidden width is a parameter
  o.classes = 5;
  o.pool = pool;
  o.seed = 3;
  return o;
}

// The ViT with noise added to every parameter so finite differences see real
// curvature (at the init's std 0.02 and a 1e-6 class token everything is
// nearly linear).
std::unique_ptr<nn::Vit> tiny_vit(const nn::VitOptions& o, float scale = 1.0f) {
  auto m = std::make_unique<nn::Vit>(o, make_rng(1));
  if (scale != 1.0f) {
    uint64_t off = 1000003;
    for (nn::Parameter* p : m->parameters()) {
      Tensor noise = Tensor::empty(p->value.shape(), DType::f32, Device::cpu());
      off = noise.normal_(99, off, 0.0f, 0.05f * scale);
      std::vector<float> v = p->value.to_vector(), nv = noise.to_vector();
      for (size_t i = 0; i < v.size(); ++i) v[i] += nv[i];
      p->value.copy_from(Tensor::from_vector(v, p->value.shape(), DType::f32, Device::cpu()));
    }
  }
  return m;
}

// --- finite differences --------------------------------------------------------------

TEST(VitModules, PatchEmbeddingMatchesFiniteDifferences) {
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::PatchEmbedding>(6, 9, 2, 3, 5, true, 1, 0); },
                                     random_input({2, 6, 9, 2}, 11), "patch_embed"));
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::PatchEmbedding>(4, 4, 1, 1, 3, false, 2, 0); },
                                     random_input({3, 16}, 12), "patch_embed_p1_flat"));
}

TEST(VitModules, ClassTokenEmbeddingMatchesFiniteDifferences) {
  // Parameters start at zero; give them values so the check is not trivial.
  auto make = [](bool cls) {
    return [cls] {
      auto m = std::make_unique<nn::ClassTokenEmbedding>(5, 4, cls);
      uint64_t off = 0;
      for (nn::Parameter* p : m->parameters()) off = p->value.uniform_(7, off, -1.0f, 1.0f);
      return m;
    };
  };
  EXPECT_TRUE(check_module_gradients(make(true), random_input({3, 5, 4}, 13), "cls_token"));
  EXPECT_TRUE(check_module_gradients(make(false), random_input({2, 5, 4}, 14), "pos_only"));
}

TEST(VitModules, TokenPoolMatchesFiniteDifferences) {
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::TokenPool>(0, 1); }, random_input({3, 5, 4}, 15),
                                     "pool_cls"));
  EXPECT_TRUE(check_module_gradients([] { return std::make_unique<nn::TokenPool>(1, 4); }, random_input({2, 5, 7}, 16),
                                     "pool_mean"));
}

TEST(VitModules, BidirectionalBlockMatchesFiniteDifferences) {
  auto rng = make_rng(4);
  EXPECT_TRUE(check_module_gradients(
      [rng] { return std::make_unique<nn::TransformerBlock>(8, 2, 12, /*causal=*/false, 0.0f, true, rng, 5); },
      random_input({2, 5, 8}, 17), "block_bidirectional"));
  EXPECT_TRUE(check_module_gradients(
      [rng] { return std::make_unique<nn::TransformerBlock>(6, 3, 5, /*causal=*/false, 0.0f, false, rng, 6); },
      random_input({1, 7, 6}, 18), "block_bidirectional_nobias"));
}

TEST(Vit, BackwardMatchesFiniteDifferences) {
  for (nn::VitPool pool : {nn::VitPool::cls, nn::VitPool::mean}) {
    const nn::VitOptions o = tiny_options(pool);
    const std::string what = pool == nn::VitPool::cls ? "vit_cls" : "vit_mean";
    EXPECT_TRUE(check_module_gradients([o] { return tiny_vit(o, 10.0f); }, random_input({2, 8, 12, 2}, 19), what,
                                       /*check_input_grad=*/false));
  }
}

// --- structure -----------------------------------------------------------------------

TEST(VitModules, PatchEmbeddingIsAStridedConvolution) {
  // y[b, py, px, k] = bias[k] + Σ_{c, i, j} w_torch[k, c, i, j] · x[b, py·p + i, px·p + j, c]
  // with the Linear's weight = w_torch permuted (0, 2, 3, 1) and flattened.
  const int64_t B = 2, H = 6, W = 9, C = 2, p = 3, K = 4;
  nn::PatchEmbedding pe(H, W, C, p, K, true, 5, 0);
  const std::vector<float> w = pe.proj().weight().value.to_vector();  // (K, p, p, C)
  const std::vector<float> bias = pe.proj().bias()->value.to_vector();
  std::vector<float> w_torch(K * C * p * p);  // (K, C, p, p)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < p; ++j) w_torch[((k * C + c) * p + i) * p + j] = w[((k * p + i) * p + j) * C + c];
  Tensor x = random_input({B, H, W, C}, 21)(Device::cpu(), DType::f32);
  const std::vector<float> xv = x.to_vector(), y = pe.forward(x).to_vector();  // (B, N, K)
  const int64_t gh = H / p, gw = W / p;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < gh; ++py)
      for (int64_t px = 0; px < gw; ++px)
        for (int64_t k = 0; k < K; ++k) {
          double s = bias[k];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < p; ++i)
              for (int64_t j = 0; j < p; ++j)
                s += static_cast<double>(w_torch[((k * C + c) * p + i) * p + j]) *
                     xv[((b * H + py * p + i) * W + px * p + j) * C + c];
          EXPECT_NEAR(y[((b * gh + py) * gw + px) * K + k], s, 1e-5) << b << " " << py << " " << px << " " << k;
        }
}

TEST(VitModules, BidirectionalAttentionSeesLaterTokens) {
  // Changing the last token's input changes the first token's output (a
  // causal block would leave it alone).
  nn::TransformerBlock blk(8, 2, 16, /*causal=*/false, 0.0f, true, make_rng(1), 7);
  Tensor x = random_input({1, 6, 8}, 3)(Device::cpu(), DType::f32);
  const std::vector<float> y0 = blk.forward(x).to_vector();
  std::vector<float> xv = x.to_vector();
  // Not a constant shift: ln_1 would normalize that away.
  for (int c = 0; c < 8; ++c) xv[5 * 8 + c] += 0.3f * static_cast<float>(c + 1);
  const std::vector<float> y1 = blk.forward(Tensor::from_vector(xv, {1, 6, 8}, DType::f32, Device::cpu())).to_vector();
  bool first_changed = false;
  for (int c = 0; c < 8; ++c) first_changed |= y0[c] != y1[c];
  EXPECT_TRUE(first_changed);
  EXPECT_FALSE(blk.attn().causal());
  // The same perturbation through a causal block leaves token 0 alone.
  nn::TransformerBlock causal(8, 2, 16, /*causal=*/true, 0.0f, true, make_rng(1), 7);
  const std::vector<float> c0 = causal.forward(x).to_vector();
  const std::vector<float> c1 =
      causal.forward(Tensor::from_vector(xv, {1, 6, 8}, DType::f32, Device::cpu())).to_vector();
  for (int c = 0; c < 8; ++c) EXPECT_EQ(c0[c], c1[c]) << c;
}

TEST(Vit, NamesShapesAndInit) {
  const nn::VitOptions o = tiny_options();
  nn::Vit m(o, make_rng(1));
  std::vector<std::string> names;
  for (nn::Parameter* p : m.parameters()) names.push_back(p->name);
  const std::vector<std::string> want = {
      "patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "blocks.0.ln_1.weight",
      "blocks.0.ln_1.bias", "blocks.0.attn.c_attn.weight", "blocks.0.attn.c_attn.bias", "blocks.0.attn.c_proj.weight",
      "blocks.0.attn.c_proj.bias", "blocks.0.ln_2.weight", "blocks.0.ln_2.bias", "blocks.0.mlp.c_fc.weight",
      "blocks.0.mlp.c_fc.bias", "blocks.0.mlp.c_proj.weight", "blocks.0.mlp.c_proj.bias"};
  ASSERT_GE(names.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(names[i], want[i]);
  const std::vector<std::string> tail = {"norm.weight", "norm.bias", "head.weight", "head.bias"};
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), names.end() - 4));
  EXPECT_EQ(m.num_tokens(), 7);
  EXPECT_EQ(m.tokens().pos_embed().value.shape(), Shape({1, 7, 8}));
  EXPECT_EQ(m.tokens().cls_token()->value.shape(), Shape({1, 1, 8}));
  // Parameters: patch 32·8 + 8, cls 8, pos 7·8, per block (4 LN·8 + 8·24 + 24 + 8·8 + 8 + 8·12 + 12 + 12·8 + 8),
  // norm 16, head 8·5 + 5.
  const int64_t block = 32 + 8 * 24 + 24 + 64 + 8 + 96 + 12 + 96 + 8;
  EXPECT_EQ(m.num_parameters(), 32 * 8 + 8 + 8 + 56 + 2 * block + 16 + 45);
  // No weight decay on the class token, positions, biases and norms.
  for (nn::Parameter* p : m.parameters()) {
    const bool is_weight = p->name.size() > 7 && p->name.compare(p->name.size() - 7, 7, ".weight") == 0 &&
                           p->name.find("ln_") == std::string::npos && p->name.find("norm") == std::string::npos;
    EXPECT_EQ(p->decay, is_weight) << p->name;
  }

  // Mean pooling has no class token.
  nn::Vit mean(tiny_options(nn::VitPool::mean), make_rng(1));
  EXPECT_EQ(mean.tokens().cls_token(), nullptr);
  EXPECT_EQ(mean.num_tokens(), 6);
  EXPECT_EQ(mean.num_parameters(), m.num_parameters() - 8 - 8);

  // Init statistics on a wider model: truncated N(0, 0.02²) at ±2σ has std
  // 0.02·0.880 = 0.0176 and nothing beyond 0.04; the class token is ~1e-6.
  nn::VitOptions w = tiny_options();
  w.dim = 128;
  w.mlp_hidden = 256;
  w.heads = 4;
  nn::Vit g(w, make_rng(1));
  auto stats = [](const Tensor& t) {
    std::vector<double> v = t.to_vector_f64();
    double s = 0, s2 = 0, mx = 0;
    for (double x : v) {
      s += x;
      s2 += x * x;
      mx = std::max(mx, std::fabs(x));
    }
    const double n = static_cast<double>(v.size());
    return std::make_pair(std::sqrt(s2 / n - (s / n) * (s / n)), mx);
  };
  for (const Tensor* t : {&g.block(0).attn().c_attn().weight().value, &g.block(1).mlp().c_proj().weight().value,
                          &g.tokens().pos_embed().value}) {
    auto [sd, mx] = stats(*t);
    EXPECT_NEAR(sd, 0.0176, 0.001);
    EXPECT_LE(mx, 0.04 + 1e-7);
    EXPECT_GT(mx, 0.03);  // the tails are there, only cut
  }
  EXPECT_LT(stats(g.tokens().cls_token()->value).second, 1e-5);
  EXPECT_EQ(g.block(0).attn().c_attn().bias()->value.to_vector(), std::vector<float>(3 * 128, 0.0f));
  // The patch projection keeps PyTorch's conv default U(±1/√(p·p·C)).
  EXPECT_LE(stats(g.patch_embed().proj().weight().value).second, 1.0 / std::sqrt(32.0));
  // Same seed, same model; another seed, another model.
  nn::Vit g2(w, make_rng(1));
  EXPECT_TRUE(bitwise_equal(g.head().weight().value.to_vector(), g2.head().weight().value.to_vector(), "same seed"));
  w.seed = 4;
  nn::Vit g3(w, make_rng(1));
  EXPECT_NE(g.head().weight().value.to_vector(), g3.head().weight().value.to_vector());
}

TEST(Vit, FlopsCount) {
  const nn::VitOptions o = tiny_options();
  nn::Vit m(o, make_rng(1));
  const double T = 7, N = 6, C = 8, L = 2, hid = 12;
  EXPECT_DOUBLE_EQ(m.train_flops_per_example(),
                   6 * T * L * (4 * C * C + 2 * C * hid) + 12 * L * T * T * C + 4 * N * 32 * C + 6 * C * 5);
}

TEST(Vit, OptionsAreCheckedNamingTheKey) {
  auto fails_with = [](nn::VitOptions o, bool cuda, const std::string& needle) {
    try {
      nn::check_vit_options(o, cuda, "model.vit.");
      return ::testing::AssertionFailure() << "accepted";
    } catch (const InputError& e) {
      if (std::string(e.what()).find(needle) == std::string::npos)
        return ::testing::AssertionFailure() << "message '" << e.what() << "' lacks '" << needle << "'";
      return ::testing::AssertionSuccess();
    }
  };
  nn::VitOptions o = tiny_options();
  o.patch = 3;
  EXPECT_TRUE(fails_with(o, false, "model.vit.patch: 3 does not divide the 8x12 images"));
  o = tiny_options();
  o.heads = 3;
  EXPECT_TRUE(fails_with(o, false, "model.vit.heads: 3 heads do not divide model.vit.dim 8"));
  // dim 8 / 2 heads = 4: fine on the CPU, not a head dimension the CUDA kernel takes.
  EXPECT_NO_THROW(nn::check_vit_options(tiny_options(), false, "model.vit."));
  EXPECT_TRUE(fails_with(tiny_options(), true, "model.vit.dim 8 / model.vit.heads 2 gives head dimension 4"));
  o.dim = 64;
  for (int64_t heads : {1, 2, 4, 8}) {  // head dimensions 64, 32, 16 and 8
    o.heads = heads;
    if (heads == 8)
      EXPECT_TRUE(fails_with(o, true, "the CUDA attention kernel takes 16, 32, 64 or 128"));
    else
      EXPECT_NO_THROW(nn::check_vit_options(o, true, "model.vit.")) << heads;
  }
  o = tiny_options();
  o.patch = 5;
  EXPECT_THROW(nn::Vit(o, make_rng(1)), InputError);  // the constructor checks before allocating
}

TEST(Vit, ClsPoolingReadsTheClassToken) {
  nn::Vit m(tiny_options(nn::VitPool::cls), make_rng(1));
  Tensor x = random_input({2, 8, 12, 2}, 5)(Device::cpu(), DType::f32);
  const std::vector<float> a = m.forward(x).to_vector();
  // Perturb the class token: the cls model's logits move.
  std::vector<float> c = m.tokens().cls_token()->value.to_vector();
  for (float& v : c) v += 0.5f;
  m.tokens().cls_token()->value.copy_from(Tensor::from_vector(c, {1, 1, 8}, DType::f32, Device::cpu()));
  const std::vector<float> b = m.forward(x).to_vector();
  EXPECT_NE(a, b);
}

// --- training ------------------------------------------------------------------------

TEST(Vit, SingleBatchOverfits) {
  for (nn::VitPool pool : {nn::VitPool::cls, nn::VitPool::mean}) {
    nn::VitOptions o = tiny_options(pool);
    o.dim = 32;
    o.heads = 2;
    o.mlp_hidden = 64;
    nn::Vit m(o, make_rng(1));
    m.to(Device::cpu());
    nn::OptimizerOptions oo;
    nn::Optimizer opt(m.parameters(), oo);
    nn::CrossEntropyLoss ce;
    Tensor x = random_input({16, 8, 12, 2}, 8)(Device::cpu(), DType::f32);
    std::vector<int32_t> y(16);
    for (int i = 0; i < 16; ++i) y[static_cast<size_t>(i)] = (i * 7) % 5;
    double first = 0, last = 0;
    for (int step = 0; step < 150; ++step) {
      m.zero_grad();
      Tensor logits = m.forward(x);
      nn::LossSum l = ce.forward_backward(logits, y, 5, 1.0f);
      m.backward(logits);
      opt.step(3e-3, nn::clip_scale(nn::grad_norm(m.parameters()), 1.0));
      const double mean = l.sum / static_cast<double>(l.count);
      if (step == 0) first = mean;
      last = mean;
    }
    EXPECT_NEAR(first, std::log(5.0), 0.15);  // near uniform at init
    EXPECT_LT(last, 0.05) << "from " << first << (pool == nn::VitPool::cls ? " (cls)" : " (mean)");
  }
}

// --- GPU -----------------------------------------------------------------------------

TEST(VitGpu, ModulesMatchCpuFp32AndBf16) {
  KILN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    EXPECT_TRUE(compare_cpu_cuda([] { return std::make_unique<nn::PatchEmbedding>(8, 12, 3, 4, 32, true, 1, 0); },
                                 random_input({3, 8, 12, 3}, 31), dt, "patch_embed"));
    EXPECT_TRUE(compare_cpu_cuda(
        [] {
          auto m = std::make_unique<nn::ClassTokenEmbedding>(49, 64, true);
          uint64_t off = 0;
          for (nn::Parameter* p : m->parameters()) off = p->value.uniform_(7, off, -1.0f, 1.0f);
          return m;
        },
        random_input({5, 49, 64}, 32), dt, "cls_token"));
    EXPECT_TRUE(compare_cpu_cuda([] { return std::make_unique<nn::TokenPool>(0, 49); }, random_input({4, 49, 64}, 33),
                                 dt, "pool_mean"));
    auto rng = make_rng(2);
    EXPECT_TRUE(compare_cpu_cuda(
        [rng] { return std::make_unique<nn::TransformerBlock>(64, 2, 128, false, 0.0f, true, rng, 3); },
        random_input({4, 50, 64}, 34), dt, "block_bidirectional"));
  }
}

TEST(VitGpu, ModelMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (nn::VitPool pool : {nn::VitPool::cls, nn::VitPool::mean}) {
    nn::VitOptions o;  // 28x28x1, patch 4, 49 tokens; head dim 16 (cls) and 32 (mean)
    o.dim = 64;
    o.heads = pool == nn::VitPool::cls ? 4 : 2;
    o.depth = 2;
    o.mlp_hidden = 128;
    o.pool = pool;
    for (DType dt : {DType::f32, DType::bf16})
      EXPECT_TRUE(compare_cpu_cuda([o] { return tiny_vit(o, 2.0f); }, random_input({8, 28, 28, 1}, 35), dt, "vit",
                                   /*check_input_grad=*/false));
  }
}

}  // namespace
}  // namespace kiln::test
