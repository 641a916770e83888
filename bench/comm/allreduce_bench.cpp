// All-reduce bandwidth over message sizes, reported as nccl-tests reports it:
//
//   time   per all-reduce, the slowest rank's (max over ranks), in place, sum, f32
//   algbw  = S / time                 S = bytes each rank reduces
//   busbw  = algbw · 2(n−1)/n         n = ranks
//
// busbw is what each link carries in a ring all-reduce (every byte goes out
// n−1 times in the reduce-scatter half and n−1 times in the all-gather
// half), so it compares across rank counts and with the link's bandwidth
// (NVLink, InfiniBand): a busbw near the link's rate means the collective
// runs at the hardware's speed.
//
//   kiln-bench --filter allreduce                          one GPU: NCCL with one rank (launch overhead;
//                                                          busbw is 0 by definition)
//   mpirun -np 8 kiln-bench --filter allreduce             8 GPUs: NCCL; without GPUs: MPI on CPU tensors
//
// Under mpirun every rank runs the entry (the collectives need them all);
// rank 0 alone reports.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "runtime/communicator.h"
#include "runtime/device.h"
#include "runtime/process_info.h"
#include "runtime/stream.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

void sync(Device d) {
#if KILN_WITH_CUDA
  if (d.is_cuda()) KILN_CUDA_CHECK(cudaStreamSynchronize(compute_stream(d)));
#else
  (void)d;
#endif
}

std::string size_str(double bytes) {
  char buf[32];
  if (bytes >= 1 << 20) std::snprintf(buf, sizeof buf, "%.0fMB", bytes / (1 << 20));
  else if (bytes >= 1 << 10) std::snprintf(buf, sizeof buf, "%.0fKB", bytes / (1 << 10));
  else std::snprintf(buf, sizeof buf, "%.0fB", bytes);
  return buf;
}

}  // namespace

KILN_BENCH(allreduce, 50) {
  const ProcessInfo& pi = process_info();
  const bool gpu = ctx.has_gpu();
  if (!gpu && pi.world == 1) {
    std::printf("allreduce: no GPU and one process: run `mpirun -np N kiln-bench --filter allreduce` for MPI\n");
    return;
  }
  const Device dev = gpu ? Device::cuda(pi.local_rank % cuda_device_count()) : Device::cpu();
  set_current_device(dev);
  CommOptions co;
  co.timeout_s = 300;
  std::unique_ptr<Communicator> comm = gpu ? make_nccl_communicator(dev, co) : make_communicator(dev, co);
  const int n = comm->world();
  const double bus_factor = 2.0 * (n - 1) / n;
  // 8 B .. 256 MB (GPU) / 64 MB (CPU), ×8 steps; --quick: a few.
  std::vector<int64_t> sizes;
  const int64_t top = ctx.quick() ? (int64_t{1} << 22) : gpu ? (int64_t{1} << 28) : (int64_t{1} << 26);
  for (int64_t s = 8; s <= top; s *= 8) sizes.push_back(s);
  if (sizes.back() != top) sizes.push_back(top);
  ctx.set_peak("link", 0.0);  // the link's rate is not measured here: no fraction of a peak
  if (comm->is_root())
    std::printf("allreduce (%s, %d rank%s): %12s %12s %10s %10s %10s\n", comm->backend(), n, n == 1 ? "" : "s",
                "size", "count", "time(us)", "algbw", "busbw");
  for (int64_t bytes : sizes) {
    const int64_t count = bytes / 4;
    // Zeros stay zeros under sum, so repeats never reach inf.
    Tensor x = Tensor::zeros({count}, DType::f32, dev, "allreduce_buffer");
    const int warmup = 3;
    const int iters = static_cast<int>(std::clamp<int64_t>((int64_t{1} << (ctx.quick() ? 26 : 30)) / bytes, 5, 200));
    for (int i = 0; i < warmup; ++i) comm->all_reduce(x, ReduceOp::sum, "bench");
    sync(dev);
    comm->barrier("bench");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) comm->all_reduce(x, ReduceOp::sum, "bench");
    sync(dev);
    const double local_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    std::vector<double> t = {local_s};
    comm->all_reduce_values(t, ReduceOp::max, "bench time");
    const double sec = t[0];
    const double algbw = static_cast<double>(bytes) / sec / 1e9;
    if (!comm->is_root()) continue;
    std::printf("allreduce (%s, %d rank%s): %12lld %12lld %10.2f %10.2f %10.2f\n", comm->backend(), n,
                n == 1 ? "" : "s", static_cast<long long>(bytes), static_cast<long long>(count), sec * 1e6, algbw,
                algbw * bus_factor);
    const std::string shape = size_str(static_cast<double>(bytes)) + " f32 x" + std::to_string(n) + " " +
                              comm->backend();
    Result r;
    r.name = "allreduce_algbw";
    r.backend = gpu ? "cuda" : "cpu";
    r.shape = shape;
    r.ms = sec * 1e3;
    r.bytes = static_cast<double>(bytes);
    r.peak = "link";
    ctx.report(r);
    if (n > 1) {
      r.name = "allreduce_busbw";
      r.bytes = static_cast<double>(bytes) * bus_factor;
      ctx.report(r);
    }
  }
}

}  // namespace kiln::bench
