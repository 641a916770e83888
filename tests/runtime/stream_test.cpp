#include "runtime/stream.h"

#include <gtest/gtest.h>

#include "runtime/error.h"
#include "runtime/tensor.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

TEST(Stream, CpuHandlesAreNoops) {
  Stream s;
  EXPECT_EQ(s.get(), nullptr);
  s.synchronize();
  Stream cpu(Device::cpu());
  EXPECT_EQ(cpu.get(), nullptr);
  Event e(Device::cpu(), true);
  e.record(nullptr);
  e.wait(nullptr);
  e.synchronize();
  EXPECT_THROW(e.elapsed_ms(e), Error);  // no clock behind CPU events
  EXPECT_EQ(compute_stream(Device::cpu()), nullptr);
  Stream moved(std::move(cpu));
  EXPECT_EQ(moved.get(), nullptr);
}

TEST(Stream, CudaWithoutAGpuIsAnError) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(Stream(Device::cuda(0)), Error);
  EXPECT_THROW(Event(Device::cuda(0)), Error);
  EXPECT_THROW(compute_stream(Device::cuda(0)), Error);
}

TEST(StreamGpu, EventsOrderAndTime) {
  KILN_REQUIRE_GPU();
  const Device d = Device::cuda(0);
  Stream s1(d), s2(d);
  EXPECT_NE(s1.get(), nullptr);
  EXPECT_EQ(compute_stream(d), compute_stream(d));  // one per device
  Tensor t = Tensor::empty(Shape{1 << 22}, DType::f32, d);
  Event start(d, true), stop(d, true);
  start.record(compute_stream(d));
  t.fill_(2.0);
  stop.record(compute_stream(d));
  stop.wait(s2.get());  // s2 waits for the fill without blocking the host
  s2.synchronize();
  stop.synchronize();
  EXPECT_GE(stop.elapsed_ms(start), 0.0f);
  EXPECT_EQ(t.to_vector()[12345], 2.0f);
  Stream moved(std::move(s1));
  EXPECT_EQ(s1.get(), nullptr);
  EXPECT_NE(moved.get(), nullptr);
}

}  // namespace
}  // namespace kiln
