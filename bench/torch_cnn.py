#!/usr/bin/env python3
"""PyTorch baseline for kiln's CNN training step on the CPU.

The same model, batch, loss, optimizer and thread counts as kiln's
`cnn_train` benchmark entry (bench/train/cnn_train_bench.cpp), i.e.
configs/cnn_fashion.yaml's model:

    28x28x1 -> Conv2d 3x3 32 (no bias) -> BatchNorm2d -> ReLU -> MaxPool 2
            -> Conv2d 3x3 64 (no bias) -> BatchNorm2d -> ReLU -> MaxPool 2
            -> Conv2d 3x3 128 (no bias) -> BatchNorm2d -> ReLU -> MaxPool 2
            -> Flatten 1152 -> Linear 128 -> ReLU -> Dropout 0.1 -> Linear 10

in train mode, channels_last (NHWC, kiln's layout) fp32, batch 128;
CrossEntropyLoss(label_smoothing=0.1); SGD lr 0.05, momentum 0.9, Nesterov,
weight decay 5e-4 on conv/Linear weights only; gradient clipping at 1.0.
Inputs are random normal images and random labels resident in memory (a
pool of 8 batches, cycled), so both sides time the training step only.

    /usr/bin/python3 bench/torch_cnn.py [--settings 1:1 2:2 1:2] [--steps 30] [--json out.json]

Each setting TORCH:BLAS runs in a fresh process with torch.set_num_threads
(TORCH), OPENBLAS_NUM_THREADS=BLAS and OMP_WAIT_POLICY=PASSIVE (see
bench/torch_mlp_cpu.py for why each is needed); a setting is reported under
the cores it uses, max(TORCH, BLAS). Timing: blocks of --steps steps after 3
warm-up steps, the median of --repeats blocks, as kiln's entry.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def run_one(threads, steps, repeats, batch):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    model = model.to(memory_format=torch.channels_last).train()
    pool = 8
    x = torch.randn(pool * batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (pool * batch,))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(i):
        s = (i % pool) * batch
        xb, yb = x[s:s + batch], y[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(3):  # warm-up
        step(i)
    blocks, it = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step(it)
            it += 1
        blocks.append((time.perf_counter() - t0) / steps)
    return statistics.median(blocks), torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["1:1", "2:2", "1:2"],
                    help="TORCH:BLAS thread settings, each in its own process")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY for the runs (PASSIVE: PyTorch's best)")
    ap.add_argument("--json", help="write the results here (bench/torch_bench.py's format, for kiln-bench --compare)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # TORCH:BLAS, in the child process
    args = ap.parse_args()

    if args.one:
        torch_threads, blas_threads = (int(v) for v in args.one.split(":"))
        s, version = run_one(torch_threads, args.steps, args.repeats, args.batch)
        cores = max(torch_threads, blas_threads)
        print(json.dumps({"name": "cnn_train_step", "backend": "cpu",
                          "shape": f"B{args.batch} 28x28x1 c32-64-128 h128 f32 threads={cores}", "ms": 1e3 * s,
                          "impl": f"torch {torch_threads} + OpenBLAS {blas_threads} threads, channels_last, "
                                  f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
                          "threads": cores, "torch_threads": torch_threads, "blas_threads": blas_threads,
                          "images_per_s": args.batch / s, "torch": version}))
        return 0

    results = []
    for setting in args.settings:
        torch_threads, blas_threads = (int(v) for v in setting.split(":"))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads), OMP_NUM_THREADS=str(torch_threads),
                   OMP_WAIT_POLICY=args.wait_policy)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", setting, "--steps", str(args.steps),
                              "--repeats", str(args.repeats), "--batch", str(args.batch)],
                             env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"torch_cnn {r['shape']} ({r['impl']}): {r['ms']:.2f} ms/step, {r['images_per_s']:.0f} images/s",
              flush=True)
        results.append(r)
    if args.json:
        doc = {"device": "cpu", "torch": results[0]["torch"] if results else "", "results": results, "failures": []}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
