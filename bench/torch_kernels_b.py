#!/usr/bin/env python3
"""PyTorch side of the activation / dropout / embedding / optimizer / grad-norm
benchmarks (bench/kernels/{activation,embedding,optimizer,norm}_bench.cpp).

Runs the same op names and shapes through PyTorch on the GPU, eager and (for
the elementwise and embedding ops) torch.compile, and writes the JSON that
`kiln-bench --compare` reads: {"results": [{"name", "backend": "cuda",
"shape", "impl": "eager" | "compile", "ms", "bytes", "gbps"}]}. Bytes are
counted exactly as the kiln entries count them, so GB/s compare directly.

The same entries now also sit in bench/torch_bench.py's registry
(`activation`, `embedding`, `optimizer`, `grad_norm`); this file is the
stand-alone fallback until that script is committed, then it can go. Run:

    python3 bench/torch_kernels_b.py [--quick] [--no-compile] --json torch_b.json

Never run yet: the machine it was written on has no GPU and no PyTorch.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

VOCAB = 50304
DROP_P = 0.1
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


class Timer:
    """Median CUDA-event time of fn() over repeats, L2 flushed before each."""

    def __init__(self):
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush = torch.empty(max(2 * l2, 64 << 20), dtype=torch.uint8, device="cuda")

    def __call__(self, fn, repeats=20, warmup=3):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            self.flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)


def matrix_shape(rows, cols, dtype):
    return f"{rows}x{cols} {dtype}"


def activation_entries(quick):
    """(name, shape, bytes, {impl: fn}) for bench/kernels/activation_bench.cpp."""
    shapes = [(8192, 768), (8192, 3072), (16384, 4096), (16384, 16384)]
    if quick:
        shapes = shapes[:2]
    for rows, cols in shapes:
        for dname, dt in DTYPES.items():
            n, s = rows * cols, torch.finfo(dt).bits // 8
            g = torch.Generator(device="cuda").manual_seed(11)
            x = torch.rand(rows, cols, device="cuda", dtype=dt, generator=g) * 6 - 3
            dy = torch.rand(rows, cols, device="cuda", dtype=dt, generator=g) * 2 - 1
            bias = torch.rand(cols, device="cuda", dtype=dt, generator=g) - 0.5
            dbias = torch.zeros(cols, device="cuda", dtype=torch.float32)
            _, mask = torch.ops.aten.native_dropout(x, DROP_P, True)
            shape = matrix_shape(rows, cols, dname)

            def gelu_f(x=x):
                return F.gelu(x, approximate="tanh")

            def gelu_b(x=x, dy=dy):
                return torch.ops.aten.gelu_backward(dy, x, approximate="tanh")

            def relu_f(x=x):
                return torch.relu(x)

            def relu_b(x=x, dy=dy):
                return torch.ops.aten.threshold_backward(dy, x, 0)

            def bias_f(x=x, bias=bias):
                return x + bias

            def bias_b(dy=dy, dbias=dbias):
                return dbias.add_(dy.sum(0, dtype=torch.float32))

            def resid(x=x, dy=dy):
                return x + dy

            def drop_f(x=x):
                return F.dropout(x, DROP_P, training=True)

            # PyTorch stores the mask (1 byte per element) and reads it back;
            # kiln regenerates it. Bytes counted as kiln counts them.
            def drop_b(dy=dy, mask=mask):
                return torch.ops.aten.native_dropout_backward(dy, mask, 1.0 / (1.0 - DROP_P))

            # torch.compile only at GPT-2 124M's shapes: each compile costs seconds.
            c = rows == 8192
            yield "gelu_forward", shape, 2 * n * s, gelu_f, c
            yield "gelu_backward", shape, 3 * n * s, gelu_b, c
            yield "relu_forward", shape, 2 * n * s, relu_f, c
            yield "relu_backward", shape, 3 * n * s, relu_b, c
            yield "bias_add_forward", shape, 2 * n * s + cols * s, bias_f, c
            yield "bias_backward", shape, n * s + 8 * cols, bias_b, False
            yield "residual_add", shape, 3 * n * s, resid, c
            yield "dropout_forward", shape, 2 * n * s, drop_f, c
            yield "dropout_backward", shape, 2 * n * s, drop_b, False


def embedding_entries(quick):
    """bench/kernels/embedding_bench.cpp: token + position forward, backward."""
    shapes = [(8, 1024, 768), (16, 1024, 4096)]
    if quick:
        shapes = shapes[:1]
    for B, T, C in shapes:
        for dname, dt in DTYPES.items():
            s = torch.finfo(dt).bits // 8
            n = B * T
            g = torch.Generator(device="cuda").manual_seed(10 + n)
            tok = torch.randint(0, VOCAB, (B, T), device="cuda", generator=g, dtype=torch.int64)
            u = int(torch.unique(tok).numel())
            wte = (torch.rand(VOCAB, C, device="cuda", generator=g) * 0.2 - 0.1).to(dt)
            wpe = (torch.rand(T, C, device="cuda", generator=g) * 0.2 - 0.1).to(dt)
            pos = torch.arange(T, device="cuda")
            dout = torch.rand(B, T, C, device="cuda", generator=g).to(dt)
            shape = f"{B}x{T}x{C} V{VOCAB} {dname}"

            def fwd(tok=tok, wte=wte, wpe=wpe, pos=pos):
                return F.embedding(tok, wte) + F.embedding(pos, wpe)

            # Deterministic dense backward (PyTorch sorts too); grads in the
            # activation dtype as PyTorch would keep them.
            def bwd(tok=tok, dout=dout, C=C, T=T):
                dwte = torch.ops.aten.embedding_dense_backward(dout.view(-1, C), tok.view(-1), VOCAB, -1, False)
                dwpe = dout.sum(0)
                return dwte, dwpe

            fwd_bytes = 4 * n + 2 * n * C * s + T * C * s
            bwd_bytes = 4 * n + n * C * s + 8 * u * C + 8 * T * C
            yield "embedding_forward", shape, fwd_bytes, fwd, C == 768
            yield "embedding_backward", shape, bwd_bytes, bwd, False


def gpt_param_sizes(layers, C, V, T):
    """Same list as bench/kernels/bench_util.h gpt_param_sizes."""
    sizes = [V * C, T * C]
    for _ in range(layers):
        sizes += [C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C]
    return sizes + [C, C]


def optimizer_entries(quick):
    """bench/kernels/optimizer_bench.cpp and norm_bench.cpp."""
    models = [("gpt2-124M", gpt_param_sizes(12, 768, VOCAB, 1024))]
    if not quick:
        models.append(("gpt-1.1B", gpt_param_sizes(20, 2048, VOCAB, 1024)))
    for label, sizes in models:
        params = sum(sizes)
        shape = f"{label} ({len(sizes)} tensors)"
        ps = [torch.nn.Parameter(torch.rand(n, device="cuda") * 0.2 - 0.1) for n in sizes]
        for p in ps:
            p.grad = torch.rand_like(p) * 2 - 1
        copies = [torch.empty(n, device="cuda", dtype=torch.bfloat16) for n in sizes]
        adam_fused = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, fused=True)
        adam_foreach = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, foreach=True)
        sgd = torch.optim.SGD(ps, lr=1e-4, momentum=0.9, foreach=True)

        def adam_copy(opt=adam_fused, ps=ps, copies=copies):
            opt.step()
            torch._foreach_copy_(copies, ps)

        def clip(ps=ps):
            return torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True)

        yield "adamw_step", shape, 28 * params, {"fused": adam_fused.step, "foreach": adam_foreach.step}
        yield "adamw_step_bf16_copy", shape, 30 * params, {"fused": adam_copy}
        yield "sgd_momentum_step", shape, 20 * params, {"foreach": sgd.step}
        yield "grad_norm_clip", shape, 4 * params, {"foreach": clip}
        del ps, copies, adam_fused, adam_foreach, sgd
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the smaller shapes only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_kernels_b: no CUDA device; nothing measured", file=sys.stderr)
        return 1
    timer = Timer()
    results = []

    def record(name, shape, impl, ms, nbytes):
        gbps = nbytes / (ms * 1e-3) / 1e9
        results.append({"name": name, "backend": "cuda", "shape": shape, "impl": impl, "ms": ms, "bytes": nbytes,
                        "gbps": gbps})
        print(f"{name:24s} {shape:32s} {impl:8s} {ms:9.4f} ms {gbps:8.1f} GB/s", flush=True)

    for entries in (activation_entries(args.quick), embedding_entries(args.quick)):
        for name, shape, nbytes, fn, compilable in entries:
            record(name, shape, "eager", timer(fn), nbytes)
            if compilable and not args.no_compile:
                try:
                    record(name, shape, "compile", timer(torch.compile(fn)), nbytes)
                except Exception as e:  # a compile failure must not hide the eager figures
                    print(f"{name} {shape}: torch.compile failed: {e}", file=sys.stderr)
    for name, shape, nbytes, impls in optimizer_entries(args.quick):
        for impl, fn in impls.items():
            record(name, shape, impl, timer(fn), nbytes)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
