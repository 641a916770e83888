#!/usr/bin/env bash
# The README's main job: set up, build, and train the default recipe —
# an MLP on Fashion-MNIST (configs/mlp_fashion.yaml) — on the GPU if there is
# one, else on the CPU. Extra arguments are config overrides or another config:
#
#   tools/quickstart.sh                                 # configs/mlp_fashion.yaml
#   tools/quickstart.sh configs/mlp_fashion.yaml train.epochs=3
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$(nproc)" kiln

config=configs/mlp_fashion.yaml
if [ $# -gt 0 ] && [[ "$1" == *.yaml ]]; then config=$1; shift; fi
build/kiln train "$config" "$@"
# Loss and accuracy curves beside the metrics (runs/<name>/ unless output_dir was overridden).
name=$(build/kiln validate "$config" "$@" 2>/dev/null | sed -n 's/^output_dir: *\([^ #]*\).*/\1/p' | head -n 1)
if [ -n "$name" ] && [ -f "$name/metrics.jsonl" ]; then build/kiln plot "$name"; fi
