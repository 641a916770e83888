// Packed sequences in the GPT and its parts: the embedding with position ids
// (positions 0..T-1 give exactly the plain embedding; restarting positions
// match each example embedded alone; gradients by finite differences and
// against the unpacked sums), and the whole GPT with segment ids and
// positions: a packed row's logits and gradients equal those of its examples
// run one by one, and set_packing with nothing clears it.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "nn/embedding.h"
#include "nn/gpt.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/nn/module_check.h"

namespace kiln::test {
namespace {

std::vector<int32_t> ids_of(int64_t n, int64_t V, uint64_t seed) {
  std::vector<float> u = random_uniform(static_cast<size_t>(n), seed, 0.0f, 1.0f);
  std::vector<int32_t> ids(u.size());
  for (size_t i = 0; i < u.size(); ++i) ids[i] = std::min<int32_t>(static_cast<int32_t>(u[i] * V), V - 1);
  return ids;
}

Tensor ids_tensor(const std::vector<int32_t>& v, int64_t B, int64_t T) {
  return Tensor::from_vector(v, {B, T}, Device::cpu());
}

TEST(EmbeddingPositions, IdentityPositionsEqualThePlainEmbedding) {
  const int64_t B = 3, T = 7, V = 11, C = 5;
  nn::Embedding plain(V, 16, T, C, 0.5f, 4, 0), with(V, 16, T, C, 0.5f, 4, 0);
  const Tensor tok = ids_tensor(ids_of(B * T, V, 1), B, T);
  std::vector<int32_t> pos(static_cast<size_t>(B * T));
  for (int64_t i = 0; i < B * T; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(i % T);
  with.set_positions(ids_tensor(pos, B, T));
  const Tensor a = plain.forward(tok), b = with.forward(tok);
  EXPECT_EQ(a.to_vector(), b.to_vector());
  const Tensor dy = Tensor::from_vector(random_uniform(static_cast<size_t>(B * T * C), 2, -1.0f, 1.0f), {B, T, C},
                                        DType::f32, Device::cpu());
  plain.zero_grad();
  with.zero_grad();
  plain.backward(dy);
  with.backward(dy);
  EXPECT_EQ(plain.wte().grad.to_vector(), with.wte().grad.to_vector());  // same order of fp32 sums
  EXPECT_EQ(plain.wpe().grad.to_vector(), with.wpe().grad.to_vector());
}

TEST(EmbeddingPositions, PackedRowEqualsEachExampleAlone) {
  // One row of 9 positions holding examples of 4, 2 and 3 tokens.
  const int64_t V = 13, C = 6, T = 9;
  const std::vector<int64_t> lens = {4, 2, 3};
  nn::Embedding packed(V, V, T, C, 0.5f, 8, 0), alone(V, V, T, C, 0.5f, 8, 0);
  const std::vector<int32_t> tok = ids_of(T, V, 5);
  std::vector<int32_t> pos;
  for (const int64_t L : lens)
    for (int64_t t = 0; t < L; ++t) pos.push_back(static_cast<int32_t>(t));
  packed.set_positions(ids_tensor(pos, 1, T));
  const std::vector<float> dy = random_uniform(static_cast<size_t>(T * C), 6, -1.0f, 1.0f);
  const std::vector<float> y = packed.forward(ids_tensor(tok, 1, T)).to_vector();
  packed.zero_grad();
  packed.backward(Tensor::from_vector(dy, {1, T, C}, DType::f32, Device::cpu()));

  alone.zero_grad();
  int64_t at = 0;
  for (const int64_t L : lens) {
    const std::vector<int32_t> t(tok.begin() + at, tok.begin() + at + L);
    const std::vector<float> ya = alone.forward(ids_tensor(t, 1, L)).to_vector();
    for (int64_t i = 0; i < L * C; ++i) EXPECT_EQ(ya[static_cast<size_t>(i)], y[static_cast<size_t>(at * C + i)]);
    alone.backward(Tensor::from_vector(std::vector<float>(dy.begin() + at * C, dy.begin() + (at + L) * C), {1, L, C},
                                       DType::f32, Device::cpu()));
    at += L;
  }
  // Gradients: the same sums, in another order (per example vs per row).
  EXPECT_TRUE(all_close(packed.wte().grad.to_vector(), alone.wte().grad.to_vector(), Tolerance{1e-6, 1e-6}, "dwte"));
  EXPECT_TRUE(all_close(packed.wpe().grad.to_vector(), alone.wpe().grad.to_vector(), Tolerance{1e-6, 1e-6}, "dwpe"));
}

TEST(EmbeddingPositions, BackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 5, V = 7, C = 3;
  std::vector<int32_t> pos = {0, 1, 2, 0, 1, 0, 0, 1, 2, 3};
  EXPECT_TRUE(check_module_gradients(
      [&] {
        auto m = std::make_unique<nn::Embedding>(V, V, T, C, 0.5f, 2, 0);
        m->set_positions(ids_tensor(pos, B, T));
        return m;
      },
      [&](Device d, DType) { return Tensor::from_vector(ids_of(B * T, V, 9), {B, T}, d); }, "embedding+positions",
      /*check_input_grad=*/false));
}

TEST(EmbeddingPositions, BadPositionIdsAreRejected) {
  nn::Embedding e(5, 5, 4, 2, 0.5f, 1, 0);
  const Tensor tok = ids_tensor({1, 2, 3, 4}, 1, 4);
  e.set_positions(ids_tensor({0, 1, 4, 0}, 1, 4));  // 4 is past the 4 positions
  EXPECT_THROW(e.forward(tok), InputError);
  e.set_positions(ids_tensor({0, 1, 2}, 1, 3));  // shape differs from the tokens'
  EXPECT_THROW(e.forward(tok), Error);
  e.set_positions(Tensor());
  EXPECT_NO_THROW(e.forward(tok));
}

nn::GptOptions tiny_gpt_options() {
  nn::GptOptions o;
  o.vocab_size = 37;
  o.block_size = 12;
  o.n_layer = 2;
  o.n_head = 2;
  o.n_embd = 8;
  o.seed = 3;
  return o;
}

std::shared_ptr<nn::RngStream> make_rng() {
  auto r = std::make_shared<nn::RngStream>();
  r->seed = 1;
  return r;
}

std::vector<float> grads_of(nn::Module& m) {
  std::vector<float> g;
  for (nn::Parameter* p : m.parameters()) {
    const std::vector<float> v = p->grad.to_vector();
    g.insert(g.end(), v.begin(), v.end());
  }
  return g;
}

TEST(GptPacking, PackedRowEqualsEachExampleAlone) {
  const nn::GptOptions o = tiny_gpt_options();
  nn::Gpt packed(o, make_rng()), alone(o, make_rng());
  const int64_t T = 12, Vp = packed.padded_vocab();
  const std::vector<int64_t> lens = {5, 4, 1, 2};  // one of length 1
  const std::vector<int32_t> tok = ids_of(T, o.vocab_size, 11);
  std::vector<int32_t> seg, pos;
  for (size_t k = 0; k < lens.size(); ++k)
    for (int64_t t = 0; t < lens[k]; ++t) {
      seg.push_back(static_cast<int32_t>(k));
      pos.push_back(static_cast<int32_t>(t));
    }
  packed.set_packing(ids_tensor(seg, 1, T), ids_tensor(pos, 1, T));
  const std::vector<float> dy = random_uniform(static_cast<size_t>(T * Vp), 12, -1.0f, 1.0f);
  packed.zero_grad();
  Tensor logits = packed.forward(ids_tensor(tok, 1, T));  // (1, T, Vp)
  const std::vector<float> y = logits.to_vector();
  packed.backward(Tensor::from_vector(dy, {1, T, Vp}, DType::f32, Device::cpu()));

  alone.zero_grad();
  int64_t at = 0;
  for (const int64_t L : lens) {
    const std::vector<int32_t> t(tok.begin() + at, tok.begin() + at + L);
    const std::vector<float> ya = alone.forward(ids_tensor(t, 1, L)).to_vector();
    const std::vector<float> want(y.begin() + at * Vp, y.begin() + (at + L) * Vp);
    EXPECT_TRUE(all_close(ya, want, Tolerance{1e-5, 1e-6}, "logits of the example at " + std::to_string(at)));
    alone.backward(Tensor::from_vector(std::vector<float>(dy.begin() + at * Vp, dy.begin() + (at + L) * Vp),
                                       {1, L, Vp}, DType::f32, Device::cpu()));
    at += L;
  }
  EXPECT_TRUE(all_close(grads_of(packed), grads_of(alone), Tolerance{1e-4, 1e-6}, "parameter gradients"));

  // Without segment ids the same row attends across examples: different logits.
  packed.set_packing(Tensor(), ids_tensor(pos, 1, T));
  const std::vector<float> mixed = packed.forward(ids_tensor(tok, 1, T)).to_vector();
  EXPECT_FALSE(all_close(mixed, y, Tolerance{1e-5, 1e-6}, "cross-talk"));
  // Clearing both gives the plain GPT back.
  packed.set_packing(Tensor(), Tensor());
  nn::Gpt plain(o, make_rng());
  EXPECT_TRUE(bitwise_equal(packed.forward(ids_tensor(tok, 1, T)).to_vector(),
                            plain.forward(ids_tensor(tok, 1, T)).to_vector(), "cleared"));
}

TEST(GptPacking, GenerateIgnoresAPackingLeftSet) {
  const nn::GptOptions o = tiny_gpt_options();
  nn::Gpt a(o, make_rng()), b(o, make_rng());
  std::vector<int32_t> seg(24, 0), pos(24, 0);
  a.set_packing(ids_tensor(seg, 2, 12), ids_tensor(pos, 2, 12));  // from a training batch
  nn::GenerateOptions g;
  g.max_new_tokens = 6;
  g.temperature = 0.0f;
  EXPECT_EQ(a.generate({1, 2, 3}, g), b.generate({1, 2, 3}, g));
}

}  // namespace
}  // namespace kiln::test
