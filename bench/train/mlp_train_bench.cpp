// MLP training throughput on the CPU: the same model, batch, optimizer and
// thread counts as bench/torch_mlp_cpu.py (the PyTorch side): 784-256-128-10
// ReLU MLP, batch 128, AdamW with weight decay on weights only, clipping at
// 1.0, softmax cross-entropy; random inputs resident in memory, so both sides
// time the training step and the batch slicing only. Runs at 1 and 2
// threads of the CPU pool (threads=N in the shape string); blocks of 400
// steps, median of 3 (bench/cpu_side_by_side.sh: both sides, best of three).
//
// One step is ≈ 3·2·(784·256 + 256·128 + 128·10)·128 - (first layer's dx)
// ≈ 0.15 GFLOP, reported as GFLOP/s against the OpenBLAS sgemm peak measured
// in the same run.
#include <cstdio>
#include <memory>

#include "bench/harness.h"
#include "nn/loss.h"
#include "nn/mlp.h"
#include "nn/optimizer.h"
#include "runtime/blas.h"

namespace kiln::bench {
namespace {

void run_mlp(Context& ctx) {
  const int64_t batch = 128, pool = batch * 64;
  nn::MlpOptions o;
  o.in = 784;
  o.hidden = {256, 128};
  o.out = 10;
  o.seed = 1;
  auto rng = std::make_shared<nn::RngStream>();
  nn::Mlp model(o, rng);
  model.to(Device::cpu());
  std::vector<nn::Parameter*> params = model.parameters();
  nn::OptimizerOptions oo;
  oo.weight_decay = 0.01;
  nn::Optimizer opt(params, oo);
  nn::CrossEntropyLoss ce;

  Tensor x = Tensor::empty({pool, 784}, DType::f32, Device::cpu(), "x");
  x.normal_(3, 0);
  std::vector<int32_t> y(static_cast<size_t>(pool));
  for (int64_t i = 0; i < pool; ++i) y[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % 10);

  int64_t it = 0;
  auto step = [&] {
    const int64_t start = (it++ % 64) * batch;
    Tensor xb = x.view(start * 784, {batch, 784});
    std::vector<int32_t> yb(y.begin() + start, y.begin() + start + batch);
    model.zero_grad();
    Tensor logits = model.forward(xb);
    ce.forward_backward(logits, yb, 10, 1.0f);
    model.backward(logits);
    opt.step(1e-3, nn::clip_scale(nn::grad_norm(params), 1.0));
  };
  for (int i = 0; i < 20; ++i) step();  // warm-up
  const int steps = ctx.quick() ? 50 : 400;
  const double ms = ctx.time_cpu(
      [&] {
        for (int i = 0; i < steps; ++i) step();
      },
      3) / steps;
  Result r;
  r.name = "mlp_train_cpu";
  r.backend = "cpu";
  r.shape = "784-256-128-10 b128 threads=" + std::to_string(cpu_threads());
  r.ms = ms;
  r.flops = model.train_flops_per_example() * static_cast<double>(batch);
  ctx.report(r);
  std::printf("  mlp_train_cpu %s: %.0f samples/s\n", r.shape.c_str(), batch * 1000.0 / ms);
}

}  // namespace

KILN_BENCH(mlp_train_cpu, 50) {
  const int before = cpu_threads();
  struct Restore {
    int n;
    ~Restore() { set_cpu_threads(n); }
  } restore{before};
  for (int threads : {1, 2}) {
    set_cpu_threads(threads);
    run_mlp(ctx);
  }
}

}  // namespace kiln::bench
