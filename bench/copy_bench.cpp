// Entry `copy`: the memory-bandwidth peaks other entries are measured against.
// GPU: cudaMemcpyAsync device to device over a buffer far larger than the L2;
// CPU: memcpy over a buffer far larger than the last-level cache. Both count
// every byte twice (read + write), as kernels count their inputs and outputs.
#include <cstring>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

std::string mib(size_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

Result copy_result(const char* backend, size_t bytes, double ms) {
  Result r;
  r.name = "copy";
  r.backend = backend;
  r.shape = mib(bytes);
  r.ms = ms;
  r.bytes = 2.0 * static_cast<double>(bytes);
  r.peak = backend == std::string("cuda") ? "copy" : "cpu_copy";
  return r;
}

}  // namespace

KILN_BENCH(copy, 0) {
  {
    const size_t bytes = (ctx.quick() ? size_t(64) : size_t(256)) << 20;
    std::vector<unsigned char> src(bytes), dst(bytes);  // zero-filled: every page touched
    std::memset(src.data(), 0x5a, bytes);
    const double ms = ctx.time_cpu([&] { std::memcpy(dst.data(), src.data(), bytes); });
    KILN_CHECK(dst[bytes - 1] == 0x5a, "memcpy did not copy");
    ctx.set_peak("cpu_copy", 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9);
    ctx.report(copy_result("cpu", bytes, ms));
  }
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) {
    // 1 GiB each way: at ~4 TB/s a copy takes ~0.5 ms, far above launch costs.
    const size_t bytes = (ctx.quick() ? size_t(256) : size_t(1024)) << 20;
    const Device g = Device::cuda(0);
    Tensor src = Tensor::full(Shape{static_cast<int64_t>(bytes)}, 90.0, DType::u8, g);
    Tensor dst = Tensor::zeros(Shape{static_cast<int64_t>(bytes)}, DType::u8, g);
    const double ms = ctx.time_cuda([&](cudaStream_t s) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), bytes, cudaMemcpyDeviceToDevice, s));
    });
    KILN_CHECK(dst.view(static_cast<int64_t>(bytes) - 1, Shape{1}).to_vector()[0] == 90.0f, "the copy did not copy");
    ctx.set_peak("copy", 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9);
    ctx.report(copy_result("cuda", bytes, ms));
  }
#endif
}

}  // namespace kiln::bench
