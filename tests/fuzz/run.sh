#!/usr/bin/env bash
# Runs every libFuzzer driver of a KILN_FUZZ build for a bounded time each,
# starting from the committed seeds (tests/fuzz/corpus/<parser>/, never
# modified: new inputs go to a scratch corpus in the build directory).
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_FUZZER] [PARSER...]
#
# A finding (crash, sanitizer report, leak, timeout, out-of-memory, uncaught
# exception, broken oracle) stops that fuzzer; its input is saved under
# BUILD_DIR/fuzz/findings/<parser>/ and the script exits 1 after running the
# rest. Prints each fuzzer's executions so CI logs show how far it got; the
# full log of each is BUILD_DIR/fuzz/<parser>.log.
set -uo pipefail
build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [SECONDS] [PARSER...]}
seconds=${2:-30}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
parsers=("$@")
if [ ${#parsers[@]} -eq 0 ]; then
  for d in "$here"/corpus/*/; do
    p=$(basename "$d")
    [ -x "$build/tests/fuzz/fuzz_$p" ] && parsers+=("$p")
  done
fi
[ ${#parsers[@]} -gt 0 ] || { echo "fuzz: no fuzz_* binaries in $build/tests/fuzz (configure with -DKILN_FUZZ=ON)"; exit 2; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One fuzzer per core at a time (KILN_FUZZ_JOBS overrides), each for the full
# time; results are reported in the order the parsers were given.
jobs=${KILN_FUZZ_JOBS:-$(nproc)}
run_one() {
  local p=$1
  local scratch="$build/fuzz/corpus/$p" findings="$build/fuzz/findings/$p" log="$build/fuzz/$p.log"
  mkdir -p "$scratch" "$findings"
  local dict=()
  [ -f "$here/dict/$p.dict" ] && dict=(-dict="$here/dict/$p.dict")
  "$build/tests/fuzz/fuzz_$p" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -max_len=16384 -print_final_stats=1 -artifact_prefix="$findings/" \
    "$scratch" "$here/corpus/$p" >"$log" 2>&1
  echo $? >"$build/fuzz/$p.rc"
}
mkdir -p "$build/fuzz"
running=0
for p in "${parsers[@]}"; do
  run_one "$p" &
  running=$((running + 1))
  if [ $running -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

status=0
for p in "${parsers[@]}"; do
  log="$build/fuzz/$p.log" findings="$build/fuzz/findings/$p"
  rc=$(cat "$build/fuzz/$p.rc" 2>/dev/null || echo 1)
  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz $p: ${execs:-?} executions in ${seconds} s, ${cov:-cov: ?}, no findings"
  else
    status=1
    echo "fuzz $p: FINDING after ${execs:-?} executions (exit $rc); input saved in $findings:"
    ls -1 "$findings" | sed 's/^/  /'
    grep -aE 'ERROR|SUMMARY|fuzz finding|runtime error|terminate called|what\(\)' "$log" | head -20 | sed 's/^/  /'
  fi
done
exit $status
