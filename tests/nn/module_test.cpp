// Module bookkeeping: trainable / frozen parameters and buffers.
#include <gtest/gtest.h>

#include "nn/linear.h"
#include "nn/module.h"

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

}  // namespace
}  // namespace kiln::nn
