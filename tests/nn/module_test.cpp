// Module bookkeeping: trainable / frozen parameters and buffers.
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "nn/gpt.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/optimizer.h"

namespace kiln::nn {
namespace {

// Two Linears and a buffer, so names, freezing and buffers have a tree to walk.
class TwoLayers : public Module {
 public:
  TwoLayers() : a_(3, 4, true, 1, 0), b_(4, 2, false, 1, 100) {
    register_module("a", &a_);
    register_module("b", &b_);
    register_buffer("count", Tensor::zeros({1}, DType::i32, Device::cpu()));
  }
  Tensor forward(const Tensor& x) override { return b_.forward(a_.forward(x)); }
  Tensor backward(const Tensor& dy) override { return a_.backward(b_.backward(dy)); }
  std::string describe() const override { return "TwoLayers"; }
  Linear& a() { return a_; }

 private:
  Linear a_, b_;
};

TEST(Module, FrozenParametersHaveNoGradientAndAreNotTrainable) {
  TwoLayers m;
  EXPECT_EQ(m.num_parameters(), 3 * 4 + 4 + 4 * 2);
  EXPECT_EQ(m.trainable_parameters().size(), 3u);
  m.a().set_trainable(false);
  const std::vector<Parameter*> t = m.trainable_parameters();
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0]->name, "b.weight");
  EXPECT_EQ(m.num_trainable_parameters(), 8);
  for (Parameter* p : m.parameters()) EXPECT_EQ(p->grad.defined(), p->trainable) << p->name;
  m.zero_grad();  // must skip the frozen ones
  m.to(Device::cpu());
  for (Parameter* p : m.parameters()) EXPECT_EQ(p->grad.defined(), p->trainable) << p->name;
  EXPECT_NE(m.summary().find("parameters: 8 trainable / 24 total"), std::string::npos) << m.summary();
  m.a().set_trainable(true);
  EXPECT_EQ(m.trainable_parameters().size(), 3u);
  for (Parameter* p : m.parameters()) {
    ASSERT_TRUE(p->grad.defined()) << p->name;
    EXPECT_EQ(p->grad.shape(), p->value.shape());
  }
}

TEST(Module, BuffersHaveFullNamesAndKeepTheirDtype) {
  TwoLayers m;
  const std::vector<Buffer*> b = m.buffers();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0]->name, "count");
  EXPECT_EQ(b[0]->value.dtype(), DType::i32);
  m.to(Device::cpu(), DType::f64);
  EXPECT_EQ(m.buffers()[0]->value.dtype(), DType::i32);
  EXPECT_EQ(m.parameters()[0]->value.dtype(), DType::f64);
}

TEST(Module, ParameterInPicksTheComputeCopy) {
  Linear l(2, 2, false, 3, 0);
  const Parameter& w = l.weight();
  EXPECT_EQ(&w.in(DType::f32), &w.value);
  EXPECT_THROW(w.in(DType::bf16), Error);
  l.to(Device::cpu(), DType::f32, DType::bf16);
  ASSERT_TRUE(l.weight().lowp.defined());
  EXPECT_EQ(&l.weight().in(DType::bf16), &l.weight().lowp);
  l.weight().value.fill_(0.5);
  l.refresh_lowp();
  EXPECT_EQ(l.weight().lowp.cast(DType::f32).to_vector()[0], 0.5f);
}

// Runs forward + backward of two identically initialised models, one with
// the parameters `freeze` selects frozen: dx and every trainable gradient
// must be bit-identical to the unfrozen model's, frozen ones have none.
void expect_freezing_changes_only_frozen_grads(const std::function<std::unique_ptr<Module>()>& make,
                                              const std::function<Tensor()>& input,
                                              const std::function<bool(const std::string&)>& freeze) {
  std::unique_ptr<Module> full = make(), part = make();
  int frozen = 0;
  for (Parameter* p : part->parameters()) {
    if (!freeze(p->name)) continue;
    p->trainable = false;
    p->grad = Tensor();
    ++frozen;
  }
  ASSERT_GT(frozen, 0);
  Tensor x = input();
  Tensor y_full = full->forward(x), y_part = part->forward(x);
  ASSERT_EQ(y_full.to_vector(), y_part.to_vector());
  Tensor dy = Tensor::empty(y_full.shape(), DType::f32, Device::cpu(), "dy");
  dy.uniform_(11, 0, -1.0f, 1.0f);
  Tensor dx_full = full->backward(dy.clone()), dx_part = part->backward(dy.clone());
  ASSERT_EQ(dx_full.defined(), dx_part.defined());
  if (dx_full.defined()) {
    EXPECT_EQ(dx_full.to_vector(), dx_part.to_vector());
  }
  const std::vector<Parameter*> pf = full->parameters(), pp = part->parameters();
  ASSERT_EQ(pf.size(), pp.size());
  for (size_t i = 0; i < pf.size(); ++i) {
    if (!pp[i]->trainable) {
      EXPECT_FALSE(pp[i]->grad.defined()) << pp[i]->name;
      continue;
    }
    EXPECT_EQ(pf[i]->grad.to_vector(), pp[i]->grad.to_vector()) << pp[i]->name;
  }
  // The optimizer and the norm see only the trainable ones.
  OptimizerOptions oo;
  Optimizer opt(part->parameters(), oo);
  EXPECT_EQ(opt.state().size(), 2 * part->trainable_parameters().size());
  std::vector<Parameter*> trainable_full;
  for (size_t i = 0; i < pf.size(); ++i)
    if (pp[i]->trainable) trainable_full.push_back(pf[i]);
  EXPECT_EQ(grad_norm(part->parameters()), grad_norm(trainable_full));
  opt.step(0.1);
  for (size_t i = 0; i < pp.size(); ++i) {
    if (pp[i]->trainable) continue;
    EXPECT_EQ(pp[i]->value.to_vector(), pf[i]->value.to_vector()) << pp[i]->name;
  }
}

TEST(Module, FrozenLinearComputesOnlyDx) {
  expect_freezing_changes_only_frozen_grads(
      [] { return std::make_unique<TwoLayers>(); },
      [] {
        Tensor x = Tensor::empty({5, 3}, DType::f32, Device::cpu(), "x");
        x.uniform_(3, 0, -1.0f, 1.0f);
        return x;
      },
      [](const std::string& n) { return n.rfind("a.", 0) == 0 || n == "b.weight"; });
}

TEST(Module, FrozenGptPartsLeaveTheOtherGradientsUnchanged) {
  nn::GptOptions o;
  o.vocab_size = 37;
  o.block_size = 8;
  o.n_layer = 2;
  o.n_head = 2;
  o.n_embd = 8;
  o.seed = 5;
  auto rng = std::make_shared<RngStream>();
  auto make = [o, rng] { return std::unique_ptr<Module>(new Gpt(o, rng)); };
  auto tokens = [] {
    std::vector<int32_t> ids(2 * 8);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + 3) % 37);
    return Tensor::from_vector(ids, {2, 8}, Device::cpu());
  };
  // The tied table, the first block's LayerNorms and linear weights (LoRA's
  // base) and the final LayerNorm frozen; every bias still trains.
  expect_freezing_changes_only_frozen_grads(make, tokens, [](const std::string& n) {
    return n == "wte.weight" || n == "ln_f.weight" || (n.rfind("h.0.", 0) == 0 && n.find("bias") == std::string::npos);
  });
  // Everything but the biases frozen (the embedding backward has nothing to do).
  expect_freezing_changes_only_frozen_grads(make, tokens,
                                            [](const std::string& n) { return n.find("bias") == std::string::npos; });
}

}  // namespace
}  // namespace kiln::nn
