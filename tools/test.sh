#!/usr/bin/env bash
# The README's test command: sets up, builds and runs every test.
#
#   tools/test.sh            # set up, build (CUDA backend if a toolkit exists, and
#                            # a CPU-only build), run all tests
#   tools/test.sh --no-setup # skip tools/setup.sh (packages already installed)
#
# Two builds, because CI has no GPU but must never let a CUDA compile error
# land: build/ is the default build (CUDA backend when nvcc exists; its GPU
# tests skip without a device and are counted as skipped), build-cpu/ is the
# CPU-only build of the same sources. Every CPU test runs in both.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-setup" ]; then bash tools/setup.sh; fi

jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== build/ (default: CUDA backend if a toolkit is present) =="
cmake -S . -B build -G Ninja -DKILN_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$jobs"
echo "== build-cpu/ (CPU-only) =="
cmake -S . -B build-cpu -G Ninja -DKILN_CUDA=OFF -DKILN_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build-cpu -j"$jobs"

echo "== tests: build/ =="
(cd build && ctest --output-on-failure -j"$jobs")
echo "== tests: build-cpu/ =="
(cd build-cpu && ctest --output-on-failure -j"$jobs" -L 'cpu|dist')
