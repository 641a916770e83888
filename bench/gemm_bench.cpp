// Entry `gemm`: the compute peaks. cuBLASLt bf16 (the peak compute-bound
// kernels are measured against) and fp32 GEMMs at 4096 and 8192; OpenBLAS
// sgemm at n = 512 .. 2048 on the CPU. 2·M·N·K flops per call; random inputs
// (zeros would let the hardware idle and flatter the numbers).
#include <string>
#include <vector>

#include "bench/harness.h"
#include "runtime/blas.h"
#include "runtime/stream.h"
#include "runtime/tensor.h"

namespace kiln::bench {
namespace {

struct Square {
  Tensor a, b, c;
  GemmArgs args;
};

Square make_square(int64_t n, DType in, DType out, Device d, uint64_t seed) {
  Square s;
  s.a = Tensor::empty(Shape{n, n}, in, d, "A");
  s.b = Tensor::empty(Shape{n, n}, in, d, "B");
  s.c = Tensor::empty(Shape{n, n}, out, d, "C");
  s.a.uniform_(seed, 0, -1.0f, 1.0f);
  s.b.uniform_(seed + 1, 0, -1.0f, 1.0f);
  s.args.m = s.args.n = s.args.k = n;
  s.args.a = s.a.raw();
  s.args.lda = n;
  s.args.b = s.b.raw();
  s.args.ldb = n;
  s.args.c = s.c.raw();
  s.args.ldc = n;
  s.args.in_dtype = in;
  s.args.out_dtype = out;
  return s;
}

Result gemm_result(const std::string& name, const char* backend, int64_t n, const char* dtype, double ms) {
  Result r;
  r.name = name;
  r.backend = backend;
  r.shape = std::to_string(n) + "x" + std::to_string(n) + "x" + std::to_string(n) + " " + dtype;
  r.ms = ms;
  r.flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  return r;
}

}  // namespace

KILN_BENCH(gemm, 0) {
  {
    std::vector<Result> rows;
    double best = 0;
    const std::vector<int64_t> sizes = ctx.quick() ? std::vector<int64_t>{512, 1024} : std::vector<int64_t>{512, 1024, 2048};
    for (int64_t n : sizes) {
      Square s = make_square(n, DType::f32, DType::f32, Device::cpu(), 1);
      const double ms = ctx.time_cpu([&] { gemm(s.args, Device::cpu()); });
      rows.push_back(gemm_result("sgemm", "cpu", n, "f32", ms));
      best = std::max(best, rows.back().flops / (ms * 1e-3) / 1e12);
    }
    ctx.set_peak("cpu_sgemm", best);  // TFLOP/s (cpu_sgemm_gflops() reads it in GFLOP/s)
    for (Result& r : rows) ctx.report(r);
  }
  if (!ctx.has_gpu()) return;
  const Device g = Device::cuda(0);
  const std::vector<int64_t> sizes = ctx.quick() ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 8192};
  std::vector<Result> rows;
  double best_bf16 = 0;
  for (DType t : {DType::bf16, DType::f32}) {
    for (int64_t n : sizes) {
      Square s = make_square(n, t, t, g, 7);
      const double ms = ctx.time_cuda([&](cudaStream_t st) { gemm(s.args, g, st); });
      rows.push_back(gemm_result(t == DType::bf16 ? "gemm_bf16" : "gemm_f32", "cuda", n, dtype_name(t), ms));
      if (t == DType::bf16) best_bf16 = std::max(best_bf16, rows.back().flops / (ms * 1e-3) / 1e12);
    }
  }
  ctx.set_peak("gemm_bf16", best_bf16);
  for (Result& r : rows) {
    r.peak = "gemm_bf16";
    ctx.report(r);
  }
}

}  // namespace kiln::bench
