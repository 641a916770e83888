// Global gradient norm benchmark (kernels/norm.h): norm + clip scale over the
// gradient list of GPT-2 124M (148 tensors) and of a 1.1B GPT (244 tensors),
// packed back to back. Bytes: every gradient read once, 4 B per parameter
// (the 2 KiB of partials are overhead). PyTorch's figure
// (torch.nn.utils.clip_grad_norm_, foreach): bench/torch_bench.py.
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/kernels/bench_util.h"
#include "kernels/fill.h"
#include "kernels/norm.h"

namespace kiln::bench {
namespace {

using util::make_result;

template <typename F>
std::vector<NormTensorT<F>> describe(const std::vector<int64_t>& sizes, const F* base) {
  std::vector<int64_t> off;
  util::pack_offsets(sizes, &off);
  std::vector<NormTensorT<F>> t(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) t[k] = {base + off[k], sizes[k]};
  return t;
}

void bench_cpu(Context& ctx) {
  const std::vector<int64_t> sizes = util::gpt_param_sizes(2, 256, 4096, 256);
  std::vector<int64_t> off;
  const int64_t total = util::pack_offsets(sizes, &off);
  std::vector<float> g(total);
  fill_uniform_cpu(g.data(), total, 1, 0, -1.0f, 1.0f);
  const auto t = describe(sizes, g.data());
  volatile float sink = 0.0f;  // keeps the call from being optimized away
  const double ms = ctx.time_cpu([&] { sink = global_norm_cpu(t.data(), static_cast<int64_t>(t.size())); });
  (void)sink;
  const double params = static_cast<double>(util::total_params(sizes));
  ctx.report(make_result("grad_norm_clip", "cpu", "gpt-2x256 (" + std::to_string(util::total_params(sizes)) + " params)",
                         ms, 4 * params));
}

#if KILN_WITH_CUDA
void bench_cuda_model(Context& ctx, const char* label, const std::vector<int64_t>& sizes) {
  std::vector<int64_t> off;
  const int64_t total = util::pack_offsets(sizes, &off);
  util::DeviceArray<float> g(total), norm(1), scale(1), ws(kNormPartials);
  fill_uniform(g.get(), total, 31, 0, -1.0f, 1.0f, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const auto t = describe(sizes, static_cast<const float*>(g.get()));
  const double ms = ctx.time_cuda([&](cudaStream_t st) {
    global_norm_clip(norm.get(), scale.get(), t.data(), static_cast<int64_t>(t.size()), 1.0f, ws.get(), st);
  });
  const std::string shape = std::string(label) + " (" + std::to_string(sizes.size()) + " tensors)";
  ctx.report(make_result("grad_norm_clip", "cuda", shape, ms, 4 * static_cast<double>(util::total_params(sizes))));
}
#endif

}  // namespace

KILN_BENCH(grad_norm, 33) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) {
    bench_cuda_model(ctx, "gpt2-124M", util::gpt_param_sizes(12, 768, 50304, 1024));
    if (!ctx.quick()) bench_cuda_model(ctx, "gpt-1.1B", util::gpt_param_sizes(20, 2048, 50304, 1024));
  }
#endif
}

}  // namespace kiln::bench
