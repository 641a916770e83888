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
#include <map>
#include <memory>
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

/// How kiln-bench was invoked (bench/main.cpp fills this in).
struct Options {
  bool quick = false;
  /// JSON written by bench/torch_bench.py; adds a PyTorch column to the table.
  std::string compare_path;
};

class Context {
 public:
  explicit Context(const Options& options = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

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
  /// Records a peak: "copy" / "cpu_copy" in GB/s, "gemm_bf16" / "cpu_sgemm"
  /// (or any other compute peak) in TFLOP/s. A Result whose `peak` names a
  /// recorded peak is measured against it; otherwise report() picks the copy
  /// or GEMM peak of its backend, whichever the result is closer to.
  void set_peak(const std::string& which, double value);
  const std::map<std::string, double>& peaks() const;

  const std::vector<Result>& results() const;
  /// Prints the table header (main calls it once before the entries run).
  void print_header() const;
  /// Records an entry that threw (it appears in the JSON under "failures").
  void add_failure(const std::string& entry, const std::string& error);
  /// The whole run as one JSON document: device, peaks, results, failures.
  std::string json() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

using EntryFn = void (*)(Context&);
int register_entry(const char* name, int order, EntryFn fn);

struct Entry {
  std::string name;
  int order;
  EntryFn fn;
};
/// Every registered entry, sorted by (order, name).
std::vector<Entry> registered_entries();

}  // namespace kiln::bench

/// Defines and registers a benchmark entry. Lower `order` runs first (the
/// peak-measuring entries use 0).
#define KILN_BENCH(name, order)                                                         \
  static void kiln_bench_fn_##name(::kiln::bench::Context& ctx);                       \
  static const int kiln_bench_reg_##name =                                              \
      ::kiln::bench::register_entry(#name, order, &kiln_bench_fn_##name);               \
  static void kiln_bench_fn_##name(::kiln::bench::Context& ctx)
