// CNN training throughput on the CPU: whole optimizer steps of
// configs/cnn_fashion.yaml's model as the trainer runs them (forward in train
// mode, label-smoothed cross-entropy, backward, global grad norm + clipping,
// SGD with Nesterov momentum and weight decay on conv/Linear weights), on
// random NHWC images resident in memory, at 1 and 2 threads of the CPU pool
// (threads=N in the shape string); blocks of steps, the median of 3 blocks.
// The trainer's augmentation kernel (a gather + crop + flip, ~0.1 ms per
// batch) is not part of the step timed here, nor of PyTorch's.
//
//   28x28x1 -> [conv3x3 -> BN -> ReLU -> maxpool 2] x 3 stages of 32, 64, 128
//   channels (28 -> 14 -> 7 -> 3) -> flatten 1152 -> Linear 128 -> ReLU ->
//   dropout 0.1 -> Linear 10; batch 128, fp32
//
// PyTorch's side: bench/torch_cnn.py (the same model in channels_last, the
// same optimizer, loss and batch; one fresh process per PyTorch/OpenBLAS
// thread setting). Reported: ms per step and model FLOPs per step (B ·
// nn::Cnn::train_flops_per_example), plus images/s.
#include <cstdio>
#include <memory>
#include <vector>

#include "bench/harness.h"
#include "nn/cnn.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "runtime/blas.h"

namespace kiln::bench {
namespace {

void run_cnn(Context& ctx) {
  const int64_t B = 128;
  nn::CnnOptions o;  // configs/cnn_fashion.yaml's model
  o.in_channels = 1;
  o.height = o.width = 28;
  o.classes = 10;
  o.channels = {32, 64, 128};
  o.blocks = {1, 1, 1};
  o.kernel = 3;
  o.pool = nn::PoolKind::max;
  o.global_pool = false;
  o.hidden = 128;
  o.dropout = 0.1f;
  o.seed = 1;
  auto rng = std::make_shared<nn::RngStream>();
  rng->seed = 1;
  nn::Cnn model(o, rng);
  model.to(Device::cpu());
  model.train();
  std::vector<nn::Parameter*> params = model.parameters();
  nn::OptimizerOptions oo;
  oo.kind = nn::OptimizerKind::sgd;
  oo.momentum = 0.9;
  oo.nesterov = true;
  oo.weight_decay = 5e-4;
  oo.no_decay_on_bias_and_norm = true;
  nn::Optimizer opt(params, oo);
  nn::CrossEntropyLoss ce(0.1f);
  // A pool of 8 batches, cycled, so the step does not reuse one cached input.
  const int64_t pool = 8;
  Tensor x = Tensor::empty({pool * B, 28, 28, 1}, DType::f32, Device::cpu(), "images");  // (N, H, W, C)
  x.normal_(3, 0);
  std::vector<int32_t> y(static_cast<size_t>(pool * B));
  for (int64_t i = 0; i < pool * B; ++i) y[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % 10);
  int64_t it = 0;
  double loss = 0;
  auto step = [&] {
    const int64_t start = (it++ % pool) * B;
    Tensor xb = x.view(start * 784, {B, 28, 28, 1});
    std::vector<int32_t> yb(y.begin() + start, y.begin() + start + B);
    model.zero_grad();
    Tensor logits = model.forward(xb);
    const nn::LossSum l = ce.forward_backward(logits, yb, 10, 1.0f);  // mean over the batch
    model.backward(logits);
    opt.step(0.05, nn::clip_scale(nn::grad_norm(params), 1.0));
    loss = l.sum / static_cast<double>(l.count);
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up: im2col buffers, allocator caches
  const int steps = ctx.quick() ? 3 : 30;
  const double ms = ctx.time_cpu(
                        [&] {
                          for (int i = 0; i < steps; ++i) step();
                        },
                        3) /
                    steps;
  Result r;
  r.name = "cnn_train_step";
  r.backend = "cpu";
  r.shape = "B128 28x28x1 c32-64-128 h128 f32 threads=" + std::to_string(cpu_threads());
  r.ms = ms;
  r.flops = model.train_flops_per_example() * static_cast<double>(B);
  ctx.report(r);
  std::printf("  cnn_train_step %s: %.0f images/s, %.1f model GFLOP/s, loss %.3f\n", r.shape.c_str(),
              static_cast<double>(B) * 1e3 / ms, r.flops / ms / 1e6, loss);
}

}  // namespace

KILN_BENCH(cnn_train, 62) {
  const int before = cpu_threads();
  struct Restore {
    int n;
    ~Restore() { set_cpu_threads(n); }
  } restore{before};
  for (int threads : {1, 2}) {
    set_cpu_threads(threads);
    run_cnn(ctx);
  }
}

}  // namespace kiln::bench
