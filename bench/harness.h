// kiln-bench: the benchmark harness every kernel registers into.
//
//   KILN_BENCH(layernorm_forward, 10) {          // name, order (peaks run first)
//     for (auto rows : {8192, 16384}) {
//       ... allocate, fill with random data (never zeros) ...
//       double ms = ctx.time_cuda([&](cudaStream_t s) { layernorm_forward(..., s); });
//       ctx.report({"layernorm_forward", "cuda", shape_str, ms, bytes, 0});
//     }
//   }
//
// Timing: warm-up, then repeats timed with CUDA events, the L2 flushed (a
// write over a buffer larger than L2) between repeats, median reported.
// Each result is reported as GB/s (bytes / time) and/or TFLOP/s (flops /
// time) and as a fraction of the chip's peak measured in the same run:
// device-to-device copy bandwidth (entry `copy`) for memory-bound ops,
// cuBLASLt bf16 GEMM TFLOP/s (entry `gemm`) for compute-bound ones. CPU
// entries are timed with a steady clock against the CPU's own measured copy
// bandwidth and OpenBLAS sgemm rate.
//
// Output: a table on stdout and, with --json PATH, one JSON document holding
// every result; --compare PATH adds the matching PyTorch figure from a JSON
// written by bench/torch_bench.py (same names and shapes) as a column.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace kiln::bench {

struct Result {
  std::string name;     ///< entry/op name, e.g. "layernorm_forward"
  std::string backend;  ///< "cuda" or "cpu"
  std::string shape;    ///< e.g. "8192x768 bf16"
  double ms = 0;        ///< median time per call
  double bytes = 0;     ///< bytes moved per call (each input read once, each output written once)
  double flops = 0;     ///< floating-point operations per call
  // Filled in by Context::report:
  double gbps = 0, tflops = 0, frac_peak = 0;
  std::string peak;     ///< which peak frac_peak is relative to ("copy", "gemm_bf16", "cpu_copy", ...)
};

class Context {
 public:
  bool has_gpu() const;
  /// --quick: fewer and smaller shapes (CI smoke runs).
  bool quick() const;
  /// Median milliseconds of fn(stream) over repeats, CUDA-event timed, L2
  /// flushed between repeats. Throws if no GPU.
  double time_cuda(const std::function<void(cudaStream_t)>& fn, int repeats = 20);
  /// Median milliseconds of fn() on the host clock.
  double time_cpu(const std::function<void()>& fn, int repeats = 5);
  /// Records a result (computing rates and the fraction of the measured peak)
  /// and prints its table row.
  void report(Result r);
  /// Peaks measured in this run (0 until the `copy` / `gemm` entries ran).
  double copy_gbps() const;
  double gemm_bf16_tflops() const;
  double cpu_copy_gbps() const;
  double cpu_sgemm_gflops() const;
  void set_peak(const std::string& which, double value);

  const std::vector<Result>& results() const;
};

using EntryFn = void (*)(Context&);
int register_entry(const char* name, int order, EntryFn fn);

}  // namespace kiln::bench

/// Defines and registers a benchmark entry. Lower `order` runs first (the
/// peak-measuring entries use 0).
#define KILN_BENCH(name, order)                                                         \
  static void kiln_bench_fn_##name(::kiln::bench::Context& ctx);                       \
  static const int kiln_bench_reg_##name =                                              \
      ::kiln::bench::register_entry(#name, order, &kiln_bench_fn_##name);               \
  static void kiln_bench_fn_##name(::kiln::bench::Context& ctx)
