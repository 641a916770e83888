#!/usr/bin/env bash
# The README's test command: sets up, builds and runs every test.
#
#   tools/test.sh                # set up, build, run all tests, sanitizers and fuzzers
#   tools/test.sh --no-setup     # skip tools/setup.sh (packages already installed)
#   tools/test.sh --no-sanitize  # skip the sanitizer + fuzzing build (stage 3)
#
# Three builds:
#   build/       the default build (CUDA backend when nvcc exists; its GPU
#                tests skip without a device and are counted as skipped);
#   build-cpu/   the CPU-only build of the same sources, because CI has no GPU
#                but must never let a CUDA compile error land. Every CPU test
#                runs in both.
#   build-asan/  CPU-only, clang, AddressSanitizer + UndefinedBehaviorSanitizer
#                (-fno-sanitize-recover: any report fails) and libFuzzer
#                coverage. It builds and runs the tests of the code that reads
#                and holds outside data and memory -- data/, runtime/,
#                kernels/, the config and reliability tests, the fuzz corpus
#                replays -- then every fuzzer of tests/fuzz for
#                KILN_FUZZ_SECONDS (default 30) each. The model, training and
#                mpirun tests are left out here: they run the same parsers
#                and kernels at many times the cost under ASan, and CI must
#                finish in 35 minutes on 2 cores (README, "Sanitizers and fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1 sanitize=1
for a in "$@"; do
  case "$a" in
    --no-setup) setup=0 ;;
    --no-sanitize) sanitize=0 ;;
    *) echo "usage: tools/test.sh [--no-setup] [--no-sanitize]" >&2; exit 2 ;;
  esac
done
if [ $setup = 1 ]; then bash tools/setup.sh; fi

jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
stamp() { echo "[$(date +%H:%M:%S), ${SECONDS} s] $*"; }

stamp "== build/ (default: CUDA backend if a toolkit is present) =="
cmake -S . -B build -G Ninja -DKILN_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$jobs"
stamp "== build-cpu/ (CPU-only) =="
cmake -S . -B build-cpu -G Ninja -DKILN_CUDA=OFF -DKILN_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build-cpu -j"$jobs"

stamp "== tests: build/ =="
(cd build && ctest --output-on-failure -j"$jobs")
stamp "== tests: build-cpu/ =="
(cd build-cpu && ctest --output-on-failure -j"$jobs" -L 'cpu|dist')

if [ $sanitize = 1 ]; then
  stamp "== build-asan/ (CPU-only, clang, ASan + UBSan + libFuzzer) =="
  # -O1 keeps ASan's reports exact and the build short; line tables are
  # enough for symbolized stacks. NDEBUG is not defined: asserts stay on.
  cmake -S . -B build-asan -G Ninja -DKILN_CUDA=OFF -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DKILN_SANITIZE=address,undefined -DKILN_FUZZ=ON -DKILN_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_FLAGS_RELEASE="-O1 -gline-tables-only" -DCMAKE_C_FLAGS_RELEASE="-O1 -gline-tables-only" >/dev/null
  # The sanitizer stage's tests: every data/, runtime/ and kernels/ test, the
  # trainers' config and reliability tests (the latter through the sanitized
  # kiln binary), and the fuzz corpus replays.
  targets=()
  for src in tests/data/*_test.cpp tests/runtime/*_test.cpp tests/kernels/*_test.cpp; do
    layer=$(basename "$(dirname "$src")")
    targets+=("${layer}_$(basename "$src" .cpp)")
  done
  targets+=(trainers_config_test trainers_reliability_test kiln)
  fuzzers=()
  for d in tests/fuzz/corpus/*/; do
    p=$(basename "$d")
    if ninja -C build-asan -t targets all 2>/dev/null | grep -q "^fuzz_${p}:"; then
      fuzzers+=("$p")
      targets+=("fuzz_$p" "fuzz_${p}_replay")
    fi
  done
  ninja -C build-asan -j"$jobs" "${targets[@]}"
  stamp "== tests: build-asan/ =="
  names=$(printf '%s\n' "${targets[@]}" | grep -v '^kiln$' | grep -v '^fuzz_' | paste -sd'|')
  replays=$(printf '%s\n' "${fuzzers[@]}" | sed 's/.*/fuzz_&_corpus/' | paste -sd'|')
  # Leaks count as findings; OpenMPI's own allocations at exit are not ours.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  (cd build-asan && ctest --output-on-failure -j"$jobs" -L cpu -R "^(${names}|${replays})\$")
  stamp "== fuzzers: build-asan/ (${KILN_FUZZ_SECONDS:-30} s each) =="
  bash tests/fuzz/run.sh build-asan "${KILN_FUZZ_SECONDS:-30}" "${fuzzers[@]}"
fi
stamp "== all tests passed =="
