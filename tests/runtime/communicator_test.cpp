// The single-process communicator (what a plain `kiln train` gets): every
// collective is the identity or a copy, arguments are checked as in the
// multi-process backends, and make_communicator picks it without a launcher.
// The MPI backend is tested under mpirun in tests/dist/.
#include <gtest/gtest.h>

#include "runtime/communicator.h"
#include "runtime/process_info.h"

namespace kiln {
namespace {

Tensor iota(int64_t n, float scale = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = scale * static_cast<float>(i) + 0.5f;
  return Tensor::from_vector(v, {n}, DType::f32, Device::cpu());
}

TEST(SingleCommunicator, PickedWithoutALauncher) {
  ProcessInfo p;  // rank 0 of 1, whatever the environment says
  ProcessInfoOverride o(p);
  std::unique_ptr<Communicator> c = make_communicator(Device::cpu());
  EXPECT_STREQ(c->backend(), "single");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->world(), 1);
  EXPECT_TRUE(c->is_root());
}

TEST(SingleCommunicator, CollectivesAreIdentityOrCopy) {
  std::unique_ptr<Communicator> c = make_single_communicator();
  for (int64_t n : {0, 1, 7, 33, 1000}) {
    Tensor t = iota(n);
    const std::vector<float> before = t.to_vector();
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
      auto h = c->all_reduce_async(t, op, "t");
      EXPECT_TRUE(h->done());
      h->wait();
      EXPECT_EQ(t.to_vector(), before);
    }
    c->broadcast(t, 0);
    EXPECT_EQ(t.to_vector(), before);
    Tensor out = Tensor::zeros({n}, DType::f32, Device::cpu());
    c->reduce_scatter(t, out, ReduceOp::avg);
    EXPECT_EQ(out.to_vector(), before);
    Tensor g = Tensor::zeros({n}, DType::f32, Device::cpu());
    c->all_gather(t, g);
    EXPECT_EQ(g.to_vector(), before);
    c->all_gather(g.view(0, {n}), g);  // in place
    EXPECT_EQ(g.to_vector(), before);
  }
  std::vector<double> v = {1.5, -2.0};
  c->all_reduce_values(v, ReduceOp::sum);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2.0}));
  std::string s = "unchanged";
  c->broadcast_string(s, 0);
  EXPECT_EQ(s, "unchanged");
  c->barrier();
}

TEST(SingleCommunicator, BadArgumentsAreErrors) {
  std::unique_ptr<Communicator> c = make_single_communicator();
  Tensor a = iota(6), b = iota(4);
  EXPECT_THROW(c->reduce_scatter(a, b, ReduceOp::sum), Error);    // 6 != 1 x 4
  EXPECT_THROW(c->all_gather(a, b), Error);
  EXPECT_THROW(c->broadcast(a, 1), Error);                         // no rank 1
  EXPECT_THROW(c->all_reduce(Tensor(), ReduceOp::sum), Error);
  Tensor ints = Tensor::from_vector(std::vector<int32_t>{1, 2}, {2}, Device::cpu());
  EXPECT_THROW(c->all_reduce(ints, ReduceOp::avg), Error);         // mean of integers
  c->all_reduce(ints, ReduceOp::sum);
  EXPECT_THROW(c->reduce_scatter(a, a, ReduceOp::sum), Error);    // overlapping buffers
  Tensor big = iota(8);
  EXPECT_THROW(c->all_gather(big.view(1, {4}), big.view(0, {4})), Error);  // overlap, not in place
}

TEST(SingleCommunicator, NcclWithoutADeviceIsAnError) {
  if (cuda_available()) GTEST_SKIP() << "a GPU exists: tests/dist/nccl_test.cpp covers NCCL";
  EXPECT_THROW(make_nccl_communicator(Device::cuda(0)), Error);
}

TEST(ProcessInfo, OverridesNest) {
  const ProcessInfo outer = process_info();
  {
    ProcessInfo p;
    p.rank = 3;
    p.world = 4;
    ProcessInfoOverride a(p);
    EXPECT_EQ(process_info().rank, 3);
    {
      ProcessInfo q;
      ProcessInfoOverride b(q);
      EXPECT_EQ(process_info().world, 1);
    }
    EXPECT_EQ(process_info().world, 4);
  }
  EXPECT_EQ(process_info().rank, outer.rank);
  EXPECT_EQ(process_info().world, outer.world);
}

TEST(FormatBytes, Units) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(999), "999 B");
  EXPECT_EQ(format_bytes(1500), "1.5 KB");
  EXPECT_EQ(format_bytes(25e6), "25 MB");
}

}  // namespace
}  // namespace kiln
