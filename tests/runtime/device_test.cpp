#include "runtime/device.h"

#include <gtest/gtest.h>

#include "runtime/error.h"
#include "tests/harness/harness.h"

namespace kiln {

TEST(Device, CpuAndAutoResolve) {
  EXPECT_TRUE(resolve_device("cpu").is_cpu());
  Device d = resolve_device("auto", 0, false);
  EXPECT_EQ(d.is_cuda(), cuda_available());
  if (!cuda_available()) {
    EXPECT_FALSE(cuda_unavailable_reason().empty());
  }
}

TEST(Device, BadSpecsAreInputErrors) {
  EXPECT_THROW(resolve_device("tpu"), InputError);
  EXPECT_THROW(resolve_device("cuda:x"), InputError);
  if (!cuda_available()) {
    EXPECT_THROW(resolve_device("cuda"), InputError);
  }
}

TEST(DeviceGpu, CudaResolvesToAnExistingDevice) {
  KILN_REQUIRE_GPU();
  Device d = resolve_device("cuda", 0, false);
  EXPECT_TRUE(d.is_cuda());
  EXPECT_LT(d.index, cuda_device_count());
}

}  // namespace kiln
