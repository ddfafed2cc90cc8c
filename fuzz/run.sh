#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for N seconds each and prints runs, coverage and
# findings per target.
#
#   fuzz/run.sh [-t SECONDS] [target ...]      (default 30 s; FUZZ_JOBS=2 runs two at a time)
#
# Needs a nightly toolchain and cargo-fuzz. The corpus is seeded from fuzz/seeds and the x509-limbo
# vectors (fuzz/seed_corpus.py); crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

secs=30
if [[ "${1:-}" == "-t" ]]; then secs=$2; shift 2; fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs=${FUZZ_JOBS:-1}

python3 seed_corpus.py >/dev/null
cargo +nightly fuzz build -O

mkdir -p logs
run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  local before
  before=$(find "artifacts/$t" -type f | wc -l)
  local start=$SECONDS
  set +e
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -print_final_stats=1 >"logs/$t.log" 2>&1
  local rc=$?
  set -e
  local after
  after=$(find "artifacts/$t" -type f | wc -l)
  local runs cov ft
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -oE '(#[0-9]+).*cov: [0-9]+' "logs/$t.log" | tail -1 | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+')
  ft=$(grep -oE 'ft: [0-9]+' "logs/$t.log" | tail -1 | grep -oE '[0-9]+')
  printf '%-14s %4ss  runs %-10s cov %-6s ft %-6s corpus %-6s findings %s (exit %s)\n' \
    "$t" "$((SECONDS - start))" "${runs:-?}" "${cov:-?}" "${ft:-?}" \
    "$(find "corpus/$t" -type f | wc -l)" "$((after - before))" "$rc"
}

if [[ $jobs -le 1 ]]; then
  for t in "${targets[@]}"; do run_one "$t"; done
else
  i=0
  for t in "${targets[@]}"; do
    run_one "$t" &
    i=$((i + 1))
    if (( i % jobs == 0 )); then wait; fi
  done
  wait
fi
