// The CNN layers through the generic checks (finite differences in f64 on the
// CPU; CPU vs GPU in f32 and bf16 when a GPU is present): Conv2d (strides,
// padding, dilation, groups, with and without bias), BatchNorm2d (NHWC and
// (rows, C)), MaxPool2d, AvgPool2d, GlobalAvgPool, BasicBlock (identity and
// projection shortcuts), a small CNN and a small ResNet. Then BatchNorm's
// running statistics (eval, PyTorch's per-forward update, the deferred
// per-step update and its average over ranks) and Conv2d's layout.
#include <gtest/gtest.h>

#include <cmath>

#include "nn/batchnorm.h"
#include "nn/cnn.h"
#include "nn/conv.h"
#include "nn/pool.h"
#include "nn/resnet.h"
#include "runtime/error.h"
#include "tests/harness/harness.h"
#include "tests/nn/module_check.h"

namespace kiln::test {
namespace {

struct LayerCase {
  std::string name;
  ModuleFactory make;
  InputFactory input;
  bool input_grad = true;
};

nn::Conv2dOptions conv_opts(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                            int64_t groups, bool bias) {
  nn::Conv2dOptions o;
  o.in = in; o.out = out; o.kernel_h = o.kernel_w = k;
  o.stride = stride; o.padding = pad; o.dilation = dil; o.groups = groups; o.bias = bias;
  return o;
}

nn::PoolOptions pool_opts(int64_t k, int64_t stride, int64_t pad, bool include_pad = true) {
  nn::PoolOptions o;
  o.kernel = k; o.stride = stride; o.padding = pad; o.count_include_pad = include_pad;
  return o;
}

std::vector<LayerCase> cases() {
  return {
      {"conv3x3_pad1_bias", [] { return std::make_unique<nn::Conv2d>(conv_opts(3, 4, 3, 1, 1, 1, 1, true), 1, 0); },
       random_input({2, 5, 6, 3}, 11)},
      {"conv3x3_stride2_nobias",
       [] { return std::make_unique<nn::Conv2d>(conv_opts(2, 5, 3, 2, 1, 1, 1, false), 2, 0); },
       random_input({2, 7, 7, 2}, 12)},
      {"conv_grouped_dilated", [] { return std::make_unique<nn::Conv2d>(conv_opts(4, 6, 3, 1, 2, 2, 2, true), 3, 0); },
       random_input({1, 6, 5, 4}, 13)},
      {"conv1x1_stride2", [] { return std::make_unique<nn::Conv2d>(conv_opts(3, 5, 1, 2, 0, 1, 1, false), 4, 0); },
       random_input({2, 5, 5, 3}, 14)},
      {"batchnorm_nhwc",
       [] {
         nn::BatchNormOptions o;
         o.channels = 3;
         return std::make_unique<nn::BatchNorm2d>(o);
       },
       random_input({2, 3, 4, 3}, 15)},
      {"batchnorm_rows",
       [] {
         nn::BatchNormOptions o;
         o.channels = 5;
         return std::make_unique<nn::BatchNorm2d>(o);
       },
       random_input({7, 5}, 16)},
      {"maxpool2x2", [] { return std::make_unique<nn::MaxPool2d>(pool_opts(2, 2, 0)); }, random_input({2, 6, 5, 3}, 17)},
      {"maxpool3x3_s2_p1", [] { return std::make_unique<nn::MaxPool2d>(pool_opts(3, 2, 1)); },
       random_input({2, 7, 7, 2}, 18)},
      {"avgpool3x3_s2_p1", [] { return std::make_unique<nn::AvgPool2d>(pool_opts(3, 2, 1)); },
       random_input({2, 7, 6, 2}, 19)},
      {"avgpool_exclude_pad", [] { return std::make_unique<nn::AvgPool2d>(pool_opts(3, 1, 1, false)); },
       random_input({1, 4, 5, 3}, 20)},
      {"global_avgpool", [] { return std::make_unique<nn::GlobalAvgPool>(); }, random_input({3, 4, 5, 6}, 21)},
      {"block_identity",
       [] {
         uint64_t off = 0;
         nn::BatchNormOptions b;
         return std::make_unique<nn::BasicBlock>(3, 3, 1, b, 5, &off);
       },
       random_input({2, 5, 5, 3}, 22)},
      {"block_projection",
       [] {
         uint64_t off = 0;
         nn::BatchNormOptions b;
         return std::make_unique<nn::BasicBlock>(2, 4, 2, b, 6, &off);
       },
       random_input({2, 6, 6, 2}, 23)},
      {"cnn_flatten_hidden",
       [] {
         nn::CnnOptions o;
         o.height = o.width = 8;
         o.channels = {3, 4};
         o.blocks = {1, 2};
         o.hidden = 5;
         o.classes = 3;
         o.seed = 7;
         return std::make_unique<nn::Cnn>(o, std::make_shared<nn::RngStream>());
       },
       random_input({2, 8, 8, 1}, 24), false},
      {"cnn_gap_avgpool",
       [] {
         nn::CnnOptions o;
         o.height = 6;
         o.width = 7;
         o.in_channels = 2;
         o.channels = {4};
         o.blocks = {1};
         o.pool = nn::PoolKind::avg;
         o.global_pool = true;
         o.classes = 4;
         o.seed = 8;
         return std::make_unique<nn::Cnn>(o, std::make_shared<nn::RngStream>());
       },
       random_input({3, 6, 7, 2}, 25), false},
      {"resnet_tiny",
       [] {
         nn::ResNetOptions o;
         o.height = o.width = 8;
         o.channels = {2, 3};
         o.blocks = {1, 1};
         o.classes = 3;
         o.seed = 9;
         return std::make_unique<nn::ResNet>(o);
       },
       random_input({3, 8, 8, 1}, 26), false},
  };
}

class ConvLayers : public ::testing::TestWithParam<size_t> {};

TEST_P(ConvLayers, BackwardMatchesFiniteDifferences) {
  const LayerCase c = cases()[GetParam()];
  EXPECT_TRUE(check_module_gradients(c.make, c.input, c.name, c.input_grad));
}

TEST_P(ConvLayers, GpuMatchesCpuFp32) {
  KILN_REQUIRE_GPU();
  const LayerCase c = cases()[GetParam()];
  EXPECT_TRUE(compare_cpu_cuda(c.make, c.input, DType::f32, c.name, c.input_grad));
}

TEST_P(ConvLayers, GpuMatchesCpuBf16) {
  KILN_REQUIRE_GPU();
  const LayerCase c = cases()[GetParam()];
  EXPECT_TRUE(compare_cpu_cuda(c.make, c.input, DType::bf16, c.name, c.input_grad));
}

INSTANTIATE_TEST_SUITE_P(All, ConvLayers, ::testing::Range<size_t>(0, 16),
                         [](const ::testing::TestParamInfo<size_t>& i) { return cases()[i.param].name; });

TEST(ConvLayerCases, CountMatchesTheInstantiation) { EXPECT_EQ(cases().size(), 16u); }

// --- BatchNorm2d running statistics -------------------------------------------------

// Per-channel batch mean and unbiased variance of x (rows, C).
void batch_stats(const std::vector<float>& x, int64_t C, std::vector<double>* mean, std::vector<double>* var) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  mean->assign(C, 0.0);
  var->assign(C, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) (*mean)[c] += x[r * C + c] / static_cast<double>(rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) (*var)[c] += std::pow(x[r * C + c] - (*mean)[c], 2) / static_cast<double>(rows - 1);
}

TEST(BatchNormLayer, RunningStatisticsFollowPyTorch) {
  const int64_t C = 3;
  nn::BatchNormOptions o;
  o.channels = C;
  o.momentum = 0.25f;
  nn::BatchNorm2d bn(o);
  auto buffers = bn.buffers();
  ASSERT_EQ(buffers.size(), 2u);
  EXPECT_EQ(buffers[0]->name, "running_mean");
  EXPECT_EQ(buffers[1]->name, "running_var");
  const std::vector<float> xv = random_uniform(4 * 5 * C, 3, -1.0f, 3.0f);
  Tensor x = Tensor::from_vector(xv, {4, 5, 1, C}, DType::f32, Device::cpu());
  bn.forward(x);
  std::vector<double> m, v;
  batch_stats(xv, C, &m, &v);
  const std::vector<float> rm = bn.running_mean().to_vector(), rv = bn.running_var().to_vector();
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(rm[c], 0.25 * m[c], 1e-6);
    EXPECT_NEAR(rv[c], 0.75 + 0.25 * v[c], 1e-6);
  }
  // Eval normalizes with the running statistics.
  bn.eval();
  const std::vector<float> y = bn.forward(x).to_vector();
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_NEAR(y[i], (xv[i] - rm[i % C]) / std::sqrt(rv[i % C] + 1e-5), 1e-5) << i;
  EXPECT_THROW(bn.backward(x), Error);  // no training forward to differentiate
  bn.train();
  EXPECT_THROW(bn.forward(Tensor::from_vector({1, 2, 3}, {1, 3}, DType::f32, Device::cpu())), Error);  // 1 row
}

TEST(BatchNormLayer, DeferredUpdateAveragesTheStepsMicroBatches) {
  const int64_t C = 4;
  nn::BatchNormOptions o;
  o.channels = C;
  o.momentum = 0.1f;
  nn::BatchNorm2d bn(o);
  bn.set_deferred_running_update(true);
  std::vector<double> mean_sum(C, 0.0), var_sum(C, 0.0);
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> xv = random_uniform(6 * C, 10 + k, -2.0f, 2.0f);
    bn.forward(Tensor::from_vector(xv, {6, C}, DType::f32, Device::cpu()));
    std::vector<double> m, v;
    batch_stats(xv, C, &m, &v);
    for (int64_t c = 0; c < C; ++c) {
      mean_sum[c] += m[c];
      var_sum[c] += v[c];
    }
  }
  EXPECT_EQ(bn.pending(), 3);
  EXPECT_EQ(bn.running_mean().to_vector(), std::vector<float>(C, 0.0f));  // untouched until the step ends
  // Two "ranks" holding the same sums: the sum over ranks doubles them, the average is unchanged.
  int calls = 0;
  bn.apply_running_update(
      [&](Tensor& t) {
        ++calls;
        float* p = t.data<float>();
        for (int64_t i = 0; i < t.numel(); ++i) p[i] *= 2.0f;
      },
      2);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(bn.pending(), 0);
  const std::vector<float> rm = bn.running_mean().to_vector(), rv = bn.running_var().to_vector();
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * mean_sum[c] / 3, 1e-6);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * var_sum[c] / 3, 1e-6);
  }
  bn.apply_running_update(nullptr, 1);  // nothing pending: no change
  EXPECT_EQ(bn.running_mean().to_vector(), rm);
}

TEST(BatchNormLayer, OneMicroBatchDeferredEqualsImmediate) {
  nn::BatchNormOptions o;
  o.channels = 6;
  nn::BatchNorm2d a(o), b(o);
  b.set_deferred_running_update(true);
  Tensor x = Tensor::from_vector(random_uniform(9 * 6, 4), {3, 3, 1, 6}, DType::f32, Device::cpu());
  a.forward(x);
  b.forward(x);
  nn::update_batchnorm_running_stats(b, nullptr, 1);
  EXPECT_TRUE(bitwise_equal(a.running_mean().to_vector(), b.running_mean().to_vector(), "running mean"));
  EXPECT_TRUE(bitwise_equal(a.running_var().to_vector(), b.running_var().to_vector(), "running var"));
}

TEST(BatchNormLayer, ModelHelpersFindEveryLayer) {
  nn::ResNetOptions o;
  o.height = o.width = 8;
  o.channels = {2, 3};
  o.blocks = {1, 1};
  nn::ResNet r(o);
  // stem + 2 per block + the projection's
  EXPECT_EQ(nn::batchnorm_layers(r).size(), 1u + 2u + 3u);
  nn::set_batchnorm_deferred(r, true);
  for (nn::BatchNorm2d* bn : nn::batchnorm_layers(r)) EXPECT_TRUE(bn->deferred_running_update());
  // Buffers are named by their place in the tree; BN parameters carry no weight decay.
  bool found = false;
  for (nn::Buffer* b : r.buffers()) found |= b->name == "stages.1.0.shortcut.1.running_var";
  EXPECT_TRUE(found);
  for (nn::Parameter* p : r.parameters())
    if (p->name.find("bn") != std::string::npos || p->name.find("shortcut.1") != std::string::npos) {
      EXPECT_FALSE(p->decay) << p->name;
    }
  // In f64 (gradient checks) the statistics follow the master dtype.
  r.to(Device::cpu(), DType::f64, DType::f64);
  for (nn::Buffer* b : r.buffers()) EXPECT_EQ(b->value.dtype(), DType::f64) << b->name;
}

// --- Conv2d layout ------------------------------------------------------------------

TEST(Conv2dLayer, WeightIsKRSCAndCentredDeltaIsIdentity) {
  nn::Conv2d conv(conv_opts(2, 2, 3, 1, 1, 1, 1, false), 1, 0);
  EXPECT_EQ(conv.weight().value.shape(), Shape({2, 3, 3, 2}));
  // w[k, 1, 1, k] = 1: each output channel copies its input channel.
  Tensor w = Tensor::zeros({2, 3, 3, 2}, DType::f32, Device::cpu());
  float* p = w.data<float>();
  for (int k = 0; k < 2; ++k) p[((k * 3 + 1) * 3 + 1) * 2 + k] = 1.0f;
  conv.weight().value.copy_from(w);
  const std::vector<float> xv = random_uniform(2 * 4 * 5 * 2, 5);
  Tensor y = conv.forward(Tensor::from_vector(xv, {2, 4, 5, 2}, DType::f32, Device::cpu()));
  EXPECT_TRUE(bitwise_equal(y.to_vector(), xv, "identity convolution"));
  EXPECT_THROW(conv.forward(Tensor::zeros({2, 4, 5, 3}, DType::f32, Device::cpu())), Error);  // wrong C
}

TEST(CnnModel, ShapesAndFlops) {
  nn::CnnOptions o;  // 28x28x1, {32, 64}, 1 block each, flatten
  nn::Cnn m(o, std::make_shared<nn::RngStream>());
  Tensor y = m.forward(Tensor::zeros({2, 28, 28, 1}, DType::f32, Device::cpu()));
  EXPECT_EQ(y.shape(), Shape({2, 10}));
  // conv1 28·28·32·9·2, conv2 14·14·64·288·2, head 3136·10·2; x3, minus conv1's input gradient.
  const double c1 = 28.0 * 28 * 32 * 9 * 2, c2 = 14.0 * 14 * 64 * 288 * 2, fc = 3136.0 * 10 * 2;
  EXPECT_DOUBLE_EQ(m.train_flops_per_example(), 3 * (c1 + c2 + fc) - c1);
  nn::ResNetOptions r;
  nn::ResNet net(r);
  EXPECT_EQ(net.forward(Tensor::zeros({2, 28, 28, 1}, DType::f32, Device::cpu())).shape(), Shape({2, 10}));
  EXPECT_GT(net.train_flops_per_example(), 0.0);
}

}  // namespace
}  // namespace kiln::test
