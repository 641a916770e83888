// GPT training throughput: whole optimizer steps (forward, fused
// cross-entropy, backward, global grad norm, AdamW) of nn::Gpt, as the
// trainer runs them, on random tokens.
//
//   gpu  GPT-2 124M (12 layers, 12 heads, width 768, vocab 50257 -> 50304),
//        T = 1024, bf16 activations, fp32 master weights and AdamW state;
//        B = 16 and 32 sequences per step (B = 8 with --quick)
//   cpu  configs/gpt_fortunes.yaml's GPT (4 layers, 6 heads, width 192, vocab
//        4096, T = 128, B = 8), fp32, at 1 and 2 threads of the CPU pool
//        (the shape string ends in threads=N); AdamW betas 0.9/0.95, weight
//        decay 0.1 on weights, clipping at 1.0, as bench/torch_gpt.py --cpu
//
// Reported: milliseconds per step, model FLOPs per step
//   B · T · (6·N + 12·L·H·Q·T)   (PaLM appendix B; nn::Gpt::train_flops_per_token)
// so the TFLOP/s column is model FLOP/s and frac_peak is MFU against the GEMM
// peak measured in the same run; a printed line adds tokens/s and MFU against
// the datasheet's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s), the figure
// the trainer logs. Steps are timed on the host clock around a device
// synchronize (synchronize_device: the step's work on every stream); on the
// CPU, blocks of 10 steps after two warm-up steps, the median of 3 blocks per
// thread count (bench/torch_gpt.py --cpu times PyTorch the same way).
// PyTorch's side of the comparison is bench/torch_gpt.py (same shapes);
// bench/cpu_side_by_side.sh runs both on the CPU, alternating, best of three.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "nn/gpt.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "runtime/blas.h"
#include "runtime/device.h"
#include "runtime/stream.h"

#if KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln::bench {
namespace {

struct GptShape {
  int64_t V, T, L, H, C, B;
};

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  Tensor u = Tensor::empty({n}, DType::f32, Device::cpu());
  u.uniform_(seed, 0, 0.0f, 1.0f);
  std::vector<float> f = u.to_vector();
  std::vector<int32_t> ids(f.size());
  for (size_t i = 0; i < f.size(); ++i) ids[i] = std::min<int32_t>(static_cast<int32_t>(f[i] * V), V - 1);
  return ids;
}

/// steps_per_block > 1 (the CPU entry): each timed repeat is that many steps,
/// and the reported time is per step.
void run_shape(Context& ctx, const GptShape& s, Device dev, DType compute, int repeats, int steps_per_block = 1) {
  nn::GptOptions o;
  o.vocab_size = s.V;
  o.block_size = s.T;
  o.n_layer = s.L;
  o.n_head = s.H;
  o.n_embd = s.C;
  o.seed = 1;
  auto rng = std::make_shared<nn::RngStream>();
  nn::Gpt model(o, rng);
  model.to(dev, DType::f32, compute);
  std::vector<nn::Parameter*> params = model.parameters();
  nn::OptimizerOptions oo;
  oo.weight_decay = 0.1;
  oo.beta2 = 0.95;
  nn::Optimizer opt(params, oo);
  nn::CrossEntropyLoss ce;
  const std::vector<int32_t> all = random_tokens(s.B * (s.T + 1), s.V, 7);
  std::vector<int32_t> x, y;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t) {
      x.push_back(all[static_cast<size_t>(b * (s.T + 1) + t)]);
      y.push_back(all[static_cast<size_t>(b * (s.T + 1) + t + 1)]);
    }
  Tensor tokens = Tensor::from_vector(x, {s.B, s.T}, dev);
  double loss = 0;
  auto step = [&] {
    model.zero_grad();
    Tensor logits = model.forward(tokens);
    nn::LossSum l = ce.forward_backward(logits, y, s.V, 1.0f);
    model.backward(logits);
    opt.step(3e-4, nn::clip_scale(nn::grad_norm(params), 1.0));
    loss = l.sum / static_cast<double>(l.count);
  };
  auto synced_step = [&] {
    step();
    synchronize_device(dev);  // every stream of the GPU (a default Stream would wait for nothing)
  };
  synced_step();  // warm-up: allocator caches, cuBLASLt heuristics
  synced_step();
  const double ms = ctx.time_cpu(
                        [&] {
                          for (int i = 0; i < steps_per_block; ++i) synced_step();
                        },
                        repeats) /
                    steps_per_block;
  const double n_tokens = static_cast<double>(s.B * s.T);
  const double flops = n_tokens * model.train_flops_per_token(s.T);
  const char* dt = compute == DType::bf16 ? "bf16" : "f32";
  Result r;
  r.name = "gpt_train_step";
  r.backend = dev.is_cuda() ? "cuda" : "cpu";
  r.shape = "B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " L" + std::to_string(s.L) + " C" +
            std::to_string(s.C) + " V" + std::to_string(s.V) + " " + dt;
  if (dev.is_cpu()) r.shape += " threads=" + std::to_string(cpu_threads());
  r.ms = ms;
  r.flops = flops;
  ctx.report(r);
  const double tok_s = n_tokens / (ms / 1e3);
  const double mfu = dev.is_cuda() ? flops / (ms / 1e3) / 989e12 : 0.0;
  std::printf("  gpt_train_step %s %s: %.0f tokens/s, %.1f model GFLOP/s", r.backend.c_str(), r.shape.c_str(), tok_s,
              flops / (ms / 1e3) / 1e9);
  if (dev.is_cuda()) std::printf(", MFU %.1f%% of 989 TFLOP/s", 100.0 * mfu);
  std::printf(", loss %.3f, %lld parameters\n", loss, static_cast<long long>(model.num_parameters()));
}

}  // namespace

KILN_BENCH(gpt_train, 60) {
  {
    // The CPU step at 1 and 2 threads of the pool (restored afterwards).
    const int before = cpu_threads();
    struct Restore {
      int n;
      ~Restore() { set_cpu_threads(n); }
    } restore{before};
    for (int threads : {1, 2}) {
      set_cpu_threads(threads);
      run_shape(ctx, {4096, 128, 4, 6, 192, 8}, Device::cpu(), DType::f32, ctx.quick() ? 1 : 3, ctx.quick() ? 2 : 10);
    }
  }
  if (!ctx.has_gpu()) {
    std::printf("  gpt_train: no GPU, GPT-2 124M entries skipped\n");
    return;
  }
  const std::vector<int64_t> batches = ctx.quick() ? std::vector<int64_t>{8} : std::vector<int64_t>{16, 32};
  for (int64_t B : batches) run_shape(ctx, {50257, 1024, 12, 12, 768, B}, Device::cuda(0), DType::bf16, 10);
}

}  // namespace kiln::bench
