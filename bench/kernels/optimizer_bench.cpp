// Optimizer benchmark (kernels/optimizer.h): one multi-tensor AdamW step
// (with and without the bf16 weight copy) and one SGD-with-momentum step over
// the parameter list of GPT-2 124M (148 tensors, 124.5M parameters) and of a
// 1.1B GPT (C = 2048, 20 layers, 244 tensors), laid out back to back as an
// allocator would (16-byte aligned).
//
// Bytes per parameter: AdamW reads p, g, m, v and writes p, m, v: 28 B (+2 B
// with the bf16 copy); SGD with momentum reads p, g, m and writes p, m: 20 B.
// The target is ≥ 85 % of the measured copy bandwidth for AdamW.
// PyTorch's figures (torch.optim.AdamW fused / foreach): bench/torch_bench.py.
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/kernels/bench_util.h"
#include "kernels/fill.h"
#include "kernels/optimizer.h"

namespace kiln::bench {
namespace {

using util::make_result;

struct ModelList {
  const char* label;
  std::vector<int64_t> sizes;
};

[[maybe_unused]] std::vector<ModelList> cuda_models(bool quick) {
  std::vector<ModelList> m = {{"gpt2-124M", util::gpt_param_sizes(12, 768, 50304, 1024)}};
  if (!quick) m.push_back({"gpt-1.1B", util::gpt_param_sizes(20, 2048, 50304, 1024)});
  return m;
}

// Descriptors over four packed arrays (and an optional bf16 copy).
template <typename F>
std::vector<OptimizerTensor> describe(const std::vector<int64_t>& sizes, F* p, const F* g, F* m, F* v, bf16* copy) {
  std::vector<int64_t> off;
  util::pack_offsets(sizes, &off);
  std::vector<OptimizerTensor> t(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    // The decay value does not change the cost; every tensor gets one.
    t[k] = {p + off[k], g + off[k], m + off[k], v + off[k], copy ? copy + off[k] : nullptr, sizes[k], 0.1f};
  }
  return t;
}

void bench_cpu(Context& ctx) {
  // A GPT-2-shaped list scaled down: 2 layers of C = 256, V 4096.
  const std::vector<int64_t> sizes = util::gpt_param_sizes(2, 256, 4096, 256);
  std::vector<int64_t> off;
  const int64_t total = util::pack_offsets(sizes, &off);
  std::vector<float> p(total), g(total), m(total, 0.0f), v(total, 0.0f);
  fill_uniform_cpu(p.data(), total, 1, 0, -0.1f, 0.1f);
  fill_uniform_cpu(g.data(), total, 2, 0, -1.0f, 1.0f);
  const double params = static_cast<double>(util::total_params(sizes));
  const std::string shape = "gpt-2x256 (" + std::to_string(util::total_params(sizes)) + " params)";
  auto t = describe(sizes, p.data(), g.data(), m.data(), v.data(), static_cast<bf16*>(nullptr));
  AdamWConfig adam;
  adam.lr = 1e-4f;
  const double ms = ctx.time_cpu([&] { adamw_step_cpu(t.data(), static_cast<int64_t>(t.size()), adam); });
  ctx.report(make_result("adamw_step", "cpu", shape, ms, 28 * params));
  SgdConfig sgd;
  sgd.lr = 1e-4f;
  sgd.momentum = 0.9f;
  const double ms2 = ctx.time_cpu([&] { sgd_step_cpu(t.data(), static_cast<int64_t>(t.size()), sgd); });
  ctx.report(make_result("sgd_momentum_step", "cpu", shape, ms2, 20 * params));
}

#if KILN_WITH_CUDA
void bench_cuda_model(Context& ctx, const ModelList& model) {
  std::vector<int64_t> off;
  const int64_t total = util::pack_offsets(model.sizes, &off);
  const double params = static_cast<double>(util::total_params(model.sizes));
  util::DeviceArray<float> p(total), g(total), m(total), v(total);
  util::DeviceArray<bf16> copy(total);
  fill_uniform(p.get(), total, 21, 0, -0.1f, 0.1f, nullptr);
  fill_uniform(g.get(), total, 22, 0, -1.0f, 1.0f, nullptr);
  fill_constant(m.get(), 0.0f, total, nullptr);
  fill_constant(v.get(), 0.0f, total, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = std::string(model.label) + " (" + std::to_string(model.sizes.size()) + " tensors)";
  AdamWConfig adam;
  adam.lr = 1e-4f;
  adam.step = 10;
  const auto plain = describe(model.sizes, p.get(), g.get(), m.get(), v.get(), static_cast<bf16*>(nullptr));
  const auto with_copy = describe(model.sizes, p.get(), g.get(), m.get(), v.get(), copy.get());
  double ms = ctx.time_cuda(
      [&](cudaStream_t st) { adamw_step(plain.data(), static_cast<int64_t>(plain.size()), adam, st); });
  ctx.report(make_result("adamw_step", "cuda", shape, ms, 28 * params));
  ms = ctx.time_cuda(
      [&](cudaStream_t st) { adamw_step(with_copy.data(), static_cast<int64_t>(with_copy.size()), adam, st); });
  ctx.report(make_result("adamw_step_bf16_copy", "cuda", shape, ms, 30 * params));
  SgdConfig sgd;
  sgd.lr = 1e-4f;
  sgd.momentum = 0.9f;
  ms = ctx.time_cuda([&](cudaStream_t st) { sgd_step(plain.data(), static_cast<int64_t>(plain.size()), sgd, st); });
  ctx.report(make_result("sgd_momentum_step", "cuda", shape, ms, 20 * params));
}
#endif

}  // namespace

KILN_BENCH(optimizer, 32) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu())
    for (const ModelList& m : cuda_models(ctx.quick())) bench_cuda_model(ctx, m);
#endif
}

}  // namespace kiln::bench
