// BatchNorm under data parallelism, run as `mpirun -np 2`: the CNN and ResNet
// tiny recipes (dropout off; augmentation and label smoothing on) at global
// batch 64 for 12 steps, one process (micro-batch 32 x grad_accum 2) against
// two (micro-batch 32 each). Each micro-batch normalizes with its own
// statistics and the running statistics move once per step with the mean
// over the step's micro-batches on all ranks; every parameterized layer adds
// a micro-batch's gradient to the accumulated one in one rounding (conv and
// BatchNorm compute it fresh and add; the Linear's GEMM adds a K = 32 product
// in one block), which is the sum the all-reduce of two ranks makes. So the
// two runs are the same computation, and the test asks for bit equality:
//   - after every step, the hash of all parameters and buffers (weights,
//     running_mean, running_var) of one process equals two processes', and
//     the losses are equal;
//   - every tensor of the final model.safetensors is bit-identical (at least
//     4 of them BatchNorm running statistics);
//   - parameters and buffers are bit-identical on both ranks after every step;
//   - the test accuracy (eval mode: running statistics) is the same.
// A micro-batch gradient accumulated inside the GEMM (conv dW with
// accumulate = true) fails the per-step hashes from step 1 on.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/safetensors.h"
#include "runtime/communicator.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

Communicator& comm() {
  static std::unique_ptr<Communicator> c = [] {
    CommOptions o;
    o.timeout_s = 120;
    return make_communicator(Device::cpu(), o);
  }();
  return *c;
}

const fs::path& root_dir() {
  static const fs::path d = [] {
    std::string s = (fs::temp_directory_path() / ("kiln_bn_dist_test_" + std::to_string(::getpid()))).string();
    comm().broadcast_string(s, 0, "test directory");
    if (comm().is_root()) {
      fs::remove_all(s);
      fs::create_directories(s);
    }
    comm().barrier();
    return fs::path(s);
  }();
  return d;
}

TrainConfig recipe(const std::string& name, const fs::path& out) {
  std::vector<std::string> o = {"output_dir=" + out.string(), "train.max_steps=12",   "train.global_batch=64",
                                "train.batch_size=32",        "train.checkpoint_every=12", "train.keep_last=0",
                                "train.eval_every=0",         "train.log_every=4",    "dist.bucket_mb=0.01",
                                "dist.timeout_s=120",         "optim.lr=0.01"};
  if (name == "cnn_tiny") o.push_back("model.cnn.dropout=0");
  return load_config(std::string(KILN_SOURCE_DIR) + "/configs/" + name + ".yaml", o);
}

// FNV-1a over every parameter's and buffer's bytes.
uint64_t hash_state(nn::Module& m) {
  uint64_t h = 1469598103934665603ull;
  auto add = [&](const Tensor& t) {
    const std::vector<float> v = t.to_vector();
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  for (nn::Parameter* p : m.parameters()) add(p->value);
  for (nn::Buffer* b : m.buffers()) add(b->value);
  return h;
}

struct RunLog {
  fs::path dir;
  std::vector<double> losses;
  std::vector<uint64_t> hashes;
  std::vector<float> buffers_after_step1;  // every buffer, concatenated
  TrainResult result;
};

RunLog run(const TrainConfig& cfg, bool single) {
  RunLog r;
  r.dir = cfg.output_dir;
  std::unique_ptr<Communicator> one;
  if (single) one = make_single_communicator();
  TrainOptions opt;
  opt.comm = single ? one.get() : &comm();
  opt.after_step = [&](const StepEvent& e) {
    r.losses.push_back(e.loss);
    r.hashes.push_back(hash_state(*e.model));
    if (e.step == 1)
      for (nn::Buffer* b : e.model->buffers()) {
        const std::vector<float> v = b->value.to_vector();
        r.buffers_after_step1.insert(r.buffers_after_step1.end(), v.begin(), v.end());
      }
  };
  r.result = train(cfg, opt);
  comm().barrier("after a run");
  return r;
}

std::map<std::string, std::vector<float>> final_tensors(const fs::path& run_dir) {
  const fs::path f = fs::path(checkpoints_root(run_dir.string())) / checkpoint_dir_name(12) / kCheckpointWeights;
  SafetensorsFile sf = read_safetensors(f.string());
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, t] : sf.tensors) {
    std::vector<float> v(t.nbytes / sizeof(float));
    std::memcpy(v.data(), t.data, t.nbytes);
    out[name] = v;
  }
  return out;
}

void compare(const std::string& name) {
  ASSERT_GE(comm().world(), 2) << "run under mpirun -np 2 (ctest -L dist does)";
  const RunLog one = run(recipe(name, root_dir() / (name + "_one_rank" + std::to_string(comm().rank()))), true);
  const RunLog two = run(recipe(name, root_dir() / (name + "_two")), false);
  ASSERT_FALSE(one.buffers_after_step1.empty());
  ASSERT_EQ(one.buffers_after_step1.size(), two.buffers_after_step1.size());
  EXPECT_EQ(0, std::memcmp(one.buffers_after_step1.data(), two.buffers_after_step1.data(),
                           one.buffers_after_step1.size() * sizeof(float)))
      << name << ": running statistics after step 1 differ from one process's";
  ASSERT_EQ(one.losses.size(), 12u);
  ASSERT_EQ(two.losses.size(), 12u);
  ASSERT_EQ(one.hashes.size(), 12u);
  ASSERT_EQ(two.hashes.size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(two.losses[i], one.losses[i]) << name << " step " << i + 1;
    EXPECT_EQ(two.hashes[i], one.hashes[i]) << name << ": parameters and buffers after step " << i + 1
                                            << " differ from one process's";
  }
  const auto a = final_tensors(one.dir), b = final_tensors(two.dir);
  ASSERT_EQ(a.size(), b.size());
  int buffers = 0;
  for (const auto& [tensor, va] : a) {
    const std::vector<float>& vb = b.at(tensor);
    ASSERT_EQ(va.size(), vb.size()) << tensor;
    buffers += tensor.find("running_") != std::string::npos;
    size_t differ = 0;
    double worst = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      differ += std::memcmp(&va[i], &vb[i], sizeof(float)) != 0;
      worst = std::max(worst, std::fabs(double(va[i]) - double(vb[i])));
    }
    EXPECT_EQ(differ, 0u) << name << ": " << tensor << ": " << differ << " of " << va.size()
                          << " elements differ between one and two processes (largest difference " << worst << ")";
  }
  EXPECT_GE(buffers, 4) << name << ": the checkpoint should hold BatchNorm running statistics";
  // Every step's parameters and buffers are bit-identical on both ranks.
  std::string mine(reinterpret_cast<const char*>(two.hashes.data()), two.hashes.size() * sizeof(uint64_t));
  std::string root = mine;
  comm().broadcast_string(root, 0);
  EXPECT_EQ(mine, root) << name << ": rank " << comm().rank() << " differs from rank 0";
  EXPECT_EQ(two.result.test_accuracy, one.result.test_accuracy) << name;
}

TEST(BatchNormDataParallel, CnnTwoProcessesMatchOne) { compare("cnn_tiny"); }
TEST(BatchNormDataParallel, ResNetTwoProcessesMatchOne) { compare("resnet_tiny"); }

TEST(BatchNormDataParallel, Cleanup) {
  comm().barrier();
  if (comm().is_root()) fs::remove_all(root_dir());
}

}  // namespace
}  // namespace kiln
