// Cross-entropy loss (values, gradient vs finite differences, ignore_index),
// LR schedules, optimizer plumbing (decay flags, state round trip), grad norm.
#include <gtest/gtest.h>

#include <cmath>

#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "nn/schedule.h"
#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"

namespace kiln::test {
namespace {

Tensor f64_tensor(const std::vector<double>& v, const Shape& s) {
  Tensor t = Tensor::empty(s, DType::f64, Device::cpu(), "logits");
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

TEST(CrossEntropyLoss, MatchesDirectFormulaAndIgnoresRows) {
  const std::vector<float> logits = {1, 2, 3, 0, 0, 0, -1, 5, 2};
  const std::vector<int32_t> targets = {2, -100, 1};
  Tensor t = Tensor::from_vector(logits, {3, 3}, DType::f32, Device::cpu());
  nn::CrossEntropyLoss ce;
  nn::LossSum s = ce.forward(t, targets, 3);
  const double l0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0;
  const double l2 = std::log(std::exp(-1.0) + std::exp(5.0) + std::exp(2.0)) - 5.0;
  EXPECT_EQ(s.count, 2);
  EXPECT_NEAR(s.sum, l0 + l2, 1e-5);
  Tensor g = t.clone();
  nn::LossSum s2 = ce.forward_backward(g, targets, 3, 1.0f);
  EXPECT_NEAR(s2.sum, s.sum, 1e-6);
  const auto gv = g.to_vector();
  for (int c = 0; c < 3; ++c) EXPECT_EQ(gv[3 + c], 0.0f) << "ignored row must get no gradient";
}

TEST(CrossEntropyLoss, GradientMatchesFiniteDifferences) {
  const int64_t rows = 5, V = 7, Vp = 8;  // one padded column
  const std::vector<int32_t> targets = {0, 6, -100, 3, 3};
  const std::vector<double> x0 = random_uniform_f64(rows * Vp, 3, -2.0, 2.0);
  nn::CrossEntropyLoss ce;
  auto loss = [&](const std::vector<double>& x) {
    nn::LossSum s = ce.forward(f64_tensor(x, {rows, Vp}), targets, V);
    return s.sum / static_cast<double>(s.count);
  };
  Tensor g = f64_tensor(x0, {rows, Vp});
  ce.forward_backward(g, targets, V, 1.0f);
  EXPECT_TRUE(check_gradient(loss, x0, g.to_vector_f64(), "cross-entropy dlogits"));
}

TEST(CrossEntropyLoss, RejectsOutOfRangeTargets) {
  Tensor t = Tensor::zeros({2, 4}, DType::f32, Device::cpu());
  nn::CrossEntropyLoss ce;
  EXPECT_THROW(ce.forward(t, {0, 4}, 4), Error);
  EXPECT_THROW(ce.forward(t, {0}, 4), Error);
}

TEST(LrSchedule, WarmupCosineLinearStep) {
  nn::ScheduleConfig c;
  c.lr = 1.0;
  c.warmup_steps = 10;
  c.total_steps = 110;
  c.min_lr_ratio = 0.1;
  c.type = nn::ScheduleType::cosine;
  nn::LrSchedule cos(c);
  EXPECT_DOUBLE_EQ(cos.lr(0), 0.1);
  EXPECT_DOUBLE_EQ(cos.lr(9), 1.0);
  EXPECT_NEAR(cos.lr(10), 1.0, 1e-12);
  EXPECT_NEAR(cos.lr(60), 0.55, 1e-12);
  EXPECT_NEAR(cos.lr(110), 0.1, 1e-12);
  c.type = nn::ScheduleType::linear;
  EXPECT_NEAR(nn::LrSchedule(c).lr(60), 0.55, 1e-12);
  c.type = nn::ScheduleType::step;
  c.step_size = 20;
  c.gamma = 0.5;
  EXPECT_NEAR(nn::LrSchedule(c).lr(10 + 45), 0.25, 1e-12);
  c.type = nn::ScheduleType::constant;
  EXPECT_DOUBLE_EQ(nn::LrSchedule(c).lr(100), 1.0);
  EXPECT_THROW(nn::parse_schedule_type("exp"), InputError);
}

TEST(Optimizer, AdamWSkipsDecayOnBiasesAndRoundTripsState) {
  nn::Linear l(3, 2, true, 1, 0);
  auto params = l.parameters();
  nn::OptimizerOptions o;
  o.weight_decay = 0.5;
  nn::Optimizer opt(params, o);
  const auto b0 = params[1]->value.to_vector();
  // Zero gradients: AdamW's update is then decay only, so the bias must not move.
  opt.step(0.1);
  EXPECT_EQ(params[1]->value.to_vector(), b0);
  const auto w = params[0]->value.to_vector();
  // A second optimizer restored from the first's state steps identically.
  nn::Optimizer opt2(params, o);
  std::map<std::string, Tensor> st;
  for (auto& [n, t] : opt.state()) st[n] = t.clone();
  opt2.load_state(st, opt.steps());
  EXPECT_EQ(opt2.steps(), 1);
  EXPECT_EQ(opt.state().size(), 4u);
  EXPECT_EQ(opt.state()[0].first, "weight.exp_avg");
  std::map<std::string, Tensor> bad = st;
  bad.erase("bias.exp_avg_sq");
  EXPECT_THROW(opt2.load_state(bad, 1), InputError);
  (void)w;
}

TEST(Optimizer, GradNormAndClipScale) {
  nn::Linear l(2, 2, true, 1, 0);
  auto params = l.parameters();
  params[0]->grad.fill_(1.0);  // 4 ones
  params[1]->grad.fill_(2.0);  // 2 twos
  EXPECT_NEAR(nn::grad_norm(params), std::sqrt(4.0 + 8.0), 1e-6);
  EXPECT_FLOAT_EQ(nn::clip_scale(10.0, 1.0), static_cast<float>(1.0 / (10.0 + 1e-6)));
  EXPECT_FLOAT_EQ(nn::clip_scale(0.5, 1.0), 1.0f);
  EXPECT_FLOAT_EQ(nn::clip_scale(5.0, 0.0), 1.0f);
}

}  // namespace
}  // namespace kiln::test
