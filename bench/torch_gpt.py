#!/usr/bin/env python3
"""PyTorch side of kiln's GPT training benchmark (bench/train/gpt_train_bench.cpp).

A GPT-2 of the same shape and step as kiln's nn::Gpt, written the way fast
PyTorch GPT-2 trainers are (nanoGPT, llm.c's train_gpt2.py): one fused QKV
Linear, F.scaled_dot_product_attention(is_causal=True) (flash attention),
tanh-GELU MLP, pre-LN blocks, LM head tied to wte, vocabulary padded to 50304,
bf16 autocast with fp32 master weights, fused AdamW (weight decay on 2-D
weights only), clipping at 1.0, and the whole model under torch.compile.

    python3 bench/torch_gpt.py --json torch_gpt.json [--batch 16 32] [--steps 20] [--no-compile]
    build/bench/kiln-bench --filter gpt_train --compare torch_gpt.json

CPU mode (--cpu): the CPU entry's model instead, configs/gpt_fortunes.yaml's
GPT (4 layers, 6 heads, width 192, vocabulary 4096, T = 128, B = 8) in fp32,
eager, AdamW (lr 3e-4, betas 0.9/0.95, weight decay 0.1 on 2-D weights,
foreach), clipping at 1.0:

    /usr/bin/python3 bench/torch_gpt.py --cpu [--settings 1:1 2:2 1:2] --json t.json

Each setting TORCH:BLAS runs in a fresh process with torch.set_num_threads
(TORCH), OPENBLAS_NUM_THREADS=BLAS (Debian's PyTorch multiplies through
OpenBLAS, whose threads torch.set_num_threads leaves at every core) and
OMP_WAIT_POLICY=PASSIVE (its OpenMP threads otherwise spin against
OpenBLAS's); it is reported under the cores it uses, max(TORCH, BLAS), so
the defaults time one core and two cores two ways, and PyTorch's best at two
threads is the better of 2:2 and 1:2. PyTorch 1.13 (Debian's) has no
scaled_dot_product_attention; attention then runs as nanoGPT's fallback
does (scores, causal mask, softmax, P·V); PyTorch 2 uses SDPA. Timing as
bench/train/gpt_train_bench.cpp's CPU entry: blocks of --steps (10) steps
after 3 warm-up steps, the median of --repeats (3) blocks.

Timing: host clock around torch.cuda.synchronize() for each timed step after
warm-up (compilation happens in the warm-up steps); the median is reported.
FLOPs per step are kiln's formula, B·T·(6·N + 12·L·H·Q·T) with N the
parameters minus wpe and minus the vocabulary padding, so the two columns
compare like for like; MFU is against 989 TFLOP/s (H100/H200 SXM dense bf16).
Results are written in bench/torch_bench.py's JSON format, keyed by the same
name and shape strings as kiln's entry ("gpt_train_step", "B16 T1024 L12 C768
V50257 bf16").
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_BF16 = 989e12


def attention(q, k, v):
    """Causal attention on (B, H, T, D): SDPA where PyTorch has it (2.0+), else
    nanoGPT's explicit form."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
    att = F.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
    return att @ v


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.H, C // self.H).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.H, C // self.H).transpose(1, 2)
        v = v.view(B, T, self.H, C // self.H).transpose(1, 2)
        y = attention(q, k, v)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, V, T, L, H, C):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets, V):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for blk in self.h:
            x = blk(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head, (B, T, Vp)
        return F.cross_entropy(logits[..., :V].float().reshape(-1, V), targets.view(-1))


def run(B, T, L, H, C, V, steps, compile_model):
    Vp = (V + 127) // 128 * 128
    torch.manual_seed(0)
    model = GPT(Vp, T, L, H, C).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    N = n_params - T * C - (Vp - V) * C
    flops_per_token = 6 * N + 12 * L * H * (C // H) * T
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if compile_model else model
    idx = torch.randint(0, V, (B, T + 1), device="cuda")
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = fwd(x, y, V)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    t0 = time.time()
    for _ in range(3):  # compile + allocator warm-up
        step()
    torch.cuda.synchronize()
    warm = time.time() - t0
    times = []
    for _ in range(steps):
        t = time.time()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.time() - t)
    ms = statistics.median(times) * 1e3
    tokens = B * T
    flops = tokens * flops_per_token
    print(f"torch_gpt B{B} T{T} L{L} C{C} V{V} bf16 ({'compiled' if compile_model else 'eager'}): "
          f"{ms:.1f} ms/step, {tokens / ms * 1e3:.0f} tokens/s, MFU {flops / (ms / 1e3) / PEAK_BF16 * 100:.1f}%, "
          f"loss {loss.item():.3f}, {n_params} parameters, warm-up {warm:.0f} s", flush=True)
    return {"name": "gpt_train_step", "backend": "cuda", "shape": f"B{B} T{T} L{L} C{C} V{V} bf16", "ms": ms,
            "flops": flops, "impl": "compiled" if compile_model else "eager",
            "tokens_per_s": tokens / ms * 1e3, "mfu": flops / (ms / 1e3) / PEAK_BF16}


def run_cpu(B, T, L, H, C, V, steps, repeats, threads, blas_threads):
    """configs/gpt_fortunes.yaml's GPT, fp32 on the CPU, as kiln-bench's CPU entry."""
    torch.set_num_threads(threads)
    Vp = (V + 127) // 128 * 128
    torch.manual_seed(0)
    model = GPT(Vp, T, L, H, C)
    n_params = sum(p.numel() for p in model.parameters())
    N = n_params - T * C - (Vp - V) * C
    flops_per_token = 6 * N + 12 * L * H * (C // H) * T
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    # foreach=True: the multi-tensor AdamW (PyTorch's fastest on the CPU in 1.13; fused is CUDA-only there).
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    idx = torch.randint(0, V, (B, T + 1))
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x, y, V)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(3):  # allocator warm-up
        step()
    blocks = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            loss = step()
        blocks.append((time.perf_counter() - t) / steps)
    ms = statistics.median(blocks) * 1e3
    tokens = B * T
    flops = tokens * flops_per_token
    cores = max(threads, blas_threads)
    shape = f"B{B} T{T} L{L} C{C} V{V} f32 threads={cores}"
    impl = (f"torch {threads} + OpenBLAS {blas_threads} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    return {"name": "gpt_train_step", "backend": "cpu", "shape": shape, "ms": ms, "flops": flops, "impl": impl,
            "threads": cores, "torch_threads": threads, "blas_threads": blas_threads,
            "tokens_per_s": tokens / ms * 1e3, "loss": loss.item(), "parameters": n_params,
            "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here (bench/torch_bench.py's format)")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--cpu", action="store_true", help="time the CPU entry's model (configs/gpt_fortunes.yaml's GPT)")
    p.add_argument("--settings", nargs="+", default=["1:1", "2:2", "1:2"],
                   help="CPU mode: TORCH:BLAS thread settings, each in its own process")
    p.add_argument("--repeats", type=int, default=3, help="CPU mode: timed blocks of --steps steps (median)")
    p.add_argument("--wait-policy", default="PASSIVE", help="CPU mode: OMP_WAIT_POLICY (PASSIVE: PyTorch's best)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # CPU mode: TORCH:BLAS, in the child process
    args = p.parse_args()
    if args.cpu:
        steps = args.steps if args.steps != p.get_default("steps") else 10
        if args.one:
            t, b = (int(x) for x in args.one.split(":"))
            print(json.dumps(run_cpu(8, 128, 4, 6, 192, 4096, steps, args.repeats, t, b)))
            return 0
        results = []
        for setting in args.settings:
            t, b = (int(x) for x in setting.split(":"))
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(b), OMP_NUM_THREADS=str(t), OMP_WAIT_POLICY=args.wait_policy)
            out = subprocess.run([sys.executable, __file__, "--cpu", "--one", setting, "--steps", str(steps),
                                  "--repeats", str(args.repeats)], env=env, check=True, capture_output=True,
                                 text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"torch_gpt cpu {r['shape']} ({r['impl']}): {r['ms']:.1f} ms/step, {r['tokens_per_s']:.0f} tokens/s, "
                  f"{r['flops'] / (r['ms'] / 1e3) / 1e9:.1f} model GFLOP/s, loss {r['loss']:.3f}, "
                  f"{r['parameters']} parameters (torch {r['torch']})", flush=True)
            results.append(r)
        if args.json:
            doc = {"device": "cpu", "torch": results[0]["torch"] if results else "", "results": results,
                   "failures": []}
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2)
        return 0
    if not torch.cuda.is_available():
        print("torch_gpt: no CUDA device; nothing to time", file=sys.stderr)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results = []
    for B in args.batch:
        results.append(run(B, args.seq, 12, 12, 768, 50257, args.steps, not args.no_compile))
    if args.json:
        doc = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results, "failures": []}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
