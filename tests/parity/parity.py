#!/usr/bin/env python3
"""Parity of kiln's models with independent PyTorch implementations.

    parity.py --driver build/tests/parity/parity_driver --case gpt --dtypes f64,f32 --work DIR
    parity.py --driver ... --check-cases mlp_relu,mlp_gelu,gpt

For each dtype: parity_driver (kiln) builds the case's tiny model, writes its
initial weights, one batch, the first logits, loss and gradients, and trains
10 steps (AdamW, warm-up + cosine schedule, gradient clipping); this script
loads the same weights into the PyTorch model of tests/parity/torch_<model>.py,
redoes all of it with torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and
its own schedule, and compares: logits, loss, every gradient, each step's lr,
gradient norm, clip factor and loss, the final weights, logits and loss (plus
the model's own extra checks, e.g. the GPT's Hugging Face export).

Element i of a comparison passes when

    |kiln_i - torch_i| <= rtol * max(|torch_i|, floor * max_j |torch_j|) + atol

(a floor keeps elements that are tiny next to the rest of the tensor from
being held to a fraction of their own size, which float rounding in a sum
cannot meet). Each comparison reports its worst element: name, index, kiln
value, torch value, relative error |kiln - torch| / |torch| and the share of
its tolerance it used. Any comparison over its tolerance, or any non-finite
value, fails the run (exit status 1); exit status 77 is a skip (no GPU for
bf16).

A model file torch_<model>.py defines
    build(cfg, dtype) -> torch.nn.Module   cfg: case.json's "model"; parameter
                                           names = kiln's parameter names
    torch_layout(name, t) / kiln_layout(name, t)
                                           kiln's layout of a tensor <-> the module's
    forward(model, input) -> logits        (rows..., Vp), Vp >= case "classes"
and may define
    decays(name, param) -> bool            which tensors AdamW decays when
                                           no_decay_on_bias_and_norm (default: 2-D and up)
    zero_grad_elements(name, shape, cfg)   a bool mask (kiln layout) of elements whose
                                           gradient is exactly zero in exact arithmetic, or
                                           None: checked to be rounding noise on both sides,
                                           their final weights only to the lr budget
    loss(logits, targets, classes)         (default: mean cross-entropy over the first
                                           `classes` columns, targets -100 ignored)
    extra_checks(ctx)                      more comparisons (see Context)
"""

import argparse
import importlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys

torch = None  # imported by import_torch() once a driver run has produced files


# --- tolerances ------------------------------------------------------------------
#
# (rtol, floor, atol, atol in units of the peak lr) per comparison kind and
# dtype; see Tol. Justification in README.md ("Tolerances").
TOLERANCES = {
    "f64": {"final_logits": (1e-10, 1e-3, 0, 0), "logits": (1e-10, 1e-3, 0, 0), "loss": (1e-12, 0, 0, 0), "grad": (1e-10, 1e-3, 0, 0),
            "lr": (1e-12, 0, 0, 0), "clip": (1e-7, 0, 0, 0), "trajectory": (1e-10, 0, 0, 0),
            "weights": (1e-10, 1e-3, 0, 0), "zero_grad": (0, 0, 0, 0), "exact": (0, 0, 0, 0)},
    "f32": {"final_logits": (3e-5, 0.1, 0, 0), "logits": (1e-5, 0.1, 0, 0), "loss": (1e-5, 0, 0, 0), "grad": (1e-4, 0.1, 0, 0),
            "lr": (1e-12, 0, 0, 0), "clip": (1e-5, 0, 0, 0), "trajectory": (1e-5, 0, 0, 0),
            "weights": (1e-5, 0, 0, 1e-3), "zero_grad": (0, 0, 0, 0), "exact": (0, 0, 0, 0)},
    "bf16": {"final_logits": (5e-2, 0.1, 0, 0), "logits": (3e-2, 0.1, 0, 0), "loss": (2e-2, 0, 0, 0), "grad": (1e-1, 0.1, 0, 0),
             "lr": (1e-12, 0, 0, 0), "clip": (2e-2, 0, 0, 0), "trajectory": (2e-2, 0, 0, 0),
             "weights": (1e-2, 0, 0, 2.0), "zero_grad": (0, 0, 0, 0), "exact": (0, 0, 0, 0)},
}
# A gradient that is exactly zero in exact arithmetic (a model's
# zero_grad_elements, e.g. the GPT's key bias) must be rounding noise on both
# sides: at most this fraction of its tensor's largest gradient.
ZERO_GRAD_NOISE = {"f64": 1e-13, "f32": 1e-6, "bf16": 1e-2}


def tolerance(kind, dtype, peak_lr=0.0):
    rtol, floor, atol, atol_lr = TOLERANCES[dtype][kind]
    return Tol(rtol, floor, atol + atol_lr * peak_lr)


# --- safetensors -----------------------------------------------------------------

ST_DTYPES = None


def read_safetensors(path):
    """{name: tensor} and the metadata of a safetensors file (8-byte header
    length, JSON header, row-major little-endian data)."""
    global ST_DTYPES
    if ST_DTYPES is None:
        ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                     "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, h in header.items():
        begin, end = h["data_offsets"]
        dt = ST_DTYPES[h["dtype"]]
        count = math.prod(h["shape"])
        t = torch.frombuffer(data, dtype=dt, count=count, offset=begin) if count else torch.empty(0, dtype=dt)
        assert t.numel() * t.element_size() == end - begin, f"{path}: {name}: size disagrees with dtype and shape"
        out[name] = t.reshape(h["shape"]).clone()
    return out, meta


def f32(x):
    """x rounded to float (kiln's optimizer kernels take float hyperparameters)."""
    return struct.unpack("f", struct.pack("f", x))[0]


# --- comparisons -----------------------------------------------------------------

class Tol:
    """Element i passes when |kiln_i - torch_i| <= rtol * max(|torch_i|, floor * max_j |torch_j|) + atol."""

    def __init__(self, rtol, floor=0.0, atol=0.0):
        self.rtol, self.floor, self.atol = rtol, floor, atol

    def __str__(self):
        parts = [f"rtol {self.rtol:g}"]
        if self.floor:
            parts.append(f"floor {self.floor:g}*max")
        if self.atol:
            parts.append(f"atol {self.atol:.2g}")
        return ", ".join(parts)


class Report:
    def __init__(self, title):
        self.title = title
        self.rows = []
        self.failures = []

    def compare(self, name, kiln, ref, tol, mask=None):
        """Compares kiln's tensor (or list of numbers) with the reference
        under `tol`, over the elements where `mask` is true (all when None);
        records the worst element: its index, both values, its relative error
        |kiln - torch| / |torch| and the fraction of its tolerance it uses."""
        k = torch.as_tensor(kiln, dtype=torch.float64).detach().cpu()
        t = torch.as_tensor(ref, dtype=torch.float64).detach().cpu()
        if k.shape != t.shape:
            self._fail(name, f"shape: kiln {list(k.shape)} vs torch {list(t.shape)}")
            return False
        m = torch.ones(k.shape, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        if not m.any():
            self.rows.append((True, name, "(no elements)"))
            return True
        if not (torch.isfinite(k[m]).all() and torch.isfinite(t[m]).all()):
            bad = (m & (~torch.isfinite(k) | ~torch.isfinite(t))).nonzero()[0].tolist()
            self._fail(name, f"non-finite at {bad}: kiln {k[tuple(bad)].item()} torch {t[tuple(bad)].item()}")
            return False
        scale = t[m].abs().max().item()
        allowed = tol.rtol * torch.clamp(t.abs(), min=tol.floor * scale) + tol.atol
        diff = (k - t).abs()
        # share of its tolerance each element uses (exactly equal elements: 0)
        used = torch.where(diff == 0, torch.zeros_like(diff),
                           diff / torch.where(allowed == 0, torch.full_like(allowed, 1e-300), allowed))
        used = torch.where(m, used, torch.full_like(used, -1.0))
        flat = int(torch.argmax(used).item())
        idx, rest = [], flat  # unravel (torch 1.13 has no unravel_index)
        for d in reversed(k.shape):
            idx.insert(0, rest % d)
            rest //= d
        kv, tv, dv = k.reshape(-1)[flat].item(), t.reshape(-1)[flat].item(), diff.reshape(-1)[flat].item()
        rel = dv / abs(tv) if tv != 0 else (0.0 if dv == 0 else math.inf)
        u = used.reshape(-1)[flat].item()
        ok = u <= 1.0
        if tol.rtol == 0 and tol.atol == 0:  # bit-for-bit equality
            differ = int((m & (diff != 0)).sum().item())
            share = "equal" if ok else f"{differ} of {int(m.sum().item())} elements differ"
        else:
            share = f"{'%.2g' % u if u < 1e3 else '%.1e' % u}x tol ({tol})"
        line = f"worst {idx}: kiln {kv:.12g} torch {tv:.12g} rel {rel:.2e}, {share}"
        self.rows.append((ok, name, line))
        if not ok:
            self.failures.append(f"{name}: {line}")
        return ok

    def check(self, name, ok, message):
        """A yes/no check (decay sets, clipping triggered, file metadata)."""
        self.rows.append((ok, name, message))
        if not ok:
            self.failures.append(f"{name}: {message}")
        return ok

    def _fail(self, name, message):
        self.rows.append((False, name, message))
        self.failures.append(f"{name}: {message}")

    def print(self):
        print(f"== {self.title}")
        width = max(len(r[1]) for r in self.rows) if self.rows else 10
        for ok, name, line in self.rows:
            print(f"  [{'ok' if ok else 'FAIL'}] {name:<{width}}  {line}")


class Context:
    """What a model's extra_checks(ctx) gets: the run directory and case.json,
    the dtype name, the trained PyTorch model, kiln's tensors (final_logits
    etc.), the batch, the torch dtype, and the report to add comparisons to."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def path(self, name):
        return os.path.join(self.dir, name)


# --- the reference computation -------------------------------------------------------

def lr_at(step, s):
    """Warm-up + cosine as kiln documents it (nn/schedule.h): linear warm-up
    from lr/warmup to lr over `warmup_steps`, then cosine from lr to
    lr * min_lr_ratio over the remaining steps."""
    base, warmup, total = s["lr"], s["warmup_steps"], s["total_steps"]
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    min_lr = base * s["min_lr_ratio"]
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_decays(name, p):
    # GPT-2 / nanoGPT: matrices and embeddings decay; biases and norm gains do not.
    return p.dim() >= 2


def default_loss(logits, targets, classes):
    rows = logits.reshape(-1, logits.shape[-1])[:, :classes]
    return torch.nn.functional.cross_entropy(rows, targets.long(), ignore_index=-100)


def case_param_shape(case, name):
    return next(p["shape"] for p in case["params"] if p["name"] == name)


def run_dtype(args, case_name, dtype, work):
    out = os.path.join(work, dtype)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.driver, "--case", case_name, "--dtype", dtype, "--out", out]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode == 77:
        print(p.stdout.strip())
        return "skip", None
    if p.returncode != 0:
        print(p.stdout)
        r = Report(f"{case_name} {dtype}")
        r.check("driver", False, f"{' '.join(cmd)} exited with status {p.returncode}")
        return "fail", r

    import_torch()  # after the driver: a skipped run never pays for importing PyTorch
    with open(os.path.join(out, "case.json")) as f:
        case = json.load(f)
    mod = importlib.import_module("torch_" + case["torch_model"])
    # The reference runs in the kiln run's precision (f32 against f32, f64
    # against f64); bf16 runs are compared with an f32 reference.
    tdt = torch.float64 if dtype == "f64" else torch.float32
    report = Report(f"{case_name} {dtype} ({case['device']}; reference: PyTorch {torch.__version__} "
                    f"{'float64' if tdt == torch.float64 else 'float32'}, torch_{case['torch_model']}.py)")

    init, _ = read_safetensors(os.path.join(out, "init.safetensors"))
    batch, _ = read_safetensors(os.path.join(out, "batch.safetensors"))
    klog, _ = read_safetensors(os.path.join(out, "logits.safetensors"))
    kgrad, _ = read_safetensors(os.path.join(out, "grads.safetensors"))
    kfinal, _ = read_safetensors(os.path.join(out, "final.safetensors"))

    model = mod.build(case["model"], tdt)
    names = [n for n, _ in model.named_parameters()]
    kiln_names = [p["name"] for p in case["params"]]
    same = sorted(names) == sorted(kiln_names)
    if not report.check("parameter names", same,
                        f"{len(names)} parameters, the same names on both sides" if same else
                        f"torch has {len(names)}, kiln {len(kiln_names)}; only in torch: "
                        f"{sorted(set(names) - set(kiln_names))}, only in kiln: {sorted(set(kiln_names) - set(names))}"):
        return "fail", report
    # Parameters only: buffers (BatchNorm's running statistics) start at the module's own values.
    missing, unexpected = model.load_state_dict({n: mod.torch_layout(n, init[n]).to(tdt) for n in names}, strict=False)
    assert not unexpected and set(missing) <= {n for n, _ in model.named_buffers()}, (missing, unexpected)
    x = batch["input"]
    if x.is_floating_point():
        x = x.to(tdt)
    targets = batch["targets"].long()
    classes = case["classes"]
    loss_fn = getattr(mod, "loss", default_loss)
    params = dict(model.named_parameters())
    peak_lr = case["schedule"]["lr"]
    # Frozen tensors (LoRA's base): no gradient on either side, never updated.
    trainable = {p["name"] for p in case["params"] if p.get("trainable", True)}
    torch_trainable = {n for n in names if params[n].requires_grad}
    report.check("trainable set", trainable == torch_trainable,
                 f"{len(trainable)} of {len(names)} tensors train" if trainable == torch_trainable else
                 f"only kiln trains {sorted(trainable - torch_trainable)}; only torch {sorted(torch_trainable - trainable)}")

    def tol(kind):
        return tolerance(kind, dtype, peak_lr)

    zero_fn = getattr(mod, "zero_grad_elements", None)
    zero_masks = {}
    if zero_fn:
        for n in names:
            z = zero_fn(n, tuple(case_param_shape(case, n)), case["model"])
            if z is not None:
                zero_masks[n] = z

    # Which tensors decay: the definition's rule against kiln's flags.
    opt_cfg, sched = case["optimizer"], case["schedule"]
    decays = getattr(mod, "decays", default_decays)
    if opt_cfg["no_decay_on_bias_and_norm"]:
        want = {n for n in names if decays(n, params[n])}
    else:
        want = set(names)  # every tensor decays
    kiln_decay = {p["name"] for p in case["params"]
                  if p["decay"] or not opt_cfg["no_decay_on_bias_and_norm"]}
    report.check("weight-decay set", want == kiln_decay,
                 f"{len(want)} of {len(names)} tensors decay" if want == kiln_decay else
                 f"kiln decays {sorted(kiln_decay - want)} that the definition does not; "
                 f"misses {sorted(want - kiln_decay)}")

    wd = f32(opt_cfg["weight_decay"])
    groups = [{"params": [params[n] for n in names if n in want and n in trainable], "weight_decay": wd},
              {"params": [params[n] for n in names if n not in want and n in trainable], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # kiln hands its optimizer kernel float lr, betas, eps and decay
    # (kernels/optimizer.h); the reference gets the same float values.
    opt = torch.optim.AdamW(groups, lr=f32(sched["lr"]), betas=(f32(opt_cfg["beta1"]), f32(opt_cfg["beta2"])),
                            eps=f32(opt_cfg["eps"]))
    max_norm = case["max_norm"]
    steps = case["steps"]
    t_lr, t_loss, t_norm, t_scale = [], [], [], []
    for step in range(sched["total_steps"]):
        lr = lr_at(step, sched)
        opt.zero_grad(set_to_none=True)
        logits = mod.forward(model, x)
        loss = loss_fn(logits, targets, classes)
        loss.backward()
        if step == 0:
            report.compare("logits", klog["logits"], logits.detach(), tol("logits"))
            report.compare("loss", [steps[0]["loss"]], [loss.item()], tol("loss"))
            frozen = [n for n in names if n not in trainable]
            if frozen:
                bad = [n for n in frozen if n in kgrad or params[n].grad is not None]
                report.check("frozen tensors have no gradient", not bad,
                             f"{len(frozen)} frozen, none with a gradient on either side" if not bad else
                             f"gradients for frozen {bad}")
            for n in names:
                if n not in trainable:
                    continue
                if n not in kgrad:
                    report.check(f"grad {n}", False, "kiln wrote no gradient for it")
                    continue
                g = mod.kiln_layout(n, params[n].grad)
                z = zero_masks.get(n)
                report.compare(f"grad {n}", kgrad[n], g, tol("grad"), None if z is None else ~z)
                if z is not None:
                    # exactly zero in exact arithmetic: rounding noise on both sides
                    noise = Tol(0, 0, ZERO_GRAD_NOISE[dtype] * g.abs().max().item())
                    report.compare(f"grad {n} (exact zeros)", kgrad[n], torch.zeros_like(g), noise, z)
                    report.compare(f"grad {n} (exact zeros, torch)", g, torch.zeros_like(g), noise, z)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
        scale = min(1.0, max_norm / (norm + 1e-6))
        if tdt == torch.float64 and scale < 1.0:
            # kiln's clip factor is a float (nn::clip_scale); AdamW is not
            # invariant to a per-step factor (it weights the steps in m and
            # v), so the float64 reference applies the same float-rounded
            # factor: clip_grad_norm_'s double factor times f32(c)/c.
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:  # frozen tensors have none
                        p.grad.mul_(f32(scale) / scale)
        t_lr.append(lr)
        t_loss.append(loss.item())
        t_norm.append(norm)
        t_scale.append(scale)
        for g in opt.param_groups:
            g["lr"] = f32(lr)
        opt.step()

    report.compare("lr per step", [s["lr"] for s in steps], t_lr, tol("lr"))
    report.compare("grad norm per step", [s["grad_norm"] for s in steps], t_norm, tol("trajectory"))
    report.compare("clip factor per step", [s["clip_scale"] for s in steps], t_scale, tol("clip"))
    clipped = sum(1 for s in t_scale if s < 1.0)
    report.check("clipping triggers", clipped > 0,
                 f"clipped on {clipped} of {len(t_scale)} steps (max_norm {max_norm:g}, norms "
                 f"{min(t_norm):.3g}..{max(t_norm):.3g})" if clipped else
                 f"never clipped: max_norm {max_norm:g} is above every norm ({max(t_norm):.3g}); lower it")
    report.compare("loss per step", [s["loss"] for s in steps], t_loss, tol("trajectory"))
    for n in names:
        w = mod.kiln_layout(n, params[n].detach())
        z = zero_masks.get(n)
        report.compare(f"final {n}", kfinal[n], w, tol("weights"), None if z is None else ~z)
        if z is not None:
            # AdamW normalizes rounding noise to steps of up to ~lr: these
            # elements can only be held to the total of the lr schedule.
            report.compare(f"final {n} (noise-driven)", kfinal[n], w, Tol(0, 0, 2 * sum(t_lr)), z)
    with torch.no_grad():
        model.eval()
        final_logits = mod.forward(model, x)
        final_loss = loss_fn(final_logits, targets, classes).item()
    report.compare("final logits", klog["final_logits"], final_logits, tol("final_logits"))
    report.compare("final loss", [case["final_loss"]], [final_loss], tol("loss"))

    if hasattr(mod, "extra_checks"):
        mod.extra_checks(Context(dir=out, case=case, dtype=dtype, tdtype=tdt, model=model, module=mod, tol=tol,
                                 kiln_logits=klog, kiln_final=kfinal, input=x, targets=targets,
                                 report=report, read_safetensors=read_safetensors))
    return ("fail" if report.failures else "ok"), report


def import_torch():
    global torch
    if torch is None:
        import torch as torch_module
        torch = torch_module
        torch.manual_seed(0)
        torch.set_num_threads(1)


def check_cases(args):
    p = subprocess.run([args.driver, "--list"], stdout=subprocess.PIPE, text=True, check=True)
    known = sorted(line.split()[0] for line in p.stdout.splitlines() if line.strip())
    registered = sorted(args.check_cases.split(","))
    if known != registered:
        print(f"parity: the driver has cases {known} but tests/parity/CMakeLists.txt registers {registered}: "
              f"add the missing names to kiln_parity_cases")
        return 1
    here = os.path.dirname(os.path.abspath(__file__))
    for line in p.stdout.splitlines():
        model_file = line.split()[1]
        if not os.path.exists(os.path.join(here, model_file)):
            print(f"parity: case {line.split()[0]} names {model_file}, which is not in tests/parity/")
            return 1
    print(f"parity: {len(known)} cases, each registered: {', '.join(known)}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", required=True, help="the parity_driver executable")
    ap.add_argument("--case")
    ap.add_argument("--dtypes", default="f64,f32", help="comma-separated: f64, f32, bf16")
    ap.add_argument("--work", help="directory for the driver's files (default: ./parity/<case>)")
    ap.add_argument("--check-cases", help="comma-separated case names that ctest registers")
    args = ap.parse_args()
    if args.check_cases:
        return check_cases(args)
    if not args.case:
        ap.error("--case is required")

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    work = args.work or os.path.join("parity", args.case)
    os.makedirs(work, exist_ok=True)

    failed, ran, skipped = [], 0, 0
    for dtype in args.dtypes.split(","):
        status, report = run_dtype(args, args.case, dtype, work)
        if status == "skip":
            skipped += 1
            continue
        ran += 1
        report.print()
        failed += [f"{args.case} {dtype}: {f}" for f in report.failures]
    if failed:
        print(f"parity {args.case}: FAILED, {len(failed)} comparison(s) over tolerance:")
        for f in failed:
            print(f"  {f}")
        return 1
    if ran == 0:
        print(f"parity {args.case}: SKIPPED ({args.dtypes})")
        return 77
    print(f"parity {args.case}: all comparisons within tolerance ({args.dtypes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
