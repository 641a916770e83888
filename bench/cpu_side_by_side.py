#!/usr/bin/env python3
"""kiln vs PyTorch on the CPU, side by side: the GPT, MLP and ViT training steps.

Runs, --rounds times and alternating, kiln-bench's CPU training entries
(`gpt_train`: configs/gpt_fortunes.yaml's GPT at 1 and 2 threads;
`mlp_train_cpu`: the 784-256-128-10 MLP at 1 and 2 threads; `vit_train`:
configs/vit_fashion.yaml's ViT at 1 and 2 threads) and their PyTorch twins
(bench/torch_gpt.py --cpu, bench/torch_mlp_cpu.py, bench/torch_vit.py bench) in each of
PyTorch's thread settings (one core; two cores as 2 PyTorch + 2 OpenBLAS
threads and as 1 + 2, all with OMP_WAIT_POLICY=PASSIVE). It keeps the best
round of each (framework, model, threads, setting), compares kiln with
PyTorch's best setting at the same number of cores, and prints one table
with the 1-minute load average seen before each run (the other processes
on the machine share its cores: a high load means the figures are low).

    python3 bench/cpu_side_by_side.py --kiln-bench build/bench/kiln-bench [--rounds 3] [--out DIR] [--models gpt mlp vit]

Run it alone on the machine (on shared machines, under the timed-runs lock).
The torch scripts run under --python (default /usr/bin/python3, Debian's
PyTorch). Writes DIR/side_by_side.json and DIR/side_by_side.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load1():
    return os.getloadavg()[0]


def run(cmd, log):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + p.stdout + p.stderr + "\n")
    if p.returncode != 0:
        sys.exit(f"cpu_side_by_side: {' '.join(cmd)} failed ({p.returncode}); see {log}")
    return time.time() - t0


def threads_of(shape):
    return int(shape.rsplit("threads=", 1)[1].split()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln-bench", required=True, help="path of kiln-bench")
    ap.add_argument("--python", default="/usr/bin/python3", help="Python with PyTorch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="side_by_side")
    ap.add_argument("--models", nargs="+", default=["gpt", "mlp", "vit"], choices=["gpt", "mlp", "vit"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "side_by_side.log")
    open(log, "w").close()

    runs = []  # {framework, model, threads, setting, per_s, load}
    units = {"gpt": 1024.0, "mlp": 128.0, "vit": 128.0}  # tokens / samples / images per step
    entries = {"gpt": ("gpt_train", "gpt_train_step"), "mlp": ("mlp_train_cpu", "mlp_train_cpu"),
               "vit": ("vit_train", "vit_train_step")}  # model -> (kiln-bench entry, result name)
    scripts = {"gpt": ["torch_gpt.py", "--cpu"], "mlp": ["torch_mlp_cpu.py"], "vit": ["torch_vit.py", "bench"]}
    for rnd in range(1, args.rounds + 1):
        # kiln: both entries, both thread counts, one process.
        load = load1()
        kj = os.path.join(args.out, f"kiln_{rnd}.json")
        run([args.kiln_bench, "--filter", "^(" + "|".join(entries[m][0] for m in args.models) + ")$", "--json", kj], log)
        model_of = {entries[m][1]: m for m in args.models}
        for r in json.load(open(kj))["results"]:
            if r["backend"] != "cpu" or r["name"] not in model_of:
                continue
            model = model_of[r["name"]]
            runs.append({"framework": "kiln", "model": model, "threads": threads_of(r["shape"]), "setting": "kiln pool",
                         "per_s": units[model] / (r["ms"] / 1e3), "load": load, "round": rnd})
        # PyTorch: every setting of each model.
        for model, script in ((m, scripts[m]) for m in args.models):
            load = load1()
            tj = os.path.join(args.out, f"torch_{model}_{rnd}.json")
            run([args.python, os.path.join(HERE, script[0])] + script[1:] + ["--json", tj], log)
            for r in json.load(open(tj))["results"]:
                runs.append({"framework": "torch", "model": model, "threads": r["threads"], "setting": r["impl"],
                             "per_s": units[model] / (r["ms"] / 1e3), "load": load, "round": rnd})
        print(f"round {rnd}/{args.rounds} done (load {load1():.2f})", flush=True)

    def best(framework, model, threads):
        c = [r for r in runs if r["framework"] == framework and r["model"] == model and r["threads"] == threads]
        return max(c, key=lambda r: r["per_s"]) if c else None

    lines = ["| model | threads | kiln | PyTorch best (setting) | kiln / PyTorch | load (1 min) during runs |",
             "| --- | --- | --- | --- | --- | --- |"]
    summary = []
    labels = {"gpt": "GPT (gpt_fortunes)", "mlp": "MLP 784-256-128-10", "vit": "ViT (vit_fashion)"}
    for model, unit in (("gpt", "tokens/s"), ("mlp", "samples/s"), ("vit", "images/s")):
        for t in (1, 2):
            k, p = best("kiln", model, t), best("torch", model, t)
            if not k or not p:
                continue
            loads = [r["load"] for r in runs if r["model"] == model and r["threads"] == t]
            row = {"model": model, "threads": t, "unit": unit, "kiln": k["per_s"], "torch": p["per_s"],
                   "torch_setting": p["setting"], "ratio": k["per_s"] / p["per_s"], "load_min": min(loads),
                   "load_max": max(loads)}
            summary.append(row)
            lines.append(f"| {labels[model]} | {t} | "
                         f"{k['per_s']:,.0f} {unit} | {p['per_s']:,.0f} ({p['setting']}) | {row['ratio']:.2f}x | "
                         f"{row['load_min']:.2f}-{row['load_max']:.2f} |")
    scaling = {}
    for model in args.models:
        k1, k2 = best("kiln", model, 1), best("kiln", model, 2)
        if k1 and k2:
            scaling[model] = k2["per_s"] / k1["per_s"]
    table = "\n".join(lines)
    table += "\n\nkiln 1 -> 2 thread scaling: " + ", ".join(f"{m} {s:.2f}x" for m, s in scaling.items())
    table += f"\n(best of {args.rounds} rounds, kiln and PyTorch alternating; every run in {log})\n"
    print(table)
    with open(os.path.join(args.out, "side_by_side.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "side_by_side.json"), "w") as f:
        json.dump({"rounds": args.rounds, "summary": summary, "scaling": scaling, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
