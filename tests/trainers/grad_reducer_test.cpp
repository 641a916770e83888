// GradReducer in one process: bucket layout, early launch from the
// grad-ready hook (overlap), the calibration of repeated signals, and ZeRO-1
// equal to the plain optimizer bit for bit with a world of one. The
// multi-process behaviour is tested under mpirun in tests/dist/.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "nn/linear.h"
#include "nn/optimizer.h"
#include "nn/sequential.h"
#include "trainers/grad_reducer.h"
#include "trainers/step_guard.h"

namespace kiln {
namespace {

// A world of one that records, for each gradient collective, whether the
// watched gradient still held `baseline` (its value before the last
// backward) when the collective was issued.
class RecordingCommunicator final : public Communicator {
 public:
  RecordingCommunicator() : Communicator(0, 1), inner_(make_single_communicator()) {}
  const char* backend() const override { return "recording"; }
  std::unique_ptr<CommHandle> all_reduce_async(const Tensor& t, ReduceOp op, const std::string& what) override {
    record(what);
    return inner_->all_reduce_async(t, op, what);
  }
  std::unique_ptr<CommHandle> broadcast_async(const Tensor& t, int root, const std::string& what) override {
    return inner_->broadcast_async(t, root, what);
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op,
                                                   const std::string& what) override {
    record(what);
    return inner_->reduce_scatter_async(in, out, op, what);
  }
  std::unique_ptr<CommHandle> all_gather_async(const Tensor& in, const Tensor& out, const std::string& what) override {
    return inner_->all_gather_async(in, out, what);
  }
  void barrier(const std::string& what) override { inner_->barrier(what); }
  void all_reduce_values(std::vector<double>& v, ReduceOp op, const std::string& what) override {
    inner_->all_reduce_values(v, op, what);
  }
  void broadcast_string(std::string& s, int root, const std::string& what) override {
    inner_->broadcast_string(s, root, what);
  }
  [[noreturn]] void abort(const std::string& why, int status) override {
    inner_->abort(why, status);
    std::abort();  // not reached
  }

  struct Launch {
    std::string what;
    bool watched_unchanged;
  };
  std::vector<Launch> launches;
  nn::Parameter* watched = nullptr;
  std::vector<float> baseline;

 private:
  void record(const std::string& what) {
    launches.push_back({what, watched && watched->grad.to_vector() == baseline});
  }
  std::unique_ptr<Communicator> inner_;
};

// Three Linear layers: 20->16->12->4 (336, 204, 52 parameters with biases).
std::unique_ptr<nn::Sequential> three_layers(uint64_t seed) {
  auto m = std::make_unique<nn::Sequential>();
  m->add(std::make_unique<nn::Linear>(20, 16, true, seed, 0));
  m->add(std::make_unique<nn::Linear>(16, 12, true, seed, 1000));
  m->add(std::make_unique<nn::Linear>(12, 4, true, seed, 2000));
  return m;
}

Tensor randn(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::f32, Device::cpu());
  t.normal_(seed, 0);
  return t;
}

// One backward with a fixed upstream gradient (a stand-in for a loss).
void fwd_bwd(nn::Module& m, uint64_t seed) {
  Tensor y = m.forward(randn({5, 20}, seed));
  m.backward(randn(y.shape(), seed + 1));
}

TEST(GradReducer, BucketsInReverseOrderAlignedAndCapped) {
  auto m = three_layers(1);
  std::vector<nn::Parameter*> params = m->parameters();
  for (nn::Parameter* p : params) p->grad.fill_(1.0);  // existing values survive the move into buckets
  RecordingCommunicator comm;
  GradReducerOptions o;
  o.bucket_mb = 300.0 * 4 / (1024 * 1024);  // 300 floats
  GradReducer r(*m, params, comm, o);
  // Offsets padded to 64: {2.bias @0, 2.weight @64, 1.bias @128},
  // {1.weight @0, 0.bias @192}, {0.weight @0}.
  EXPECT_EQ(r.num_buckets(), 3);
  for (nn::Parameter* p : params) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p->grad.raw()) % 256, 0u) << p->name;
    for (float v : p->grad.to_vector()) ASSERT_EQ(v, 1.0f) << p->name;
  }
  // Reverse order: the last layer's bias leads the first bucket, and a
  // parameter's gradient follows the one registered after it.
  const char* b2 = static_cast<const char*>(params[5]->grad.raw());
  const char* w2 = static_cast<const char*>(params[4]->grad.raw());
  EXPECT_EQ(w2 - b2, 256);  // 4 floats of bias, padded to 64 elements
  EXPECT_EQ(params[0]->name, "0.weight");
  EXPECT_NE(r.describe().find("3 gradient buckets"), std::string::npos) << r.describe();
}

TEST(GradReducer, BucketsLaunchDuringBackwardOnceCalibrated) {
  auto m = three_layers(2);
  std::vector<nn::Parameter*> params = m->parameters();
  RecordingCommunicator comm;
  comm.watched = params[0];  // layer 0's weight: the last gradient backward produces
  GradReducerOptions o;
  o.bucket_mb = 200.0 * 4 / (1024 * 1024);  // {2.bias, 2.weight, 1.bias} {1.weight} {0.bias} {0.weight}
  GradReducer r(*m, params, comm, o);
  for (int step = 0; step < 3; ++step) {
    comm.launches.clear();
    m->zero_grad();
    fwd_bwd(*m, 10);        // an earlier micro-batch: no communication
    EXPECT_TRUE(comm.launches.empty());
    comm.baseline = params[0]->grad.to_vector();
    r.arm();
    fwd_bwd(*m, 20);        // the last one
    r.finish();
    ASSERT_EQ(comm.launches.size(), 4u);
    EXPECT_EQ(comm.launches[0].what, "grad bucket 1/4");
    EXPECT_EQ(comm.launches[3].what, "grad bucket 4/4");
    if (step == 0) {
      // Calibration: nothing launches before backward is over.
      for (auto& l : comm.launches) EXPECT_FALSE(l.watched_unchanged);
    } else {
      // Layers 2 and 1's buckets went out before layer 0's backward ran;
      // layer 0's own two buckets right after its gradients.
      EXPECT_TRUE(comm.launches[0].watched_unchanged);
      EXPECT_TRUE(comm.launches[1].watched_unchanged);
      EXPECT_FALSE(comm.launches[2].watched_unchanged);
      EXPECT_FALSE(comm.launches[3].watched_unchanged);
    }
  }
}

// A module that adds into its weight's gradient `uses` times per backward
// and signals after each (a tied weight used twice).
class Repeated : public nn::Module {
 public:
  Repeated() { w_ = &register_parameter("w", Tensor::zeros({8}, DType::f32, Device::cpu()), true); }
  Tensor forward(const Tensor& x) override { return x; }
  Tensor backward(const Tensor& dy) override {
    for (int i = 0; i < uses; ++i) {
      std::vector<float> g = w_->grad.to_vector();
      for (float& v : g) v += 1.0f;
      w_->grad.copy_from(Tensor::from_vector(g, {8}, DType::f32, Device::cpu()));
      grads_ready();
    }
    return dy;
  }
  std::string describe() const override { return "Repeated"; }
  int uses = 2;

 private:
  nn::Parameter* w_;
};

TEST(GradReducer, RepeatedSignalsAreCountedAndChangesCaught) {
  Repeated m;
  RecordingCommunicator comm;
  comm.watched = nullptr;
  GradReducer r(m, m.parameters(), comm, {});
  Tensor x = Tensor::zeros({1}, DType::f32, Device::cpu());
  for (int step = 0; step < 2; ++step) {
    m.zero_grad();
    r.arm();
    m.backward(x);
    r.finish();
    // Launched once, after both uses: the reduced gradient holds both.
    ASSERT_EQ(comm.launches.size(), static_cast<size_t>(step + 1));
    EXPECT_EQ(m.parameters()[0]->grad.to_vector()[0], 2.0f);
  }
  m.uses = 3;  // the graph changed: the bucket went out after two of three
  m.zero_grad();
  r.arm();
  m.backward(x);
  try {
    r.finish();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
}

std::vector<float> all_values(nn::Module& m) {
  std::vector<float> out;
  for (nn::Parameter* p : m.parameters())
    for (float v : p->value.to_vector()) out.push_back(v);
  return out;
}

TEST(GradReducer, ZeroOneInOneProcessEqualsThePlainOptimizer) {
  auto a = three_layers(3), b = three_layers(3);
  nn::OptimizerOptions oo;
  oo.weight_decay = 0.1;  // decays weights, not biases: segments must keep the flag
  nn::Optimizer plain(a->parameters(), oo);
  RecordingCommunicator comm;
  GradReducerOptions ro;
  ro.zero_stage = 1;
  ro.bucket_mb = 300.0 * 4 / (1024 * 1024);
  GradReducer r(*b, b->parameters(), comm, ro);
  nn::Optimizer sharded(r.optimizer_params(), oo);
  for (int step = 0; step < 4; ++step) {
    a->zero_grad();
    b->zero_grad();
    fwd_bwd(*a, 100 + step);
    r.arm();
    fwd_bwd(*b, 100 + step);
    r.finish();
    StepGuard norm(Device::cpu(), /*max_norm=*/0.0, /*sticky=*/false);
    norm.compute(r.optimizer_params(), r.norm_comm());  // this rank's shard, summed over ranks
    EXPECT_NEAR(norm.norm().to_vector()[0], nn::grad_norm(a->parameters()), 1e-5);
    plain.step(1e-2);
    r.before_step();
    sharded.step(1e-2);
    r.after_step();
    EXPECT_EQ(all_values(*a), all_values(*b)) << "step " << step;
  }
  // The gathered state is the plain optimizer's, name for name and bit for bit.
  auto full = r.gather_state(sharded, oo);
  auto ref = plain.state();
  ASSERT_EQ(full.size(), ref.size());
  std::map<std::string, Tensor> ref_map(ref.begin(), ref.end());
  for (auto& [name, t] : full) {
    ASSERT_TRUE(ref_map.count(name)) << name;
    EXPECT_EQ(t.to_vector(), ref_map[name].to_vector()) << name;
  }
  ASSERT_EQ(r.state_layout(oo).size(), ref.size());

  // Loading it into a fresh sharded optimizer continues identically.
  auto c = three_layers(99);
  for (size_t i = 0; i < c->parameters().size(); ++i) c->parameters()[i]->value.copy_from(b->parameters()[i]->value);
  GradReducer rc(*c, c->parameters(), comm, ro);
  nn::Optimizer sc(rc.optimizer_params(), oo);
  std::map<std::string, Tensor> full_map(full.begin(), full.end());
  rc.load_state(sc, full_map, sharded.steps());
  for (nn::Module* m : {static_cast<nn::Module*>(b.get()), static_cast<nn::Module*>(c.get())}) {
    GradReducer& rr = m == b.get() ? r : rc;
    nn::Optimizer& oo2 = m == b.get() ? sharded : sc;
    m->zero_grad();
    rr.arm();
    fwd_bwd(*m, 500);
    rr.finish();
    rr.before_step();
    oo2.step(1e-2);
    rr.after_step();
  }
  EXPECT_EQ(all_values(*b), all_values(*c));
}

}  // namespace
}  // namespace kiln
