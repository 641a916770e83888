#!/usr/bin/env python3
"""PyTorch baseline for kiln's MLP training throughput on the CPU.

The same model, batch, optimizer and thread counts as kiln's `mlp_train_cpu`
benchmark entry (bench/train/mlp_train_bench.cpp) and configs/mlp_fashion.yaml:
784-256-128-10 ReLU MLP, batch 128, AdamW (lr 1e-3, weight decay 0.01 on
weights only), gradient clipping at 1.0, softmax cross-entropy; inputs are
random normal floats and labels random classes, resident in memory, so both
sides time the training step and batch slicing only.

    /usr/bin/python3 bench/torch_mlp_cpu.py [--settings 1:1 2:2 1:2] [--steps 400] [--json out.json]

Each setting TORCH:BLAS runs in a fresh process with torch.set_num_threads
(TORCH), OPENBLAS_NUM_THREADS=BLAS (Debian's PyTorch multiplies through
OpenBLAS, whose thread count torch.set_num_threads does not change: without
it a "one-thread" PyTorch still runs its GEMMs on every core) and
OMP_WAIT_POLICY=PASSIVE (without it PyTorch's OpenMP threads spin against
OpenBLAS's and its two-thread step is several times slower; --wait-policy
changes it). A setting is reported under the cores it uses, max(TORCH, BLAS):
the defaults are one core (1:1) and two cores two ways (2:2, and 1:2 = one
PyTorch thread with OpenBLAS on two), so "PyTorch's best at two threads" is
the better of those two. Timing: blocks of --steps steps after 20 warm-up
steps, the median of --repeats blocks, as kiln's entry.
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

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = batch * 64
    x = torch.randn(n, 784)
    y = torch.randint(0, 10, (n,))
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    # The default (for-loop) AdamW: faster here than foreach=True for these few tensors.
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(i):
        s = (i * batch) % n
        xb, yb = x[s:s + batch], y[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(20):  # warm-up
        step(i)
    blocks = []
    it = 0
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
    ap.add_argument("--steps", type=int, default=400)
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
        print(json.dumps({"name": "mlp_train_cpu", "backend": "cpu",
                          "shape": f"784-256-128-10 b{args.batch} threads={cores}", "ms": 1e3 * s,
                          "impl": f"torch {torch_threads} + OpenBLAS {blas_threads} threads, "
                                  f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
                          "threads": cores, "torch_threads": torch_threads, "blas_threads": blas_threads,
                          "samples_per_s": args.batch / s, "torch": version}))
        return 0

    results = []
    for setting in args.settings:
        torch_threads, blas_threads = (int(v) for v in setting.split(":"))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads), OMP_NUM_THREADS=str(torch_threads),
                   OMP_WAIT_POLICY=args.wait_policy)
        out = subprocess.run([sys.executable, __file__, "--one", setting, "--steps", str(args.steps), "--repeats",
                              str(args.repeats), "--batch", str(args.batch)],
                             env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"torch_mlp_cpu {r['shape']} ({r['impl']}): {r['ms']:.3f} ms/step, {r['samples_per_s']:.0f} samples/s",
              flush=True)
        results.append(r)
    if args.json:
        doc = {"device": "cpu", "torch": results[0]["torch"] if results else "", "results": results, "failures": []}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
