#!/usr/bin/env python3
"""PyTorch counterparts of kiln-bench entries, for `kiln-bench --compare`.

Run on the GPU machine (PyTorch 2.x with CUDA):

    python3 bench/torch_bench.py --json torch.json [--quick] [--filter REGEX] [--no-compile]
    build/bench/kiln-bench --json kiln.json --compare torch.json

Every result carries the same (name, backend, shape) key as the matching
kiln-bench row, so the table gains a "torch ms" column and a speedup
(torch ms / kiln ms; above 1 means kiln is faster). Timing follows
bench/harness.h: warm-up, a write over twice the L2 between repeats, CUDA
events around each call, the median reported.

Adding an entry is a few lines:

    @entry("layernorm_forward")
    def layernorm_forward(ctx):
        x = ctx.randn(8192, 768, dtype=torch.bfloat16)
        ln = torch.nn.LayerNorm(768, device="cuda", dtype=torch.bfloat16)
        ctx.measure("layernorm_forward", "8192x768 bf16", lambda: ln(x),
                    bytes=2 * x.numel() * 2, compile=True)

`compile=True` also times torch.compile(fn) (as impl "compile") where fusion
can matter; --compare uses the faster of the two.
"""
import argparse
import json
import re
import statistics
import sys
import time

REGISTRY = []


def entry(name):
    """Registers fn(ctx) as the PyTorch side of kiln-bench entry `name`."""
    def deco(fn):
        REGISTRY.append((name, fn))
        return fn
    return deco


class Context:
    def __init__(self, torch, quick, compile_ok, cpu):
        self.torch = torch
        self.quick = quick
        self.compile_ok = compile_ok
        self.cpu = cpu
        self.backend = "cpu" if cpu else "cuda"
        self.results = []
        if not cpu:
            props = torch.cuda.get_device_properties(0)
            l2 = getattr(props, "L2_cache_size", 50 << 20)
            self.flush = torch.empty(max(2 * l2, 64 << 20), dtype=torch.uint8, device="cuda")

    def randn(self, *shape, dtype=None):
        """Random data on the benchmark device (never zeros)."""
        t = self.torch
        return t.randn(*shape, dtype=dtype or t.float32, device=self.backend)

    def time(self, fn, repeats=20, warmup=3):
        """Median milliseconds of fn()."""
        t = self.torch
        for _ in range(warmup):
            fn()
        if self.cpu:
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        t.cuda.synchronize()
        starts = [t.cuda.Event(enable_timing=True) for _ in range(repeats)]
        stops = [t.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            self.flush.fill_(i & 0xFF)  # evict the L2
            starts[i].record()
            fn()
            stops[i].record()
        t.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, stops))

    def report(self, name, shape, ms, impl="eager", bytes=0.0, flops=0.0):
        r = {"name": name, "backend": self.backend, "shape": shape, "ms": ms, "impl": impl,
             "bytes": bytes, "flops": flops,
             "gbps": bytes / (ms * 1e-3) / 1e9 if bytes else 0.0,
             "tflops": flops / (ms * 1e-3) / 1e12 if flops else 0.0}
        self.results.append(r)
        rate = (f"{r['gbps']:9.1f} GB/s" if bytes else "") + (f"{r['tflops']:9.3f} TFLOP/s" if flops else "")
        print(f"{name:30s} {self.backend:4s} {shape:30s} {impl:8s} {ms:10.4f} ms {rate}", flush=True)

    def measure(self, name, shape, fn, bytes=0.0, flops=0.0, compile=False, repeats=20):
        """Times fn eagerly and, with compile=True, as torch.compile(fn)."""
        self.report(name, shape, self.time(fn, repeats), "eager", bytes, flops)
        if compile and self.compile_ok:
            compiled = self.torch.compile(fn)
            self.report(name, shape, self.time(compiled, repeats, warmup=5), "compile", bytes, flops)


# --- entries (same names and shapes as bench/*.cpp) ---------------------------------

@entry("copy")
def copy(ctx):
    """copy_bench.cpp: 2 x bytes moved per call."""
    t = ctx.torch
    if ctx.cpu:
        mib = 64 if ctx.quick else 256
    else:
        mib = 256 if ctx.quick else 1024
    n = mib << 20
    src = t.full((n,), 0x5A, dtype=t.uint8, device=ctx.backend)
    dst = t.empty_like(src)
    ctx.measure("copy", f"{mib} MiB", lambda: dst.copy_(src), bytes=2.0 * n, repeats=5 if ctx.cpu else 20)


@entry("gemm")
def gemm(ctx):
    """gemm_bench.cpp: square GEMMs, 2·n³ flops, fp32 accumulation."""
    t = ctx.torch
    if ctx.cpu:
        for n in ([512, 1024] if ctx.quick else [512, 1024, 2048]):
            a, b = ctx.randn(n, n), ctx.randn(n, n)
            c = t.empty(n, n)
            ctx.measure("sgemm", f"{n}x{n}x{n} f32", lambda: t.mm(a, b, out=c), flops=2.0 * n ** 3, repeats=5)
        return
    # Same arithmetic as kiln: real fp32 (no TF32) and fp32 accumulation for bf16.
    t.backends.cuda.matmul.allow_tf32 = False
    t.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    for dtype, tag in ((t.bfloat16, "bf16"), (t.float32, "f32")):
        for n in ([4096] if ctx.quick else [4096, 8192]):
            a, b = ctx.randn(n, n, dtype=dtype), ctx.randn(n, n, dtype=dtype)
            c = t.empty(n, n, dtype=dtype, device="cuda")
            # A lone matmul has nothing to fuse: torch.compile would call the same
            # cuBLAS kernel, so only eager is timed.
            ctx.measure(f"gemm_{tag}", f"{n}x{n}x{n} {tag}", lambda: t.mm(a, b, out=c), flops=2.0 * n ** 3)



# --- activation / dropout / embedding / optimizer / grad norm ------------------------
# Same names, shapes and byte counts as bench/kernels/{activation,embedding,
# optimizer,norm}_bench.cpp (see the byte formulas there).

_DROP_P = 0.1
_VOCAB = 50304


def _dtypes(t):
    return ((t.float32, "f32", 4), (t.bfloat16, "bf16", 2))


@entry("activation")
def activation(ctx):
    """GELU/ReLU forward+backward, bias add/backward, residual add, dropout."""
    t = ctx.torch
    F = t.nn.functional
    if ctx.cpu:
        shapes, dtypes = [(128 if ctx.quick else 1024, 768)], ((t.float32, "f32", 4),)
    else:
        shapes = [(8192, 768), (8192, 3072)] + ([] if ctx.quick else [(16384, 4096), (16384, 16384)])
        dtypes = _dtypes(t)
    for rows, cols in shapes:
        for dt, tag, s in dtypes:
            n = rows * cols
            x = (ctx.randn(rows, cols) * 1.5).to(dt)
            dy = ctx.randn(rows, cols).to(dt)
            bias = (ctx.randn(cols) * 0.3).to(dt)
            dbias = t.zeros(cols, dtype=t.float32, device=ctx.backend)
            mask = t.ops.aten.native_dropout(x, _DROP_P, True)[1]
            shape = f"{rows}x{cols} {tag}"
            c = rows == 8192  # torch.compile only at GPT-2's shapes: each compile costs seconds
            ctx.measure("gelu_forward", shape, lambda: F.gelu(x, approximate="tanh"), bytes=2.0 * n * s, compile=c)
            ctx.measure("gelu_backward", shape, lambda: t.ops.aten.gelu_backward(dy, x, approximate="tanh"),
                        bytes=3.0 * n * s, compile=c)
            ctx.measure("relu_forward", shape, lambda: t.relu(x), bytes=2.0 * n * s, compile=c)
            ctx.measure("relu_backward", shape, lambda: t.ops.aten.threshold_backward(dy, x, 0), bytes=3.0 * n * s,
                        compile=c)
            ctx.measure("bias_add_forward", shape, lambda: x + bias, bytes=2.0 * n * s + cols * s, compile=c)
            ctx.measure("bias_backward", shape, lambda: dbias.add_(dy.sum(0, dtype=t.float32)),
                        bytes=n * s + 8.0 * cols)
            ctx.measure("residual_add", shape, lambda: x + dy, bytes=3.0 * n * s, compile=c)
            ctx.measure("dropout_forward", shape, lambda: F.dropout(x, _DROP_P, training=True), bytes=2.0 * n * s,
                        compile=c)
            # PyTorch reads a stored 1-byte mask; kiln regenerates it. Bytes as kiln counts them.
            ctx.measure("dropout_backward", shape,
                        lambda: t.ops.aten.native_dropout_backward(dy, mask, 1.0 / (1.0 - _DROP_P)),
                        bytes=2.0 * n * s)


@entry("embedding")
def embedding(ctx):
    """Token + position embedding forward, and the dense (deterministic) backward."""
    t = ctx.torch
    F = t.nn.functional
    if ctx.cpu:
        shapes, dtypes = [(1 if ctx.quick else 4, 256, 768)], ((t.float32, "f32", 4),)
    else:
        shapes = [(8, 1024, 768)] + ([] if ctx.quick else [(16, 1024, 4096)])
        dtypes = _dtypes(t)
    for B, T, C in shapes:
        for dt, tag, s in dtypes:
            n = B * T
            tok = t.randint(0, _VOCAB, (B, T), device=ctx.backend)
            u = int(t.unique(tok).numel())
            wte = (ctx.randn(_VOCAB, C) * 0.02).to(dt)
            wpe = (ctx.randn(T, C) * 0.02).to(dt)
            pos = t.arange(T, device=ctx.backend)
            dout = ctx.randn(B, T, C).to(dt)
            shape = f"{B}x{T}x{C} V{_VOCAB} {tag}"
            ctx.measure("embedding_forward", shape, lambda: F.embedding(tok, wte) + F.embedding(pos, wpe),
                        bytes=4.0 * n + 2.0 * n * C * s + T * C * s, compile=C == 768 and not ctx.cpu)

            def backward():
                dwte = t.ops.aten.embedding_dense_backward(dout.view(-1, C), tok.view(-1), _VOCAB, -1, False)
                return dwte, dout.sum(0)

            ctx.measure("embedding_backward", shape, backward, bytes=4.0 * n + n * C * s + 8.0 * u * C + 8.0 * T * C)


def _gpt_param_sizes(layers, C, V, T):
    """bench/kernels/bench_util.h gpt_param_sizes: GPT-2's tensor list."""
    sizes = [V * C, T * C]
    for _ in range(layers):
        sizes += [C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C]
    return sizes + [C, C]


def _models(ctx):
    if ctx.cpu:
        sizes = _gpt_param_sizes(2, 256, 4096, 256)
        return [(f"gpt-2x256 ({sum(sizes)} params)", sizes)]
    models = [("gpt2-124M", _gpt_param_sizes(12, 768, _VOCAB, 1024))]
    if not ctx.quick:
        models.append(("gpt-1.1B", _gpt_param_sizes(20, 2048, _VOCAB, 1024)))
    return [(f"{label} ({len(sizes)} tensors)", sizes) for label, sizes in models]


def _params(ctx, sizes):
    t = ctx.torch
    ps = [t.nn.Parameter(ctx.randn(n) * 0.05) for n in sizes]
    for p in ps:
        p.grad = t.randn_like(p)
    return ps


@entry("optimizer")
def optimizer(ctx):
    """One AdamW step (fused and foreach; with a bf16 weight copy) and one SGD-momentum step."""
    t = ctx.torch
    for shape, sizes in _models(ctx):
        params = float(sum(sizes))
        ps = _params(ctx, sizes)
        if ctx.cpu:
            adam = {"eager": t.optim.AdamW(ps, lr=1e-4, weight_decay=0.1)}
        else:
            adam = {"fused": t.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, fused=True),
                    "foreach": t.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, foreach=True)}
        for impl, opt in adam.items():
            ctx.report("adamw_step", shape, ctx.time(opt.step), impl, 28.0 * params)
        if not ctx.cpu:
            copies = [t.empty(p.numel(), dtype=t.bfloat16, device="cuda") for p in ps]
            fused = adam["fused"]

            def step_and_copy():
                fused.step()
                t._foreach_copy_(copies, ps)

            ctx.report("adamw_step_bf16_copy", shape, ctx.time(step_and_copy), "fused", 30.0 * params)
            del copies
        sgd = t.optim.SGD(ps, lr=1e-4, momentum=0.9)
        ctx.report("sgd_momentum_step", shape, ctx.time(sgd.step), "eager", 20.0 * params)
        del ps, adam, sgd
        if not ctx.cpu:
            t.cuda.empty_cache()


@entry("grad_norm")
def grad_norm(ctx):
    """Global gradient norm + clipping over the model's gradient list."""
    t = ctx.torch
    for shape, sizes in _models(ctx):
        ps = _params(ctx, sizes)
        ctx.measure("grad_norm_clip", shape, lambda: t.nn.utils.clip_grad_norm_(ps, 1.0), bytes=4.0 * sum(sizes))
        del ps
        if not ctx.cpu:
            t.cuda.empty_cache()


# --- attention (bench/kernels/attention_bench.cpp) -----------------------------------
# Same names, shapes, FLOP and byte counts as kiln's entry: forward 4·B·H·T²·D
# FLOPs (halved when causal), backward 2.5x that; B·T = 16k tokens, H·D = 2048.
# q, k, v are made in kiln's (B, T, H, D) layout and handed to SDPA as
# (B, H, T, D) transposed views (no copy), as a model with a (B, T, 3·C) QKV
# projection would. One row per SDPA backend ("flash", "cudnn"); --compare
# takes the faster.

def _attention_shape(B, T, H, D, causal, tag):
    return f"B{B} T{T} H{H} D{D} {'causal' if causal else 'full'} {tag}"


def _sdpa(t, q, k, v, causal):
    """scaled_dot_product_attention, or its math on a PyTorch without it (the
    Debian 1.13 CPU build; the CPU rows are plumbing checks only)."""
    F = t.nn.functional
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(t.ones(T, T, dtype=t.bool, device=q.device).triu(1), float("-inf"))
    return t.softmax(s, dim=-1) @ v


def _attention_rows(ctx, B, T, H, D, causal, tag, dtype, impls):
    t = ctx.torch
    n = B * T * H * D
    s = t.finfo(dtype).bits // 8
    flops = 4.0 * B * H * T * T * D / (2 if causal else 1)
    fwd_bytes = 4.0 * n * s + 4.0 * B * H * T
    bwd_bytes = 8.0 * n * s + 12.0 * B * H * T
    shape = _attention_shape(B, T, H, D, causal, tag)
    q, k, v, dout = (ctx.randn(B, T, H, D, dtype=dtype).transpose(1, 2) for _ in range(4))  # (B, H, T, D) views
    for impl, backends in impls:
        try:
            with backends():
                ms = ctx.time(lambda: _sdpa(t, q, k, v, causal))
                ctx.report("attention_forward", shape, ms, impl, fwd_bytes, flops)
                qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                out = _sdpa(t, qg, kg, vg, causal)
                ms = ctx.time(lambda: t.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True))
                ctx.report("attention_backward", shape, ms, impl, bwd_bytes, 2.5 * flops)
                del out, qg, kg, vg
        except RuntimeError as e:  # a backend that rejects the shape or the machine: say so, keep going
            print(f"torch_bench: attention {impl} {shape}: {e}", file=sys.stderr)


@entry("attention")
def attention(ctx):
    """Fused attention forward and backward through scaled_dot_product_attention."""
    t = ctx.torch
    import contextlib
    if ctx.cpu:
        T = 128 if ctx.quick else 256
        for causal in (False, True):
            _attention_rows(ctx, 1, T, 4, 64, causal, "f32", t.float32, (("eager", contextlib.nullcontext),))
        _attention_docs(ctx, t.float32, "f32", 512 if ctx.quick else 1024, 16, 256, 512, ((4, 64),),
                        (("eager", contextlib.nullcontext),), None)
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    impls = (("flash", lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)),
             ("cudnn", lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION)))
    tokens, width = 16384, 2048
    Ts = [1024, 4096] if ctx.quick else [512, 1024, 2048, 4096, 8192, 16384]
    for D in (64, 128):
        for causal in (False, True):
            for T in Ts:
                _attention_rows(ctx, tokens // T, T, width // D, D, causal, "bf16", t.bfloat16, impls)
                t.cuda.empty_cache()
    # Packed documents: SDPA with a block-diagonal boolean mask can only use
    # the backends that take arbitrary masks (memory-efficient, cuDNN); the
    # flash-attn package's varlen kernel, if installed, runs the documents
    # without any mask at all (impl "varlen").
    masked = (("efficient", lambda: sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION)),
              ("cudnn", lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION)))
    _attention_docs(ctx, t.bfloat16, "bf16", 16384, 32, 2048, 4096, ((32, 64), (16, 128)), impls, masked)
    # A small ViT's attention: 49 patches + class token, 4 heads of 16.
    B = 256 if ctx.quick else 1024
    _attention_rows(ctx, B, 50, 4, 16, False, "bf16", t.bfloat16, impls)


# --- packed documents (attention_bench.cpp's make_docs / doc_layouts) -----------------
# The same documents as kiln's entry (same LCG, same first-fit packing), three
# ways: "packed" (rows of T with a document mask), "nomask" (the same rows,
# dense), "padded" (one document per row, padded to the longest). Every row
# counts the same useful FLOPs, sum over documents of 4·H·D·L² (halved when
# causal). This part has never been run on a GPU.

def _make_docs(tokens, lo, hi, T):
    x, lengths, total = 0x5EED, [], 0
    while total < tokens:
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        n = lo + (x >> 33) % (hi - lo)
        lengths.append(n)
        total += n
    rows, room = [], []
    for n in lengths:
        r = next((i for i, left in enumerate(room) if left >= n), None)
        if r is None:
            rows.append([])
            room.append(T)
            r = len(rows) - 1
        room[r] -= n
        rows[r].append(n)
    return lengths, rows, total


def _docs_shape(lengths, tokens, B, T, H, D, causal, tag, mode):
    return (f"docs{len(lengths)} tokens{tokens} B{B} T{T} H{H} D{D} "
            f"{'causal' if causal else 'full'} {tag} {mode}")


def _doc_mask(t, rows, T, causal, device):
    """(B, 1, T, T) boolean, True where a query may attend: same document (the
    padded tail of a row is a document of its own) and, if causal, not later."""
    seg = t.empty(len(rows), T, dtype=t.int32)
    for b, row in enumerate(rows):
        pos = 0
        for i, n in enumerate(row):
            seg[b, pos:pos + n] = i
            pos += n
        seg[b, pos:] = len(row)
    seg = seg.to(device)
    m = seg[:, :, None] == seg[:, None, :]
    if causal:
        m &= t.ones(T, T, dtype=t.bool, device=device).tril()
    return m[:, None]


def _sdpa_masked(t, q, k, v, mask):
    F = t.nn.functional
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return t.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


def _time_fwd_bwd(ctx, shape, impl, B, T, H, D, dtype, flops, fwd):
    """Times fwd(q, k, v) and its backward on (B, H, T, D) views of (B, T, H, D)."""
    t = ctx.torch
    s = t.finfo(dtype).bits // 8
    n = B * T * H * D
    q, k, v, dout = (ctx.randn(B, T, H, D, dtype=dtype).transpose(1, 2) for _ in range(4))
    ms = ctx.time(lambda: fwd(q, k, v))
    ctx.report("attention_forward", shape, ms, impl, 4.0 * n * s + 4.0 * B * H * T, flops)
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out = fwd(qg, kg, vg)
    ms = ctx.time(lambda: t.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True))
    ctx.report("attention_backward", shape, ms, impl, 8.0 * n * s + 12.0 * B * H * T, 2.5 * flops)


def _attention_docs(ctx, dtype, tag, tokens, lo, hi, T, heads, impls, masked_impls):
    t = ctx.torch
    lengths, rows, total = _make_docs(tokens, lo, hi, T)
    P, N, Tmax = len(rows), len(lengths), max(lengths)
    for H, D in heads:
        for causal in (True, False):
            flops = sum(4.0 * H * D * n * n for n in lengths) / (2 if causal else 1)
            layouts = (("packed", P, T), ("nomask", P, T), ("padded", N, Tmax))
            for mode, B, TT in layouts:
                shape = _docs_shape(lengths, total, B, TT, H, D, causal, tag, mode)
                if mode == "packed":
                    mask = _doc_mask(t, rows, T, causal, ctx.backend)
                    fwd = lambda q, k, v: _sdpa_masked(t, q, k, v, mask)  # noqa: E731
                    candidates = masked_impls or impls
                else:
                    fwd = lambda q, k, v: _sdpa(t, q, k, v, causal)  # noqa: E731
                    candidates = impls
                for impl, backends in candidates:
                    try:
                        with backends():
                            _time_fwd_bwd(ctx, shape, impl, B, TT, H, D, dtype, flops, fwd)
                    except RuntimeError as e:
                        print(f"torch_bench: attention {impl} {shape}: {e}", file=sys.stderr)
                if mode == "packed" and not ctx.cpu:
                    _attention_varlen(ctx, shape, lengths, H, D, causal, flops)
                if not ctx.cpu:
                    t.cuda.empty_cache()


def _attention_varlen(ctx, shape, lengths, H, D, causal, flops):
    """flash-attn's varlen kernel on the documents themselves (no padding, no
    mask), when the package is installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return
    import itertools
    t = ctx.torch
    total = sum(lengths)
    cu = t.tensor([0] + list(itertools.accumulate(lengths)), dtype=t.int32, device="cuda")
    q, k, v, dout = (ctx.randn(total, H, D, dtype=t.bfloat16) for _ in range(4))
    fwd = lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths),  # noqa: E731
                                                 causal=causal)
    n = total * H * D
    ms = ctx.time(lambda: fwd(q, k, v))
    ctx.report("attention_forward", shape, ms, "varlen", 4.0 * n * 2, flops)
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out = fwd(qg, kg, vg)
    ms = ctx.time(lambda: t.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True))
    ctx.report("attention_backward", shape, ms, "varlen", 8.0 * n * 2, 2.5 * flops)


# --- layernorm / softmax / cross-entropy ----------------------------------------------
# Same names, shapes and byte counts as bench/kernels/{layernorm,softmax,
# cross_entropy}_bench.cpp (see the byte formulas there).

_LN_EPS = 1e-5


@entry("layernorm")
def layernorm(ctx):
    """LayerNorm forward, residual add + LayerNorm, backward (dx, dweight, dbias).

    Weight and bias are fp32 with bf16 activations, as in kiln (PyTorch's CUDA
    layer norm takes that mix). PyTorch's backward returns fresh dweight/dbias
    rather than accumulating; the 16·C bytes kiln counts for that are noise."""
    t = ctx.torch
    F = t.nn.functional
    if ctx.cpu:
        shapes, dtypes = [(256 if ctx.quick else 1024, 768)], ((t.float32, "f32", 4),)
    else:
        shapes = [(8192, 768), (16384, 4096)] + ([] if ctx.quick else [(16384, 16384)])
        dtypes = _dtypes(t)
    for rows, C in shapes:
        for dt, tag, s in dtypes:
            n = rows * C
            x, r, dy = ctx.randn(rows, C).to(dt), ctx.randn(rows, C).to(dt), ctx.randn(rows, C).to(dt)
            w, b = ctx.randn(C) * 0.1 + 1.0, ctx.randn(C) * 0.1
            _, mean, rstd = t.ops.aten.native_layer_norm(x, [C], w, b, _LN_EPS)
            shape = f"{rows}x{C} {tag}"
            c = rows == 8192  # torch.compile only at GPT-2's shape: each compile costs seconds

            def residual():
                s_ = x + r
                return s_, F.layer_norm(s_, (C,), w, b, _LN_EPS)

            ctx.measure("layernorm_forward", shape, lambda: F.layer_norm(x, (C,), w, b, _LN_EPS),
                        bytes=2.0 * n * s + 8.0 * rows + 8.0 * C, compile=c)
            ctx.measure("layernorm_residual_forward", shape, residual, bytes=4.0 * n * s + 8.0 * rows + 8.0 * C,
                        compile=c)
            ctx.measure("layernorm_backward", shape,
                        lambda: t.ops.aten.native_layer_norm_backward(dy, x, [C], mean, rstd, w, b,
                                                                      [True, True, True]),
                        bytes=3.0 * n * s + 8.0 * rows + 20.0 * C)
            del x, r, dy, mean, rstd
        if not ctx.cpu:
            t.cuda.empty_cache()


@entry("softmax")
def softmax(ctx):
    """Softmax over rows, forward and backward."""
    t = ctx.torch
    if ctx.cpu:
        shapes = [(256, 768)] if ctx.quick else [(1024, 768), (64, 50304)]
        dtypes = ((t.float32, "f32", 4),)
    else:
        shapes = [(8192, 768), (8192, 50304)] + ([] if ctx.quick else [(16384, 4096), (16384, 16384)])
        dtypes = _dtypes(t)
    for rows, C in shapes:
        for dt, tag, s in dtypes:
            n = rows * C
            x, dy = (ctx.randn(rows, C) * 3.0).to(dt), ctx.randn(rows, C).to(dt)
            y = t.softmax(x, -1)
            shape = f"{rows}x{C} {tag}"
            c = rows == 8192
            ctx.measure("softmax_forward", shape, lambda: t.softmax(x, -1), bytes=2.0 * n * s, compile=c)
            ctx.measure("softmax_backward", shape, lambda: t.ops.aten._softmax_backward_data(dy, y, -1, dt),
                        bytes=3.0 * n * s, compile=c)
            del x, dy, y
        if not ctx.cpu:
            t.cuda.empty_cache()


@entry("cross_entropy")
def cross_entropy(ctx):
    """F.cross_entropy (mean over rows) forward alone, and forward + backward to
    dlogits, on logits (rows, Vp) whose first V columns are the vocabulary (a
    padded vocabulary is sliced, as a GPT-2 with a padded lm_head does)."""
    t = ctx.torch
    F = t.nn.functional
    if ctx.cpu:
        shapes, dtypes = [(16 if ctx.quick else 64, 50257, 50304)], ((t.float32, "f32", 4),)
    else:
        shapes = [(8192, 50257, 50304)]
        if not ctx.quick:
            shapes += [(8192, 50257, 50257), (16384, 4096, 4096), (16384, 16384, 16384)]
        dtypes = _dtypes(t)
    for rows, V, Vp in shapes:
        for dt, tag, s in dtypes:
            logits = (ctx.randn(rows, Vp) * 3.0).to(dt).requires_grad_(True)
            targets = t.randint(0, V, (rows,), device=ctx.backend)
            shape = f"{rows}x{Vp} V{V} {tag}"
            c = rows == 8192 and not ctx.cpu

            def loss_fn(l, tg, V=V):
                return F.cross_entropy(l[:, :V], tg)

            def forward():
                with t.no_grad():
                    return loss_fn(logits, targets)

            def fused(fn=loss_fn):
                logits.grad = None
                fn(logits, targets).backward()

            ctx.measure("cross_entropy_forward", shape, forward, bytes=rows * V * s + 8.0 * rows, compile=c)
            fused_bytes = rows * (V + Vp) * s + 8.0 * rows
            ctx.measure("cross_entropy_forward_backward", shape, fused, bytes=fused_bytes)
            if c and ctx.compile_ok:  # compile the loss; autograd runs its compiled backward
                compiled = t.compile(loss_fn)
                ms = ctx.time(lambda: fused(compiled), warmup=5)
                ctx.report("cross_entropy_forward_backward", shape, ms, "compile", bytes=fused_bytes)
            del logits, targets
        if not ctx.cpu:
            t.cuda.empty_cache()


def _vit_shape_str(s, tag, threads=None):
    """bench/train/vit_train_bench.cpp's shape key."""
    H, W, C, p, d, L, heads, hidden, classes, B = s
    key = f"B{B} {H}x{W}x{C} p{p} d{d} L{L} H{heads} mlp{hidden} {tag}"
    return key + (f" threads={threads}" if threads else "")


@entry("vit_train")
def vit_train(ctx):
    """Whole ViT training steps (bench/torch_vit.py: the same model, init, AdamW and clipping as nn::Vit)."""
    import os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_vit
    t = ctx.torch
    if ctx.cpu:
        s = (28, 28, 1, 4, 64, 6, 4, 128, 10, 128)
        ms, flops = torch_vit.step_time(s, "cpu", "f32", 3 if ctx.quick else 5)
        ctx.report("vit_train_step", _vit_shape_str(s, "f32", t.get_num_threads()), ms, "eager", flops=flops)
        return
    fashion = (28, 28, 1, 4, 64, 6, 4, 128, 10, 512)
    rows = [(fashion, "f32"), (fashion, "bf16")]
    if not ctx.quick:
        rows.append(((224, 224, 3, 16, 384, 12, 6, 1536, 1000, 128), "bf16"))
    for s, tag in rows:
        ms, flops = torch_vit.step_time(s, "cuda", tag, 10)
        ctx.report("vit_train_step", _vit_shape_str(s, tag), ms, "eager", flops=flops)
        t.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="where to write the results (required unless --list)")
    p.add_argument("--quick", action="store_true", help="the shapes of kiln-bench --quick")
    p.add_argument("--filter", default="", help="run the entries whose name matches this regex")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--cpu", action="store_true", help="time the CPU entries instead (plumbing checks)")
    p.add_argument("--list", action="store_true", help="print the entries and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, _ in REGISTRY:
            print(name)
        return 0
    if not args.json:
        p.error("--json PATH is required")
    try:
        import torch  # imported late so --list and --help work without PyTorch
    except ImportError as e:
        print(f"torch_bench: PyTorch is not installed ({e})", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("torch_bench: no CUDA device visible to PyTorch; use --cpu for the CPU entries", file=sys.stderr)
        return 2
    ctx = Context(torch, args.quick, not args.no_compile, args.cpu)
    pattern = re.compile(args.filter)
    failed = []
    for name, fn in REGISTRY:
        if not pattern.search(name):
            continue
        try:
            fn(ctx)
        except Exception as e:  # report, keep going, fail at the end
            print(f"torch_bench: entry '{name}' failed: {e!r}", file=sys.stderr)
            failed.append({"entry": name, "error": repr(e)})
    doc = {"tool": "torch_bench", "torch": torch.__version__,
           "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
           "quick": args.quick, "results": ctx.results, "failures": failed}
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"torch_bench: {len(ctx.results)} results, {len(failed)} failed entries -> {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
