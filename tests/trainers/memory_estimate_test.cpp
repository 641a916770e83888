// The registry's size hooks (ModelSpec::size) against the modules they
// describe: the parameter and buffer counts must be exact for every built-in
// model type over configs that change each size-driving key, because the
// trainer refuses runs on them before anything is allocated. And the
// estimate's arithmetic and refusal message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "trainers/config.h"
#include "trainers/memory_estimate.h"
#include "trainers/models.h"

namespace kiln {
namespace {

const std::string kConfigs = std::string(KILN_SOURCE_DIR) + "/configs/";

struct Case {
  std::string config;
  std::vector<std::string> overrides;
};

DataShape shape_for(const TrainConfig& cfg) {
  DataShape s;
  s.image = {28, 28, 1, 10};
  if (data_input(cfg.data.type) == ModelInput::tokens) s.tokens = {0, 0};
  return s;
}

TEST(MemoryEstimate, SizeHooksCountExactlyWhatTheModelsHold) {
  const std::vector<Case> cases = {
      {"mlp_tiny.yaml", {}},
      {"mlp_tiny.yaml", {"model.mlp.hidden=[17, 5, 3]", "model.mlp.dropout=0"}},
      {"mlp_tiny.yaml", {"model.mlp.hidden=[]"}},
      {"gpt_tiny.yaml", {}},
      {"gpt_tiny.yaml", {"model.gpt.bias=false", "model.gpt.n_layer=3", "model.gpt.vocab_size=300"}},
      {"gpt_tiny.yaml", {"model.gpt.n_embd=48", "model.gpt.n_head=3", "model.gpt.block_size=17"}},
      {"vit_tiny.yaml", {}},
      {"vit_tiny.yaml", {"model.vit.pool=mean", "model.vit.patch=7", "model.vit.mlp_ratio=3"}},
      {"vit_tiny.yaml", {"model.vit.depth=3", "model.vit.dim=24", "model.vit.heads=2", "device=cpu"}},
      {"cnn_tiny.yaml", {}},
      {"cnn_tiny.yaml", {"model.cnn.head=avgpool", "model.cnn.hidden=0", "model.cnn.dropout=0", "model.cnn.kernel=5"}},
      {"cnn_tiny.yaml", {"model.cnn.channels=[3, 5, 7, 9, 11, 13]", "model.cnn.blocks=[1, 2, 1, 1, 1, 2]"}},
      {"resnet_tiny.yaml", {}},
      {"resnet_tiny.yaml", {"model.resnet.channels=[4, 4, 6]", "model.resnet.blocks=[1, 3, 2]"}},
  };
  std::vector<std::string> covered;
  for (const Case& c : cases) {
    std::string label = c.config;
    for (const std::string& o : c.overrides) label += " " + o;
    SCOPED_TRACE(label);
    const TrainConfig cfg = load_config(kConfigs + c.config, c.overrides);
    const ModelSpec* spec = find_model(cfg.model.type);
    ASSERT_NE(spec, nullptr);
    ASSERT_TRUE(spec->size) << cfg.model.type << " registers no size hook";
    const DataShape shape = shape_for(cfg);
    const ModelSize size = spec->size(cfg, shape);
    BuiltModel built = build_model(cfg, shape, std::make_shared<nn::RngStream>());
    EXPECT_EQ(size.parameters, built.module->num_parameters());
    int64_t buffers = 0;
    for (nn::Buffer* b : built.module->buffers()) buffers += b->value.numel();
    EXPECT_EQ(size.buffers, buffers);
    EXPECT_GT(size.activations_per_example, 0);
    EXPECT_NE(size.keys.find("train.batch_size="), std::string::npos) << size.keys;
    EXPECT_NE(size.keys.find("model." + cfg.model.type + "."), std::string::npos) << size.keys;
    covered.push_back(cfg.model.type);
  }
  // Every built-in type is covered (a new one must add its cases here).
  for (const char* t : {"mlp", "gpt", "vit", "cnn", "resnet"})
    EXPECT_NE(std::find(covered.begin(), covered.end(), t), covered.end()) << t;
}

TEST(MemoryEstimate, BytesFollowOptimizerPrecisionBatchAndZero) {
  TrainConfig cfg = load_config(kConfigs + "mlp_tiny.yaml");
  ModelSize s;
  s.parameters = 1000;
  s.buffers = 10;
  s.activations_per_example = 50;
  BatchPlan plan{8, 1, 8};
  MemoryEstimate e = estimate_training_memory(cfg, s, Device::cpu(), plan, 1);
  EXPECT_EQ(e.weights, 4.0 * 1000 + 4.0 * 10);
  EXPECT_EQ(e.gradients, 4000.0);
  EXPECT_EQ(e.optimizer, 8000.0);  // AdamW: two fp32 moments
  EXPECT_EQ(e.activations, 50.0 * 8 * 4);
  EXPECT_EQ(e.total(), 4040.0 + 4000 + 8000 + 1600);

  cfg.dist.zero_stage = 1;
  EXPECT_EQ(estimate_training_memory(cfg, s, Device::cpu(), plan, 4).optimizer, 2000.0);  // sharded over 4
  cfg.dist.zero_stage = 0;
  cfg.optim.type = OptimizerType::sgd;
  cfg.optim.momentum = 0;
  EXPECT_EQ(estimate_training_memory(cfg, s, Device::cpu(), plan, 1).optimizer, 0.0);
  cfg.optim.momentum = 0.9;
  EXPECT_EQ(estimate_training_memory(cfg, s, Device::cpu(), plan, 1).optimizer, 4000.0);
}

TEST(MemoryEstimate, RefusalNamesKeysAndNumbers) {
  MemoryEstimate e;
  e.parameters = 5;
  e.weights = 3.0 * 1024 * 1024 * 1024;
  e.batch = 4;
  e.keys = "model.mlp.hidden=[9], train.batch_size=4";
  MemoryAvailable a{1024.0 * 1024 * 1024, "the host"};
  try {
    check_memory_fits(e, a);
    FAIL() << "not refused";
  } catch (const InputError& err) {
    const std::string m = err.what();
    EXPECT_NE(m.find("memory estimate 3.0 GiB"), std::string::npos) << m;
    EXPECT_NE(m.find("exceeds the 1.0 GiB available on the host"), std::string::npos) << m;
    EXPECT_NE(m.find("model.mlp.hidden=[9], train.batch_size=4"), std::string::npos) << m;
  }
  a.bytes = 4.0 * 1024 * 1024 * 1024;
  EXPECT_NO_THROW(check_memory_fits(e, a));
  a.bytes = 0;  // unknown: nothing is refused
  EXPECT_NO_THROW(check_memory_fits(e, a));
  EXPECT_EQ(format_memory(512), "512 B");
  EXPECT_EQ(format_memory(1536), "1.5 KiB");
  EXPECT_EQ(format_memory(16.0 * 1024 * 1024 * 1024 * 1024), "16.0 TiB");
}

TEST(MemoryEstimate, HostMemoryIsSharedByTheNodesProcesses) {
  const MemoryAvailable one = memory_available(Device::cpu(), 1);
  ASSERT_GT(one.bytes, 0) << "no MemAvailable in /proc/meminfo";
  const MemoryAvailable two = memory_available(Device::cpu(), 2);
  // MemAvailable moves between the reads; the halving does not.
  EXPECT_NEAR(two.bytes, one.bytes / 2, one.bytes * 0.05);
  EXPECT_NE(two.where.find("shared by this node's 2 processes"), std::string::npos) << two.where;
}

}  // namespace
}  // namespace kiln
