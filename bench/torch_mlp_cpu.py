#!/usr/bin/env python3
"""PyTorch baseline for kiln's MLP training throughput on the CPU.

The same model, batch, optimizer and thread count as kiln's `mlp_train_cpu`
benchmark entry and configs/mlp_fashion.yaml: 784-256-128-10 ReLU MLP,
batch 128, AdamW (lr 1e-3, weight decay 0.01 on weights only), gradient
clipping at 1.0, softmax cross-entropy; inputs are random normal floats and
labels random classes, resident in memory, so both sides time the training
step and batch slicing only.

    python3 bench/torch_mlp_cpu.py --threads 2 --steps 400 [--json out.json]
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch * 64
    x = torch.randn(n, 784)
    y = torch.randint(0, 10, (n,))
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(i):
        s = (i * args.batch) % n
        xb, yb = x[s:s + args.batch], y[s:s + args.batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(20):  # warm-up
        step(i)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    dt = time.perf_counter() - t0
    result = {"name": "mlp_train_cpu", "backend": "torch-cpu", "threads": args.threads, "batch": args.batch,
              "torch": torch.__version__, "ms_per_step": 1e3 * dt / args.steps,
              "samples_per_s": args.batch * args.steps / dt}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
