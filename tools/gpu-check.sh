#!/usr/bin/env bash
# The GPU check, for a lent H200 (or any CUDA machine): builds with all cores,
# runs the GPU tests, the kernel benchmarks beside PyTorch, and a short GPU
# training run; writes logs and JSON under $OUT (or ./gpu-check-out when $OUT
# is unset). Designed to finish well inside 10 minutes.
#
#   tools/gpu-check.sh            # everything
#   tools/gpu-check.sh --quick    # tests + quick benchmarks only
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
quick=${1:-}
status=0
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/summary.txt"; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
  nvcc --version | tail -n 2 || true
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' || true; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

step "configure + build (all cores, tests and benchmarks)"
if ! { cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_WERROR=ON &&
       ninja -C build-gpu -j"$(nproc)"; } > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"; step "BUILD FAILED (see build.log)"; exit 1
fi

step "ctest -L gpu"
(cd build-gpu && ctest -L gpu --output-on-failure --timeout 300 -j4) > "$out/ctest-gpu.log" 2>&1 || status=1
tail -n 15 "$out/ctest-gpu.log"

step "ctest -L cpu (sanity, same build)"
(cd build-gpu && ctest -L cpu --timeout 300 -j"$(nproc)") > "$out/ctest-cpu.log" 2>&1 || status=1
tail -n 5 "$out/ctest-cpu.log"

step "PyTorch side-by-side (bench/torch_bench.py)"
if [ -f bench/torch_bench.py ]; then
  timeout 240 python3 bench/torch_bench.py ${quick:+--quick} --json "$out/torch.json" > "$out/torch.log" 2>&1 || status=1
  tail -n 5 "$out/torch.log"
fi

step "kiln-bench"
compare=()
[ -s "$out/torch.json" ] && compare=(--compare "$out/torch.json")
timeout 300 build-gpu/bench/kiln-bench ${quick:+--quick} --json "$out/bench.json" "${compare[@]}" > "$out/bench.log" 2>&1 || status=1
cat "$out/bench.log" | tail -n 80

if [ -z "$quick" ] && [ -f configs/mlp_fashion.yaml ]; then
  step "training run: mlp_fashion on the GPU"
  timeout 120 build-gpu/kiln train configs/mlp_fashion.yaml device=cuda output_dir="$out/run-mlp" > "$out/train-mlp.log" 2>&1 || status=1
  tail -n 5 "$out/train-mlp.log"
fi

step "done, status $status"
exit $status
