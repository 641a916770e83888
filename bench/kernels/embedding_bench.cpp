// Embedding benchmark (kernels/embedding.h): token + position forward and the
// deterministic backward, at GPT-2 124M's shape (B·T = 8 · 1024 = 8192
// positions, C = 768, V = 50304) and a large one (16 · 1024 positions,
// C = 4096), fp32 and bf16 activations (fp32 gradients). Token ids are
// uniform over the vocabulary.
//
// Bytes counted, with n = B·T positions, s = sizeof(activation), u = distinct
// ids in the batch:
//   forward   ids 4·n + gathered wte rows n·C·s + wpe T·C·s + out n·C·s
//   backward  ids 4·n + dout n·C·s + touched dwte rows read and written 8·u·C
//             + dwpe read and written 8·T·C
// (the backward's sort and its second read of dout for dwpe are overhead, so
// they show up as lower GB/s). PyTorch's figures: bench/torch_bench.py.
#include <set>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/kernels/bench_util.h"
#include "kernels/embedding.h"
#include "kernels/fill.h"
#include "runtime/philox.h"

namespace kiln::bench {
namespace {

using util::make_result;

constexpr int64_t kVocab = 50304;

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = static_cast<int32_t>(static_cast<int64_t>(philox_uniform(seed, 0, i) * static_cast<float>(vocab)) % vocab);
  return t;
}

int64_t distinct(const std::vector<int32_t>& t) { return static_cast<int64_t>(std::set<int32_t>(t.begin(), t.end()).size()); }

/// "8x1024x768 V50304 bf16".
std::string shape_str(int64_t B, int64_t T, int64_t C, const char* dtype) {
  return std::to_string(B) + "x" + std::to_string(T) + "x" + std::to_string(C) + " V" + std::to_string(kVocab) + " " +
         dtype;
}

double forward_bytes(int64_t B, int64_t T, int64_t C, double s) {
  const double n = static_cast<double>(B * T);
  return 4 * n + 2 * n * C * s + static_cast<double>(T * C) * s;
}
double backward_bytes(int64_t B, int64_t T, int64_t C, double s, int64_t u) {
  const double n = static_cast<double>(B * T);
  return 4 * n + n * C * s + 8.0 * u * C + 8.0 * T * C;
}

void bench_cpu(Context& ctx) {
  const int64_t B = ctx.quick() ? 1 : 4, T = 256, C = 768, n = B * T;
  const std::vector<int32_t> tok = random_tokens(n, kVocab, 1);
  std::vector<float> wte(kVocab * C), wpe(T * C), out(n * C), dwte(kVocab * C, 0.0f), dwpe(T * C, 0.0f);
  fill_uniform_cpu(wte.data(), kVocab * C, 2, 0, -0.1f, 0.1f);
  fill_uniform_cpu(wpe.data(), T * C, 3, 0, -0.1f, 0.1f);
  fill_uniform_cpu(out.data(), n * C, 4, 0, -1.0f, 1.0f);  // doubles as dout for the backward
  const std::string shape = shape_str(B, T, C, "f32");
  double ms = ctx.time_cpu(
      [&] { embedding_forward_cpu(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C, kVocab); });
  ctx.report(make_result("embedding_forward", "cpu", shape, ms, forward_bytes(B, T, C, 4)));
  ms = ctx.time_cpu(
      [&] { embedding_backward_cpu(dwte.data(), dwpe.data(), out.data(), tok.data(), B, T, C, kVocab); });
  ctx.report(make_result("embedding_backward", "cpu", shape, ms, backward_bytes(B, T, C, 4, distinct(tok))));
}

#if KILN_WITH_CUDA
template <typename Act>
void bench_cuda_shape(Context& ctx, int64_t B, int64_t T, int64_t C, const char* dtype) {
  const int64_t n = B * T;
  const double s = sizeof(Act);
  const std::vector<int32_t> tok = random_tokens(n, kVocab, 10 + n);
  util::DeviceArray<int32_t> dtok(n), status(1);
  dtok.upload(tok);
  util::DeviceArray<Act> wte(kVocab * C), wpe(T * C), out(n * C);
  util::DeviceArray<float> dwte(kVocab * C), dwpe(T * C);
  const size_t ws_bytes = embedding_backward_workspace_bytes(n, kVocab);
  util::DeviceArray<uint8_t> ws(ws_bytes);
  fill_uniform(wte.get(), kVocab * C, 11, 0, -0.1f, 0.1f, nullptr);
  fill_uniform(wpe.get(), T * C, 12, 0, -0.1f, 0.1f, nullptr);
  fill_constant(dwte.get(), 0.0f, kVocab * C, nullptr);
  fill_constant(dwpe.get(), 0.0f, T * C, nullptr);
  embedding_status_reset(status.get(), nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::string shape = shape_str(B, T, C, dtype);
  double ms = ctx.time_cuda([&](cudaStream_t st) {
    embedding_forward(out.get(), dtok.get(), wte.get(), wpe.get(), B, T, C, kVocab, status.get(), st);
  });
  ctx.report(make_result("embedding_forward", "cuda", shape, ms, forward_bytes(B, T, C, s)));
  // `out` (random embeddings) serves as dout.
  ms = ctx.time_cuda([&](cudaStream_t st) {
    embedding_backward(dwte.get(), dwpe.get(), out.get(), dtok.get(), B, T, C, kVocab, ws.get(), ws_bytes,
                       status.get(), st);
  });
  ctx.report(make_result("embedding_backward", "cuda", shape, ms, backward_bytes(B, T, C, s, distinct(tok))));
  // A benchmark that ran on bad ids would be measuring the wrong thing.
  embedding_check_status(status.get(), dtok.get(), kVocab, nullptr, "embedding benchmark");
}

void bench_cuda(Context& ctx) {
  bench_cuda_shape<float>(ctx, 8, 1024, 768, "f32");
  bench_cuda_shape<bf16>(ctx, 8, 1024, 768, "bf16");
  if (ctx.quick()) return;
  bench_cuda_shape<float>(ctx, 16, 1024, 4096, "f32");
  bench_cuda_shape<bf16>(ctx, 16, 1024, 4096, "bf16");
}
#endif

}  // namespace

KILN_BENCH(embedding, 31) {
  bench_cpu(ctx);
#if KILN_WITH_CUDA
  if (ctx.has_gpu()) bench_cuda(ctx);
#endif
}

}  // namespace kiln::bench
