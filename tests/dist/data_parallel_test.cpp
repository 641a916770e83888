// Data-parallel training, run as `mpirun -np 2`: the real trainer on the tiny
// MLP config (dropout off, so one and two processes draw no different masks),
// global batch 64, 20 steps, checkpoints at 10 and 20, small buckets.
//
//   C  one process (each rank runs its own copy in its own directory)
//   A  two processes                        == C, loss curve and weights
//   E  two processes, ZeRO-1                == A
//   B  one process resumed from A @ 10      == A
//   D  two processes resumed from C @ 10    == C
//   F  one process resumed from E @ 10      == E (a ZeRO-1 checkpoint loads unsharded)
//   G  two processes, ZeRO-1, from A @ 10   == A (an unsharded one loads sharded)
//
// "==" is within fp32 reduction-order tolerance (a 2-process gradient is
// summed in another order than a 1-process one). Every 2-process run also
// checks that the weights are bit-identical on all ranks after every step
// (hashes). Plus: the global-batch check, and a NaN on one rank handled on
// all (skip and stop).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/safetensors.h"
#include "runtime/communicator.h"
#include "runtime/process_info.h"
#include "tests/trainers/test_models.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/metrics.h"
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

// One directory for the whole binary, named by rank 0 and shared.
const fs::path& root_dir() {
  static const fs::path d = [] {
    std::string s = (fs::temp_directory_path() / ("kiln_dist_test_" + std::to_string(::getpid()))).string();
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

TrainConfig tiny(const fs::path& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"output_dir=" + out.string(), "model.mlp.dropout=0", "train.max_steps=20",
                                "train.global_batch=64", "train.checkpoint_every=10", "train.keep_last=0",
                                "train.eval_every=0", "train.log_every=5", "dist.bucket_mb=0.01",
                                "dist.timeout_s=120"};
  o.insert(o.end(), extra.begin(), extra.end());
  return load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml", o);
}

uint64_t hash_weights(nn::Module& m) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over every parameter's bytes
  for (nn::Parameter* p : m.parameters()) {
    const std::vector<float> v = p->value.to_vector();
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  return h;
}

struct RunLog {
  fs::path dir;
  std::vector<double> losses;    // per step, in order
  std::vector<uint64_t> hashes;  // weights after each step
  std::vector<bool> skipped;
  TrainResult result;
};

// Trains `cfg`; `single` runs one process on this rank alone.
RunLog run(const TrainConfig& cfg, bool single, TrainOptions opt = {}) {
  RunLog r;
  r.dir = cfg.output_dir;
  std::unique_ptr<Communicator> one;
  if (single) one = make_single_communicator();
  opt.comm = single ? one.get() : &comm();
  auto user_after = opt.after_step;
  opt.after_step = [&](const StepEvent& e) {
    if (user_after) user_after(e);
    r.losses.push_back(e.loss);
    r.skipped.push_back(e.skipped);
    r.hashes.push_back(hash_weights(*e.model));
  };
  r.result = train(cfg, opt);
  comm().barrier("after a run");  // its files are complete for every rank
  return r;
}

// Every rank's per-step hashes equal rank 0's.
void expect_same_weights_on_all_ranks(const RunLog& r) {
  std::string mine(reinterpret_cast<const char*>(r.hashes.data()), r.hashes.size() * sizeof(uint64_t));
  std::string root = mine;
  comm().broadcast_string(root, 0);
  ASSERT_EQ(root.size(), mine.size());
  for (size_t i = 0; i < r.hashes.size(); ++i) {
    uint64_t h0;
    std::memcpy(&h0, root.data() + i * sizeof(uint64_t), sizeof h0);
    EXPECT_EQ(r.hashes[i], h0) << r.dir << ": rank " << comm().rank() << " differs from rank 0 after step " << i + 1;
  }
}

std::map<std::string, std::vector<float>> weights_at(const fs::path& run_dir, int64_t step) {
  const fs::path f = fs::path(checkpoints_root(run_dir.string())) / checkpoint_dir_name(step) / kCheckpointWeights;
  SafetensorsFile sf = read_safetensors(f.string());
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, t] : sf.tensors) {
    std::vector<float> v(t.nbytes / sizeof(float));
    std::memcpy(v.data(), t.data, t.nbytes);
    out[name] = v;
  }
  return out;
}

// Final weights within fp32 reduction-order tolerance.
void expect_close_weights(const fs::path& a, const fs::path& b, int64_t step = 20) {
  auto wa = weights_at(a, step), wb = weights_at(b, step);
  ASSERT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (auto& [name, va] : wa) {
    const std::vector<float>& vb = wb.at(name);
    ASSERT_EQ(va.size(), vb.size()) << name;
    for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::fabs(double(va[i]) - double(vb[i])));
  }
  EXPECT_LT(worst, 1e-5) << a << " vs " << b;
}

// Loss curves: `b` may be a resumed run covering the last b.size() steps.
void expect_close_losses(const RunLog& a, const RunLog& b) {
  ASSERT_LE(b.losses.size(), a.losses.size());
  const size_t off = a.losses.size() - b.losses.size();
  ASSERT_GT(b.losses.size(), 0u);
  for (size_t i = 0; i < b.losses.size(); ++i)
    EXPECT_NEAR(b.losses[i], a.losses[off + i], 1e-5 * std::max(1.0, std::fabs(a.losses[off + i])))
        << a.dir << " vs " << b.dir << " at step " << off + i + 1;
}

std::string ckpt(const fs::path& run_dir, int64_t step) {
  return (fs::path(checkpoints_root(run_dir.string())) / checkpoint_dir_name(step)).string();
}

class DataParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_GE(comm().world(), 2) << "run under mpirun -np 2 (ctest -L dist does)";
    const fs::path d = root_dir();
    one_ = new RunLog(run(tiny(d / ("C_rank" + std::to_string(comm().rank()))), /*single=*/true));
    two_ = new RunLog(run(tiny(d / "A"), /*single=*/false));
    zero_ = new RunLog(run(tiny(d / "E", {"dist.zero_stage=1"}), /*single=*/false));
  }
  static void TearDownTestSuite() {
    delete one_;
    delete two_;
    delete zero_;
    comm().barrier();
    if (comm().is_root()) fs::remove_all(root_dir());
  }
  static RunLog* one_;
  static RunLog* two_;
  static RunLog* zero_;
};
RunLog* DataParallel::one_ = nullptr;
RunLog* DataParallel::two_ = nullptr;
RunLog* DataParallel::zero_ = nullptr;

TEST_F(DataParallel, TwoProcessesMatchOneAtTheSameGlobalBatch) {
  ASSERT_EQ(one_->losses.size(), 20u);
  ASSERT_EQ(two_->losses.size(), 20u);
  expect_close_losses(*one_, *two_);
  expect_close_weights(one_->dir, two_->dir);
  expect_same_weights_on_all_ranks(*two_);
  EXPECT_NEAR(two_->result.test_accuracy, one_->result.test_accuracy, 1e-3);
  EXPECT_GT(two_->result.test_accuracy, 0.5);  // it learned
  // Only rank 0 wrote: one metrics file, every step's train line once.
  std::vector<nlohmann::json> m = read_metrics((two_->dir / "metrics.jsonl").string());
  int train_lines = 0;
  for (auto& line : m) train_lines += line["split"] == "train";
  EXPECT_EQ(train_lines, 4);  // log_every 5 over 20 steps
}

TEST_F(DataParallel, ZeroOneMatchesPlainDataParallel) {
  ASSERT_EQ(zero_->losses.size(), 20u);
  expect_close_losses(*two_, *zero_);
  expect_close_weights(two_->dir, zero_->dir);
  expect_same_weights_on_all_ranks(*zero_);
  // Its checkpoint holds the full, per-parameter optimizer state.
  SafetensorsFile a = read_safetensors((fs::path(ckpt(two_->dir, 20)) / kCheckpointOptimizer).string());
  SafetensorsFile e = read_safetensors((fs::path(ckpt(zero_->dir, 20)) / kCheckpointOptimizer).string());
  ASSERT_EQ(a.tensors.size(), e.tensors.size());
  for (auto& [name, t] : a.tensors) {
    ASSERT_TRUE(e.has(name)) << name;
    EXPECT_EQ(e.at(name).shape, t.shape) << name;
  }
}

TEST_F(DataParallel, ResumeTwoProcessCheckpointWithOneProcess) {
  const fs::path d = root_dir() / ("B_rank" + std::to_string(comm().rank()));
  RunLog b = run(tiny(d, {"train.resume=" + ckpt(two_->dir, 10)}), /*single=*/true);
  ASSERT_EQ(b.losses.size(), 10u);
  expect_close_losses(*two_, b);
  expect_close_weights(two_->dir, d);
}

TEST_F(DataParallel, ResumeOneProcessCheckpointWithTwoProcesses) {
  std::string from = ckpt(one_->dir, 10);
  comm().broadcast_string(from, 0);  // rank 0's one-process run
  RunLog dd = run(tiny(root_dir() / "D", {"train.resume=" + from}), /*single=*/false);
  ASSERT_EQ(dd.losses.size(), 10u);
  expect_close_losses(*one_, dd);
  expect_close_weights(one_->dir, dd.dir);
  expect_same_weights_on_all_ranks(dd);
}

TEST_F(DataParallel, ShardedAndUnshardedCheckpointsLoadEitherWay) {
  const fs::path f = root_dir() / ("F_rank" + std::to_string(comm().rank()));
  RunLog rf = run(tiny(f, {"train.resume=" + ckpt(zero_->dir, 10)}), /*single=*/true);
  expect_close_losses(*zero_, rf);
  expect_close_weights(zero_->dir, f);
  RunLog rg = run(tiny(root_dir() / "G", {"dist.zero_stage=1", "train.resume=" + ckpt(two_->dir, 10)}), false);
  expect_close_losses(*two_, rg);
  expect_close_weights(two_->dir, rg.dir);
  expect_same_weights_on_all_ranks(rg);
}

TEST_F(DataParallel, GlobalBatchMustDivideBeforeAnythingIsAllocated) {
  const fs::path d = root_dir() / "bad_batch";
  try {
    run(tiny(d, {"train.global_batch=96"}), /*single=*/false);  // 96 = 1.5 x (32 x 2)
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("train.global_batch"), std::string::npos) << e.what();
  }
  comm().barrier();
  EXPECT_FALSE(fs::exists(d));  // not even the run directory
  EXPECT_EQ(plan_batch(tiny(d, {"train.global_batch=96"}), 1).accum, 3);  // fine for one process
}

// Rank 1's weights turn NaN for step 6 only: its loss and gradient are
// non-finite, the mean gradient is too, and every rank must see it.
TrainOptions poison_step_6_on_rank_1(std::vector<float>* saved) {
  TrainOptions o;
  o.before_step = [saved](int64_t step, nn::Module& m) {
    if (comm().rank() != 1 || step != 5) return;
    nn::Parameter* p = m.parameters()[0];
    *saved = p->value.to_vector();
    p->value.fill_(std::nan(""));
  };
  o.after_step = [saved](const StepEvent& e) {
    if (comm().rank() != 1 || e.step != 6) return;
    nn::Parameter* p = e.model->parameters()[0];
    p->value.copy_from(Tensor::from_vector(*saved, p->value.shape(), DType::f32, Device::cpu()));
  };
  return o;
}

TEST_F(DataParallel, NonFiniteOnOneRankIsSkippedOrStopsOnAll) {
  std::vector<float> saved;
  RunLog r = run(tiny(root_dir() / "nan_skip", {"dist.on_nonfinite=skip", "train.max_steps=10",
                                             "train.checkpoint_every=0"}),
              false, poison_step_6_on_rank_1(&saved));
  ASSERT_EQ(r.skipped.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(r.skipped[i], i == 5) << "step " << i + 1;
  EXPECT_EQ(r.hashes[5], r.hashes[4]);  // no update at step 6
  expect_same_weights_on_all_ranks(r);
  for (size_t i = 0; i < 10; ++i) {
    if (i == 5) continue;
    EXPECT_TRUE(std::isfinite(r.losses[i])) << "step " << i + 1;
  }

  try {
    run(tiny(root_dir() / "nan_stop", {"dist.on_nonfinite=stop", "train.max_steps=10"}), false,
        poison_step_6_on_rank_1(&saved));
    FAIL() << "expected a NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("step 6"), std::string::npos) << e.what();
  }
  comm().barrier();
}

// The step's gradient is the mean over its loss tokens at 2 processes too:
// 2 rows per micro-batch x 3 micro-batches x 2 ranks = the 12 rows of
// MaskedTask's first step, whose micro-batches hold 0 to 2 loss tokens.
TEST_F(DataParallel, TokenWeightedGradientMatchesTheOnePassMean) {
  std::vector<std::string> o = test::sgd_one_step_overrides();
  o.insert(o.end(), {"train.batch_size=2", "train.global_batch=12"});
  const TrainConfig cfg = tiny(root_dir() / "masked", o);
  ASSERT_EQ(plan_batch(cfg, comm().world()).accum, 3);
  std::vector<std::vector<float>> before, grad;
  run(cfg, /*single=*/false, test::masked_step_gradient(&before, &grad));
  EXPECT_LT(test::max_abs_diff(grad, test::one_pass_gradient(cfg, 0, 12)), 2e-7);
}

// Buffers start from rank 0's on every rank (the test model's buffer starts
// at 100 x rank), and a frozen layer trains data parallel (it is not reduced).
TEST_F(DataParallel, BuffersAreRankZerosOnEveryRankAtStart) {
  std::vector<float> at_start;
  TrainOptions opt;
  opt.before_step = [&](int64_t step, nn::Module& m) {
    if (step == 0) at_start = m.buffers().at(0)->value.to_vector();
  };
  RunLog r = run(test::test_model_config({"output_dir=" + (root_dir() / "buffered").string(), "train.max_steps=10",
                                          "train.global_batch=64", "train.checkpoint_every=0", "dist.timeout_s=120"}),
                 /*single=*/false, opt);
  ASSERT_EQ(at_start.size(), 2u);
  EXPECT_EQ(at_start[0], 0.0f);
  EXPECT_EQ(at_start[1], 0.0f) << "rank " << comm().rank() << " kept its own buffer";
  expect_same_weights_on_all_ranks(r);
}

}  // namespace
}  // namespace kiln
