// Every basic layer through the generic checks: finite differences in f64 on
// the CPU, and CPU vs GPU (f32 and bf16) when a GPU is present.
#include <gtest/gtest.h>

#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "tests/harness/harness.h"
#include "tests/nn/module_check.h"

namespace kiln::test {
namespace {

struct LayerCase {
  std::string name;
  ModuleFactory make;
  InputFactory input;
};

std::vector<LayerCase> cases() {
  auto rng = std::make_shared<nn::RngStream>();
  rng->seed = 5;
  return {
      {"linear_7x5", [] { return std::make_unique<nn::Linear>(7, 5, true, 1, 0); }, random_input({3, 7}, 11)},
      {"linear_nobias_3d", [] { return std::make_unique<nn::Linear>(4, 9, false, 2, 0); },
       random_input({2, 3, 4}, 12)},
      {"linear_1x1", [] { return std::make_unique<nn::Linear>(1, 1, true, 3, 0); }, random_input({1, 1}, 13)},
      {"relu", [] { return std::make_unique<nn::ReLU>(); }, random_input({5, 33}, 14)},
      {"gelu", [] { return std::make_unique<nn::GELU>(); }, random_input({4, 31}, 15)},
      {"dropout", [rng] { return std::make_unique<nn::Dropout>(0.3f, rng); }, random_input({6, 17}, 16)},
      {"mlp",
       [] {
         auto s = std::make_unique<nn::Sequential>();
         s->add(std::make_unique<nn::Linear>(6, 8, true, 4, 0));
         s->add(std::make_unique<nn::GELU>());
         s->add(std::make_unique<nn::Linear>(8, 3, true, 5, 0));
         return s;
       },
       random_input({4, 6}, 17)},
  };
}

class Layers : public ::testing::TestWithParam<size_t> {};

TEST_P(Layers, BackwardMatchesFiniteDifferences) {
  const LayerCase c = cases()[GetParam()];
  // Dropout draws a fresh mask per forward; finite differences need the same
  // mask every time, so it is checked with a fixed stream below instead.
  if (c.name == "dropout") GTEST_SKIP() << "dropout is checked in DropoutLayer";
  EXPECT_TRUE(check_module_gradients(c.make, c.input, c.name));
}

TEST_P(Layers, GpuMatchesCpuFp32) {
  KILN_REQUIRE_GPU();
  const LayerCase c = cases()[GetParam()];
  EXPECT_TRUE(compare_cpu_cuda(c.make, c.input, DType::f32, c.name));
}

TEST_P(Layers, GpuMatchesCpuBf16) {
  KILN_REQUIRE_GPU();
  const LayerCase c = cases()[GetParam()];
  EXPECT_TRUE(compare_cpu_cuda(c.make, c.input, DType::bf16, c.name));
}

INSTANTIATE_TEST_SUITE_P(All, Layers, ::testing::Range<size_t>(0, 7),
                         [](const ::testing::TestParamInfo<size_t>& i) { return cases()[i.param].name; });

TEST(DropoutLayer, BackwardUsesTheForwardMask) {
  auto rng = std::make_shared<nn::RngStream>();
  rng->seed = 9;
  nn::Dropout d(0.5f, rng);
  Tensor x = Tensor::full({1000}, 1.0, DType::f32, Device::cpu());
  Tensor y = d.forward(x);
  Tensor dx = d.backward(Tensor::full({1000}, 1.0, DType::f32, Device::cpu()));
  const auto yv = y.to_vector(), gv = dx.to_vector();
  int kept = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    EXPECT_EQ(yv[i], gv[i]) << "mask differs at " << i;
    EXPECT_TRUE(yv[i] == 0.0f || yv[i] == 2.0f) << yv[i];
    kept += yv[i] != 0.0f;
  }
  EXPECT_NEAR(kept, 500, 60);
  // The next forward draws a new mask.
  Tensor y2 = d.forward(x);
  EXPECT_NE(y2.to_vector(), yv);
  // Eval mode is the identity.
  d.eval();
  EXPECT_EQ(d.forward(x).to_vector(), x.to_vector());
}

TEST(ModuleTree, NamesAndCounts) {
  nn::Sequential s;
  s.add(std::make_unique<nn::Linear>(784, 256, true, 1, 0));
  s.add(std::make_unique<nn::ReLU>());
  s.add(std::make_unique<nn::Linear>(256, 10, true, 1, 1000000));
  auto ps = s.parameters();
  ASSERT_EQ(ps.size(), 4u);
  EXPECT_EQ(ps[0]->name, "0.weight");
  EXPECT_EQ(ps[1]->name, "0.bias");
  EXPECT_EQ(ps[3]->name, "2.bias");
  EXPECT_FALSE(ps[1]->decay);
  EXPECT_EQ(s.num_parameters(), 784 * 256 + 256 + 256 * 10 + 10);
}

TEST(ModuleTree, LinearRejectsWrongInputWidth) {
  nn::Linear l(4, 2, true, 1, 0);
  Tensor x = Tensor::zeros({3, 5}, DType::f32, Device::cpu(), "batch");
  try {
    l.forward(x);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(3, 5)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::test
