// ViT training throughput: whole optimizer steps (forward, fused
// cross-entropy, backward, global grad norm, AdamW) of nn::Vit on random
// images, as the trainer runs them.
//
//   cpu  configs/vit_fashion.yaml's ViT (28x28x1, patch 4 → 49 tokens + class
//        token, width 64, 6 blocks, 4 heads, MLP 128), batch 128, fp32, at 1
//        and 2 threads of the CPU pool (threads=N in the shape string);
//        blocks of steps, the median of 3 blocks
//   gpu  the same model (head dim 16) at batch 512, fp32 and bf16; and
//        ViT-S/16 at 224x224x3
//        (width 384, 12 blocks, 6 heads, MLP 1536, 1000 classes), batch 128,
//        bf16 — a shape where MFU means something
//
// Reported: milliseconds per step and model FLOPs per step (B ·
// nn::Vit::train_flops_per_example), so TFLOP/s is model FLOP/s and
// frac_peak is MFU against the GEMM peak measured in the same run; a printed
// line adds images/s and, on the GPU, MFU against the datasheet's dense bf16
// peak (H100/H200 SXM: 989 TFLOP/s). PyTorch's side: bench/torch_vit.py
// (same models, shapes and optimizer; `bench` times the CPU step per
// PyTorch/OpenBLAS thread setting, bench/cpu_side_by_side.py alternates both).
#include <cstdio>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "nn/vit.h"
#include "runtime/blas.h"
#include "runtime/device.h"
#include "runtime/stream.h"

namespace kiln::bench {
namespace {

struct VitShape {
  int64_t H, W, C, patch, dim, depth, heads, hidden, classes, B;
};

// The Fashion-MNIST recipe's model (configs/vit_fashion.yaml).
constexpr VitShape kFashionCpu{28, 28, 1, 4, 64, 6, 4, 128, 10, 128};
constexpr VitShape kFashionGpu{28, 28, 1, 4, 64, 6, 4, 128, 10, 512};
constexpr VitShape kVitS16{224, 224, 3, 16, 384, 12, 6, 1536, 1000, 128};

void run_shape(Context& ctx, const VitShape& s, Device dev, DType compute, int repeats, int steps_per_block) {
  nn::VitOptions o;
  o.image_h = s.H;
  o.image_w = s.W;
  o.channels = s.C;
  o.patch = s.patch;
  o.dim = s.dim;
  o.depth = s.depth;
  o.heads = s.heads;
  o.mlp_hidden = s.hidden;
  o.classes = s.classes;
  o.seed = 1;
  auto rng = std::make_shared<nn::RngStream>();
  nn::Vit model(o, rng);
  model.to(dev, DType::f32, compute);
  std::vector<nn::Parameter*> params = model.parameters();
  nn::OptimizerOptions oo;
  oo.weight_decay = 0.05;
  nn::Optimizer opt(params, oo);
  nn::CrossEntropyLoss ce;
  Tensor x = Tensor::empty({s.B, s.H, s.W, s.C}, DType::f32, Device::cpu(), "images");
  x.uniform_(3, 0, -1.0f, 1.0f);
  if (dev.is_cuda()) x = x.to(dev);
  if (compute != DType::f32) x = x.cast(compute);
  std::vector<int32_t> y(static_cast<size_t>(s.B));
  for (int64_t i = 0; i < s.B; ++i) y[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % s.classes);
  double loss = 0;
  auto step = [&] {
    model.zero_grad();
    Tensor logits = model.forward(x);
    nn::LossSum l = ce.forward_backward(logits, y, s.classes, 1.0f);
    model.backward(logits);
    opt.step(1e-3, nn::clip_scale(nn::grad_norm(params), 1.0));
    loss = l.sum / static_cast<double>(l.count);
    synchronize_device(dev);  // every stream of the GPU (a default Stream would wait for nothing)
  };
  step();  // warm-up: allocator caches, cuBLASLt heuristics
  step();
  const double ms = ctx.time_cpu(
                        [&] {
                          for (int i = 0; i < steps_per_block; ++i) step();
                        },
                        repeats) /
                    steps_per_block;
  const double flops = static_cast<double>(s.B) * model.train_flops_per_example();
  const char* dt = compute == DType::bf16 ? "bf16" : "f32";
  Result r;
  r.name = "vit_train_step";
  r.backend = dev.is_cuda() ? "cuda" : "cpu";
  r.shape = "B" + std::to_string(s.B) + " " + std::to_string(s.H) + "x" + std::to_string(s.W) + "x" +
            std::to_string(s.C) + " p" + std::to_string(s.patch) + " d" + std::to_string(s.dim) + " L" +
            std::to_string(s.depth) + " H" + std::to_string(s.heads) + " mlp" + std::to_string(s.hidden) + " " + dt;
  if (dev.is_cpu()) r.shape += " threads=" + std::to_string(cpu_threads());
  r.ms = ms;
  r.flops = flops;
  ctx.report(r);
  std::printf("  vit_train_step %s %s: %.0f images/s, %.1f model GFLOP/s", r.backend.c_str(), r.shape.c_str(),
              static_cast<double>(s.B) / (ms / 1e3), flops / (ms / 1e3) / 1e9);
  if (dev.is_cuda()) std::printf(", MFU %.1f%% of 989 TFLOP/s", 100.0 * flops / (ms / 1e3) / 989e12);
  std::printf(", loss %.3f, %lld parameters\n", loss, static_cast<long long>(model.num_parameters()));
}

}  // namespace

KILN_BENCH(vit_train, 61) {
  {
    // The CPU step at 1 and 2 threads of the pool (restored afterwards).
    const int before = cpu_threads();
    struct Restore {
      int n;
      ~Restore() { set_cpu_threads(n); }
    } restore{before};
    for (int threads : {1, 2}) {
      set_cpu_threads(threads);
      run_shape(ctx, kFashionCpu, Device::cpu(), DType::f32, ctx.quick() ? 1 : 3, ctx.quick() ? 2 : 8);
    }
  }
  if (!ctx.has_gpu()) {
    std::printf("  vit_train: no GPU, GPU entries skipped\n");
    return;
  }
  run_shape(ctx, kFashionGpu, Device::cuda(0), DType::f32, 10, 1);
  run_shape(ctx, kFashionGpu, Device::cuda(0), DType::bf16, 10, 1);
  if (!ctx.quick()) run_shape(ctx, kVitS16, Device::cuda(0), DType::bf16, 10, 1);
}

}  // namespace kiln::bench
