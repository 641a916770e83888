// The NCCL backend on one GPU (NCCL refuses two ranks on one device, and the
// lent machine has one): every collective with a world of one (identity or
// copy, through the communication stream and events), the async handles and
// the watchdog's bookkeeping, and a training run over NCCL with ZeRO-1 equal
// to the same run without any communicator. Runs without mpirun; skips
// without a GPU (never run on the development machines).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "runtime/communicator.h"
#include "tests/harness/harness.h"
#include "trainers/config.h"
#include "trainers/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

Tensor iota_gpu(int64_t n, DType t) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i % 97) - 40.0f;
  return Tensor::from_vector(v, {n}, t, Device::cuda(0));
}

TEST(NcclGpu, CollectivesOnOneGpu) {
  KILN_REQUIRE_GPU();
  std::unique_ptr<Communicator> c = make_nccl_communicator(Device::cuda(0));
  EXPECT_STREQ(c->backend(), "nccl");
  EXPECT_EQ(c->world(), 1);
  for (DType t : {DType::f32, DType::bf16})
    for (int64_t n : {0, 1, 7, 1000, 65537}) {
      Tensor x = iota_gpu(n, t);
      const std::vector<float> want = x.to_vector();
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        auto h = c->all_reduce_async(x, op, "test");
        h->wait();
        EXPECT_EQ(x.to_vector(), want) << dtype_name(t) << " n " << n;
      }
      c->broadcast(x, 0);
      EXPECT_EQ(x.to_vector(), want);
      Tensor out = Tensor::zeros({n}, t, Device::cuda(0));
      c->reduce_scatter(x, out, ReduceOp::sum);
      EXPECT_EQ(out.to_vector(), want);
      Tensor g = Tensor::zeros({n}, t, Device::cuda(0));
      c->all_gather(x, g);
      EXPECT_EQ(g.to_vector(), want);
    }
  // CPU tensors go to the host side; host values too.
  Tensor h = Tensor::full({3}, 2.0, DType::f32, Device::cpu());
  c->all_reduce(h, ReduceOp::sum);
  EXPECT_EQ(h.to_vector(), std::vector<float>(3, 2.0f));
  std::vector<double> v = {4.0};
  c->all_reduce_values(v, ReduceOp::sum);
  EXPECT_EQ(v[0], 4.0);
}

TEST(NcclGpu, ZeroOneTrainingOverNcclEqualsPlainTraining) {
  KILN_REQUIRE_GPU();
  const fs::path base = fs::temp_directory_path() / ("kiln_nccl_test_" + std::to_string(::getpid()));
  auto cfg = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> o = {"output_dir=" + (base / name).string(), "device=cuda", "model.mlp.dropout=0",
                                  "train.max_steps=20", "train.eval_every=0", "dist.bucket_mb=0.01"};
    o.insert(o.end(), extra.begin(), extra.end());
    return load_config(std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml", o);
  };
  std::vector<double> plain, sharded;
  TrainOptions a;
  a.after_step = [&](const StepEvent& e) { plain.push_back(e.loss); };
  train(cfg("plain", {}), a);
  std::unique_ptr<Communicator> c = make_nccl_communicator(Device::cuda(0));
  TrainOptions b;
  b.comm = c.get();
  b.after_step = [&](const StepEvent& e) { sharded.push_back(e.loss); };
  train(cfg("zero1", {"dist.zero_stage=1"}), b);
  ASSERT_EQ(plain.size(), sharded.size());
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_NEAR(plain[i], sharded[i], 1e-4 * std::max(1.0, plain[i]));
  fs::remove_all(base);
}

}  // namespace
}  // namespace kiln
