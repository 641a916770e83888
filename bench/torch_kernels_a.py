#!/usr/bin/env python3
"""PyTorch side of the LayerNorm / softmax / cross-entropy benchmarks
(bench/kernels/{layernorm,softmax,cross_entropy}_bench.cpp).

Runs the same op names and shapes through PyTorch on the GPU, eager and
torch.compile, and writes the JSON that `kiln-bench --compare` reads:
{"results": [{"name", "backend": "cuda", "shape", "impl": "eager" | "compile",
"ms", "bytes", "gbps"}]}. Bytes are counted exactly as the kiln entries count
them (each input read once, each output written once), so GB/s compare
directly.

Written in the style of bench/torch_kernels_b.py, to be merged into
bench/torch_bench.py's registry once that script exists; until then run it
on its own:

    python3 bench/torch_kernels_a.py [--quick] [--no-compile] --json torch_a.json

Never run yet: the machine it was written on has no GPU and no PyTorch with CUDA.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

EPS = 1e-5
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


def layernorm_entries(quick):
    """(name, shape, bytes, fn, compilable) for bench/kernels/layernorm_bench.cpp.

    Weight and bias are fp32 (master weights) with bf16 activations, as in
    kiln; PyTorch's CUDA layer norm accepts that mix. The backward returns
    dx, dweight, dbias (PyTorch does not accumulate into existing gradients
    here; the 16·C bytes kiln counts for that are negligible)."""
    shapes = [(8192, 768), (16384, 4096), (16384, 16384)]
    if quick:
        shapes = shapes[:2]
    for rows, C in shapes:
        for dname, dt in DTYPES.items():
            n, s = rows * C, torch.finfo(dt).bits // 8
            g = torch.Generator(device="cuda").manual_seed(20 + C)
            x = (torch.rand(rows, C, device="cuda", generator=g) * 4 - 2).to(dt)
            r = (torch.rand(rows, C, device="cuda", generator=g) * 2 - 1).to(dt)
            dy = (torch.rand(rows, C, device="cuda", generator=g) * 2 - 1).to(dt)
            w = torch.rand(C, device="cuda", generator=g) + 0.5
            b = torch.rand(C, device="cuda", generator=g) - 0.5
            _, mean, rstd = torch.ops.aten.native_layer_norm(x, [C], w, b, EPS)
            shape = matrix_shape(rows, C, dname)

            def fwd(x=x, w=w, b=b, C=C):
                return F.layer_norm(x, (C,), w, b, EPS)

            def resid(x=x, r=r, w=w, b=b, C=C):
                s_ = x + r
                return s_, F.layer_norm(s_, (C,), w, b, EPS)

            def bwd(dy=dy, x=x, mean=mean, rstd=rstd, w=w, b=b, C=C):
                return torch.ops.aten.native_layer_norm_backward(dy, x, [C], mean, rstd, w, b, [True, True, True])

            c = rows == 8192  # torch.compile only at GPT-2 124M's shape: each compile costs seconds
            yield "layernorm_forward", shape, 2 * n * s + 8 * rows + 8 * C, fwd, c
            yield "layernorm_residual_forward", shape, 4 * n * s + 8 * rows + 8 * C, resid, c
            yield "layernorm_backward", shape, 3 * n * s + 8 * rows + 20 * C, bwd, False


def softmax_entries(quick):
    """bench/kernels/softmax_bench.cpp: forward and backward over rows."""
    shapes = [(8192, 768), (8192, 50304), (16384, 4096), (16384, 16384)]
    if quick:
        shapes = shapes[:2]
    for rows, C in shapes:
        for dname, dt in DTYPES.items():
            n, s = rows * C, torch.finfo(dt).bits // 8
            g = torch.Generator(device="cuda").manual_seed(30 + C)
            x = (torch.rand(rows, C, device="cuda", generator=g) * 16 - 8).to(dt)
            dy = (torch.rand(rows, C, device="cuda", generator=g) * 2 - 1).to(dt)
            y = torch.softmax(x, -1)
            shape = matrix_shape(rows, C, dname)

            def fwd(x=x):
                return torch.softmax(x, -1)

            def bwd(dy=dy, y=y, dt=dt):
                return torch.ops.aten._softmax_backward_data(dy, y, -1, dt)

            c = rows == 8192
            yield "softmax_forward", shape, 2 * n * s, fwd, c
            yield "softmax_backward", shape, 3 * n * s, bwd, c
            del x, dy, y


def cross_entropy_entries(quick):
    """bench/kernels/cross_entropy_bench.cpp: F.cross_entropy (mean over rows)
    forward alone, and forward + backward to dlogits, on logits (rows, Vp)
    whose first V columns are the vocabulary (a padded vocabulary is sliced,
    as a GPT-2 model with a padded lm_head would do)."""
    shapes = [(8192, 50257, 50304), (8192, 50257, 50257), (16384, 4096, 4096), (16384, 16384, 16384)]
    if quick:
        shapes = shapes[:1]
    for rows, V, Vp in shapes:
        for dname, dt in DTYPES.items():
            s = torch.finfo(dt).bits // 8
            g = torch.Generator(device="cuda").manual_seed(40 + V)
            logits = (torch.rand(rows, Vp, device="cuda", generator=g) * 16 - 8).to(dt).requires_grad_(True)
            targets = torch.randint(0, V, (rows,), device="cuda", generator=g)
            shape = f"{rows}x{Vp} V{V} {dname}"

            def fwd(logits=logits, targets=targets, V=V):
                with torch.no_grad():
                    return F.cross_entropy(logits[:, :V], targets)

            def loss_fn(logits, targets, V=V):
                return F.cross_entropy(logits[:, :V], targets)

            def fused(logits=logits, targets=targets, loss_fn=loss_fn):
                logits.grad = None
                loss_fn(logits, targets).backward()

            compiled_loss = torch.compile(loss_fn) if rows == 8192 else None

            def fused_compiled(logits=logits, targets=targets, compiled_loss=compiled_loss):
                logits.grad = None
                compiled_loss(logits, targets).backward()

            impls_fwd = {"eager": fwd}
            impls_fused = {"eager": fused}
            if compiled_loss is not None:
                impls_fwd["compile"] = None  # filled in main() when compiling is allowed
                impls_fused["compile"] = fused_compiled
            yield "cross_entropy_forward", shape, rows * V * s + 8 * rows, impls_fwd
            yield "cross_entropy_forward_backward", shape, rows * (V + Vp) * s + 8 * rows, impls_fused
            del logits, targets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the smaller shapes only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_kernels_a: no CUDA device; nothing measured", file=sys.stderr)
        return 1
    timer = Timer()
    results = []

    def record(name, shape, impl, ms, nbytes):
        gbps = nbytes / (ms * 1e-3) / 1e9
        results.append({"name": name, "backend": "cuda", "shape": shape, "impl": impl, "ms": ms, "bytes": nbytes,
                        "gbps": gbps})
        print(f"{name:32s} {shape:28s} {impl:8s} {ms:9.4f} ms {gbps:8.1f} GB/s", flush=True)

    def run(name, shape, impl, fn, nbytes):
        try:
            record(name, shape, impl, timer(fn), nbytes)
        except Exception as e:  # one failing variant (a compile, an OOM) must not hide the others
            print(f"{name} {shape} {impl}: failed: {e}", file=sys.stderr)

    for entries in (layernorm_entries(args.quick), softmax_entries(args.quick)):
        for name, shape, nbytes, fn, compilable in entries:
            run(name, shape, "eager", fn, nbytes)
            if compilable and not args.no_compile:
                run(name, shape, "compile", torch.compile(fn), nbytes)
        torch.cuda.empty_cache()
    for name, shape, nbytes, impls in cross_entropy_entries(args.quick):
        for impl, fn in impls.items():
            if impl == "compile":
                if args.no_compile:
                    continue
                if fn is None:  # forward alone: compile the no-grad function itself
                    fn = torch.compile(impls["eager"])
            run(name, shape, impl, fn, nbytes)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
