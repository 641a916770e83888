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
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_BF16 = 989e12


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
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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
        return F.cross_entropy(logits[..., :V].float().view(-1, V), targets.view(-1))


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here (bench/torch_bench.py's format)")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
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
