#!/usr/bin/env python3
"""PyTorch counterpart of kiln's ViT (nn/vit.h): the same model, init and
optimizer step, written independently in plain PyTorch.

Two uses:

  * throughput, the other side of kiln-bench's `vit_train_step` rows (the
    `vit_train` entry of bench/torch_bench.py calls step_time() here, with the
    same model, batch and optimizer):

        /usr/bin/python3 bench/torch_vit.py bench [--settings 1:1 2:2 1:2] [--json t.json]

    Each setting TORCH:BLAS runs in a fresh process with
    torch.set_num_threads(TORCH), OPENBLAS_NUM_THREADS=BLAS (Debian's PyTorch
    multiplies through OpenBLAS, whose threads torch.set_num_threads leaves at
    every core) and OMP_WAIT_POLICY=PASSIVE (its OpenMP threads otherwise
    spin against OpenBLAS's). A setting counts under the cores it uses,
    max(TORCH, BLAS), so PyTorch's best at two cores is the better of 2:2 and
    1:2. Timing: blocks of --steps steps after 3 warm-up steps, the median of
    --repeats blocks, as kiln-bench's entry. --json writes torch_bench.py's
    format, keyed like kiln's rows (kiln-bench --compare,
    bench/cpu_side_by_side.py).

  * training on Fashion-MNIST with the recipe's settings (configs/vit_*.yaml),
    an independent reference for the accuracy kiln reaches:

        OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/torch_vit.py train --epochs 30 --threads 2

The model (kiln's nn::Vit): NHWC images cut into p x p patches in (row,
column, channel) order and projected by a Linear (= Conv2d(C, dim, p, stride
p)); a learned class token (cls pooling) or none (mean pooling); learned
positions; pre-LN blocks (LayerNorm eps 1e-5, bidirectional attention with a
fused qkv projection, GELU tanh MLP); the final LayerNorm after pooling; a
linear head. Init: truncated normal (std 0.02, cut at +-2 std) for block and
head weights and positions, N(0, 1e-6^2) for the class token, PyTorch's
default for the patch projection, zero biases. Runs on Debian's PyTorch 1.13
(CPU) and PyTorch 2.x on the GPU (bf16 autocast, SDPA when present).
"""
import argparse
import gzip
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def trunc_normal_(t, std):
    """N(0, std^2) cut at +-2 std (resampled, as kiln's init; not timm's +-2 absolute)."""
    with torch.no_grad():
        t.normal_(0.0, 1.0)
        while True:
            bad = t.abs() > 2.0
            n = int(bad.sum())
            if n == 0:
                break
            t[bad] = torch.randn(n, dtype=t.dtype, device=t.device)
        t.mul_(std)
    return t


class Attention(nn.Module):
    def __init__(self, dim, heads, bias, dropout):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v)
        else:  # PyTorch 1.13
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            o = s.softmax(-1) @ v
        return self.drop(self.c_proj(o.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, bias, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn = Attention(dim, heads, bias, dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.c_fc = nn.Linear(dim, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))


class Vit(nn.Module):
    def __init__(self, H=28, W=28, C=1, patch=4, dim=64, depth=6, heads=4, hidden=128, classes=10, pool="cls",
                 dropout=0.0, bias=True):
        super().__init__()
        self.p, self.pool = patch, pool
        self.N = (H // patch) * (W // patch)
        self.proj = nn.Linear(patch * patch * C, dim)  # PyTorch's default init, as kiln (and timm's conv)
        P = 1 if pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if P else None
        self.pos_embed = nn.Parameter(torch.zeros(1, P + self.N, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden, bias, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, classes)
        trunc_normal_(self.pos_embed, 0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in list(self.blocks.modules()) + [self.head]:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def patches(self, x):
        """(B, H, W, C) -> (B, N, p*p*C), (row, column, channel) inside a patch (kernels/patch.h)."""
        B, H, W, C = x.shape
        p = self.p
        return x.view(B, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5).reshape(B, self.N, p * p * C)

    def forward(self, x):
        e = self.proj(self.patches(x))
        if self.cls_token is not None:
            e = torch.cat([self.cls_token.expand(e.shape[0], -1, -1), e], dim=1)
        r = self.pos_drop(e + self.pos_embed)
        for b in self.blocks:
            r = b(r)
        z = r[:, 0] if self.pool == "cls" else r.mean(1)
        return self.head(self.norm(z))


def param_groups(model, weight_decay):
    """Weight decay on Linear weights only (kiln: no decay on biases, norms, class token, positions)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        is_linear_weight = p.dim() == 2 and name.endswith("weight")
        (decay if is_linear_weight else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def model_flops(m):
    """kiln's nn::Vit::train_flops_per_example for this model."""
    T = m.N + (1 if m.cls_token is not None else 0)
    b = m.blocks[0]
    C, hidden, L = b.ln_1.normalized_shape[0], b.c_fc.out_features, len(m.blocks)
    K, classes = m.proj.in_features, m.head.out_features
    return 6 * T * L * (4 * C * C + 2 * C * hidden) + 12 * L * T * T * C + 4 * m.N * K * C + 6 * C * classes


# --- throughput ----------------------------------------------------------------------

def step_time(shape, device, dtype, steps, warmup=3, repeats=1):
    """Milliseconds per training step (forward, cross-entropy, backward, clip 1.0, AdamW; the median over
    `repeats` blocks of `steps` steps) and FLOPs per step."""
    H, W, C, patch, dim, depth, heads, hidden, classes, B = shape
    torch.manual_seed(1)
    m = Vit(H, W, C, patch, dim, depth, heads, hidden, classes).to(device)
    opt = torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3)
    x = torch.rand(B, H, W, C, device=device) * 2 - 1
    y = torch.arange(B, device=device) * 7919 % classes
    amp = dtype == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    blocks = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        blocks.append(1e3 * (time.perf_counter() - t0) / steps)
    return statistics.median(blocks), B * model_flops(m)


# --- Fashion-MNIST training -----------------------------------------------------------

def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).view(n, rows, cols, 1)
    return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).long()


def augment(x, pad, flip, gen):
    """Random crop with zero padding and horizontal flip, per image (kernels/augment.h's transform)."""
    B, H, W, C = x.shape
    if pad:
        xp = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        iy = (oy[:, None] + torch.arange(H)[None, :])[:, :, None].expand(B, H, W)
        ix = (ox[:, None] + torch.arange(W)[None, :])[:, None, :].expand(B, H, W)
        x = xp[torch.arange(B)[:, None, None], iy, ix]
    if flip:
        f = torch.rand(B, generator=gen) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(2), x)
    return x


def train(args):
    d = args.data
    xtr, ytr = read_idx(f"{d}/train-images-idx3-ubyte.gz"), read_idx(f"{d}/train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(f"{d}/t10k-images-idx3-ubyte.gz"), read_idx(f"{d}/t10k-labels-idx1-ubyte.gz")
    norm = lambda u: (u.float() / 255.0 - args.mean) / args.std
    xtr, xte = norm(xtr), norm(xte)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    m = Vit(28, 28, 1, args.patch, args.dim, args.depth, args.heads, int(args.mlp_ratio * args.dim), 10, args.pool,
            args.dropout)
    opt = torch.optim.AdamW(param_groups(m, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(xtr) // args.batch
    total = steps_per_epoch * args.epochs
    warm = args.warmup_epochs * steps_per_epoch

    def lr_at(s):
        if s < warm:
            return args.lr * (s + 1) / warm
        q = (s - warm) / max(1, total - warm)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * q)))

    def evaluate():
        m.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xte), 1000):
                correct += int((m(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum())
        m.train()
        return correct / len(xte)

    t0, step, log = time.perf_counter(), 0, []
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x = augment(xtr[idx], args.pad, args.flip, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(m(x), ytr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), args.grad_clip)
            opt.step()
            step += 1
        acc = evaluate()
        row = {"epoch": epoch + 1, "test_acc": acc, "loss": float(loss), "wall_s": time.perf_counter() - t0}
        log.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "epochs": log, "torch": torch.__version__}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time training steps of the kiln-bench CPU shape per thread setting")
    b.add_argument("--settings", nargs="+", default=["1:1", "2:2", "1:2"],
                   help="TORCH:BLAS thread settings, each in its own process")
    b.add_argument("--steps", type=int, default=8, help="steps per timed block")
    b.add_argument("--repeats", type=int, default=3, help="timed blocks (the median counts)")
    b.add_argument("--wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY for the runs (PASSIVE: PyTorch's best)")
    b.add_argument("--json")
    b.add_argument("--one", help=argparse.SUPPRESS)  # TORCH:BLAS, in the child process
    t = sub.add_parser("train", help="train on Fashion-MNIST and report test accuracy per epoch")
    t.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--patch", type=int, default=4)
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--depth", type=int, default=6)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--mlp-ratio", type=float, default=2.0)
    t.add_argument("--pool", default="cls", choices=["cls", "mean"])
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.01)
    t.add_argument("--warmup-epochs", type=int, default=2)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--pad", type=int, default=2)
    t.add_argument("--flip", type=int, default=1)
    t.add_argument("--mean", type=float, default=0.2860)
    t.add_argument("--std", type=float, default=0.3530)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json")
    args = ap.parse_args()
    if args.cmd == "train":
        torch.set_num_threads(args.threads)
        train(args)
        return 0
    return bench(args)


CPU_SHAPE = (28, 28, 1, 4, 64, 6, 4, 128, 10, 128)  # bench/train/vit_train_bench.cpp kFashionCpu


def bench(args):
    """The CPU step per TORCH:BLAS setting, each in a fresh process (the thread counts are fixed at start-up)."""
    if args.one:
        threads, blas_threads = (int(v) for v in args.one.split(":"))
        torch.set_num_threads(threads)
        ms, flops = step_time(CPU_SHAPE, "cpu", "f32", args.steps, warmup=3, repeats=args.repeats)
        H, W, C, p, d, L, heads, hidden, classes, B = CPU_SHAPE
        cores = max(threads, blas_threads)
        print(json.dumps({"name": "vit_train_step", "backend": "cpu",
                          "shape": f"B{B} {H}x{W}x{C} p{p} d{d} L{L} H{heads} mlp{hidden} f32 threads={cores}",
                          "ms": ms, "flops": flops,
                          "impl": f"torch {threads} + OpenBLAS {blas_threads} threads, "
                                  f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
                          "threads": cores, "torch_threads": threads, "blas_threads": blas_threads,
                          "images_per_s": B * 1e3 / ms, "model_gflops": flops / ms / 1e6, "torch": torch.__version__}))
        return 0
    results = []
    for setting in args.settings:
        t, b = (int(v) for v in setting.split(":"))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(b), OMP_NUM_THREADS=str(t), OMP_WAIT_POLICY=args.wait_policy)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "bench", "--one", setting, "--steps",
                              str(args.steps), "--repeats", str(args.repeats)],
                             env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"torch_vit {r['shape']} ({r['impl']}): {r['ms']:.1f} ms/step, {r['images_per_s']:.0f} images/s, "
              f"{r['model_gflops']:.1f} model GFLOP/s", flush=True)
        results.append(r)
    if args.json:
        doc = {"device": "cpu", "torch": results[0]["torch"] if results else "", "results": results, "failures": []}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
