// The MPI communicator on CPU tensors, run as `mpirun -np 2` (any world size
// works): every collective, every reduction, dtypes f32/f64/i32 (and bytes
// for broadcast/all-gather), odd sizes and 0, async ops in flight together,
// host values and strings. Inputs are small integers, so sums are exact and
// compared bit for bit.
#include <gtest/gtest.h>

#include <algorithm>

#include "runtime/communicator.h"
#include "runtime/process_info.h"

namespace kiln {
namespace {

Communicator& comm() {
  static std::unique_ptr<Communicator> c = [] {
    CommOptions o;
    o.timeout_s = 60;
    return make_communicator(Device::cpu(), o);
  }();
  return *c;
}

const int64_t kSizes[] = {0, 1, 2, 7, 31, 33, 1000, 65537};

// Element i on rank r: small integers, distinct per rank.
double value(int r, int64_t i) { return static_cast<double>((i * 7 + r * 13) % 101) - 50.0; }

Tensor make(int64_t n, DType t, int r) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(value(r, i));
  if (t == DType::i32) {
    std::vector<int32_t> iv(v.begin(), v.end());
    return Tensor::from_vector(iv, {n}, Device::cpu());
  }
  return Tensor::from_vector(v, {n}, t, Device::cpu());
}

double expected(ReduceOp op, int64_t i, int world) {
  double s = 0, m = -1e300;
  for (int r = 0; r < world; ++r) {
    s += value(r, i);
    m = std::max(m, value(r, i));
  }
  if (op == ReduceOp::max) return m;
  return op == ReduceOp::avg ? s / world : s;
}

TEST(MpiCommunicator, IsTheMpiBackendOfTheLaunch) {
  ASSERT_GE(process_info().world, 2) << "run under mpirun -np 2 (ctest -L dist does)";
  EXPECT_STREQ(comm().backend(), "mpi");
  EXPECT_EQ(comm().rank(), process_info().rank);
  EXPECT_EQ(comm().world(), process_info().world);
}

TEST(MpiCommunicator, AllReduceEveryOpDtypeAndSize) {
  const int r = comm().rank(), w = comm().world();
  for (DType t : {DType::f32, DType::f64, DType::i32})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max})
      for (int64_t n : kSizes) {
        if (t == DType::i32 && op == ReduceOp::avg) continue;
        Tensor x = make(n, t, r);
        comm().all_reduce(x, op, "test");
        const std::vector<double> got = x.to_vector_f64();
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(got[static_cast<size_t>(i)], expected(op, i, w))
              << dtype_name(t) << " op " << static_cast<int>(op) << " n " << n << " i " << i;
      }
}

TEST(MpiCommunicator, BroadcastFromEveryRoot) {
  const int r = comm().rank(), w = comm().world();
  for (int root = 0; root < w; ++root)
    for (DType t : {DType::f32, DType::f64, DType::i32, DType::bf16})
      for (int64_t n : kSizes) {
        Tensor x = make(n, t, r);
        comm().broadcast(x, root);
        const std::vector<double> got = x.to_vector_f64();
        const std::vector<double> want = make(n, t, root).to_vector_f64();
        ASSERT_EQ(got, want) << dtype_name(t) << " root " << root << " n " << n;
      }
  // Bytes too.
  Tensor b = Tensor::full({5}, r == 0 ? 7.0 : 1.0, DType::u8, Device::cpu());
  comm().broadcast(b, 0);
  EXPECT_EQ(b.to_vector(), std::vector<float>(5, 7.0f));
}

TEST(MpiCommunicator, ReduceScatterGivesEachRankItsChunk) {
  const int r = comm().rank(), w = comm().world();
  for (DType t : {DType::f32, DType::f64, DType::i32})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max})
      for (int64_t n : {0, 1, 5, 33, 1001}) {
        if (t == DType::i32 && op == ReduceOp::avg) continue;
        Tensor in = make(n * w, t, r);
        Tensor out = Tensor::full({n}, -999.0, t, Device::cpu());
        comm().reduce_scatter(in, out, op);
        const std::vector<double> got = out.to_vector_f64();
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(got[static_cast<size_t>(i)], expected(op, r * n + i, w)) << dtype_name(t) << " n " << n;
      }
}

TEST(MpiCommunicator, AllGatherOutOfPlaceAndInPlace) {
  const int r = comm().rank(), w = comm().world();
  for (DType t : {DType::f32, DType::f64, DType::i32, DType::bf16})
    for (int64_t n : {0, 1, 3, 257}) {
      Tensor in = make(n, t, r);
      Tensor out = Tensor::zeros({n * w}, t, Device::cpu());
      comm().all_gather(in, out);
      Tensor same = Tensor::zeros({n * w}, t, Device::cpu());
      if (n > 0) same.view(r * n, {n}).copy_from(in);
      comm().all_gather(same.view(r * n, {n}), same);  // in place
      std::vector<double> want;
      for (int q = 0; q < w; ++q)
        for (double v : make(n, t, q).to_vector_f64()) want.push_back(v);
      ASSERT_EQ(out.to_vector_f64(), want) << dtype_name(t) << " n " << n;
      ASSERT_EQ(same.to_vector_f64(), want) << dtype_name(t) << " n " << n << " (in place)";
    }
}

TEST(MpiCommunicator, AsyncOpsInFlightTogether) {
  const int r = comm().rank(), w = comm().world();
  std::vector<Tensor> xs;
  std::vector<std::unique_ptr<CommHandle>> hs;
  for (int k = 0; k < 6; ++k) {
    xs.push_back(make(1000 + k, DType::f32, r));
    hs.push_back(comm().all_reduce_async(xs.back(), ReduceOp::sum, "async " + std::to_string(k)));
  }
  // Waited in reverse: they still complete, in order, with the right sums.
  for (int k = 5; k >= 0; --k) {
    hs[static_cast<size_t>(k)]->wait();
    EXPECT_TRUE(hs[static_cast<size_t>(k)]->done());
    const std::vector<float> got = xs[static_cast<size_t>(k)].to_vector();
    for (int64_t i = 0; i < 1000 + k; i += 97)
      ASSERT_EQ(got[static_cast<size_t>(i)], static_cast<float>(expected(ReduceOp::sum, i, w)));
  }
  // A handle dropped unwaited still completes before its tensor is reused.
  Tensor y = make(10, DType::f32, r);
  comm().all_reduce_async(y, ReduceOp::max);
  EXPECT_EQ(y.to_vector()[3], static_cast<float>(expected(ReduceOp::max, 3, w)));
}

TEST(MpiCommunicator, HostValuesStringsAndBarrier) {
  const int r = comm().rank(), w = comm().world();
  std::vector<double> v = {1.0, static_cast<double>(r), 0.25};
  comm().all_reduce_values(v, ReduceOp::sum);
  EXPECT_EQ(v[0], w);
  EXPECT_EQ(v[1], w * (w - 1) / 2.0);
  EXPECT_EQ(v[2], 0.25 * w);
  std::vector<double> m = {static_cast<double>(r)};
  comm().all_reduce_values(m, ReduceOp::max);
  EXPECT_EQ(m[0], w - 1);
  std::vector<double> empty;
  comm().all_reduce_values(empty, ReduceOp::sum);
  for (size_t len : {size_t{0}, size_t{1}, size_t{100003}}) {
    std::string s = r == w - 1 ? std::string(len, 'k') : "something else entirely";
    comm().broadcast_string(s, w - 1);
    EXPECT_EQ(s, std::string(len, 'k'));
  }
  comm().barrier();
}

TEST(MpiCommunicator, BadArgumentsThrowBeforeAnythingIsSent) {
  // Symmetric on every rank, and nothing reaches MPI, so the ranks stay in step.
  Tensor a = make(6, DType::f32, 0), b = make(4, DType::f32, 0);
  EXPECT_THROW(comm().reduce_scatter(a, b, ReduceOp::sum), Error);
  EXPECT_THROW(comm().all_gather(a, b), Error);
  EXPECT_THROW(comm().broadcast(a, comm().world()), Error);
  Tensor h = make(4, DType::bf16, 0);
  EXPECT_THROW(comm().all_reduce(h, ReduceOp::sum), Error);  // MPI does not reduce bf16
  comm().barrier();
}

}  // namespace
}  // namespace kiln
