#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for N seconds each and prints runs, coverage and
# findings per target.
#
#   fuzz/run.sh [-t SECONDS] [--toolchain nightly|stable|auto] [--corpus DIR] [target ...]
#
#   -t SECONDS      per target (default 30); FUZZ_JOBS=2 runs two targets at a time
#   --toolchain     nightly (default): `cargo +nightly fuzz`, AddressSanitizer.
#                   stable: plain `cargo` (the default toolchain, stable in CI), `--sanitizer
#                     none`. No -Z flag is needed then: cargo-fuzz passes only -C options and
#                     --cfg fuzzing. Panics and the targets' assertions are still caught; memory
#                     errors in unsafe code (and C code) are not.
#                   auto: nightly if rustup has it installed, else stable (what CI uses).
#   --corpus DIR    corpus root (default fuzz/corpus), seeded before the run; CI passes a temp dir
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`) and openssl (OCSP seeds). The corpus is
# seeded from fuzz/seeds, the x509-limbo vectors and real `openssl ocsp` responses
# (seed_corpus.py); crashes land in fuzz/artifacts/<target>/, logs in fuzz/logs/.
# Exits 1 when a target finds anything (a new artifact, or libFuzzer exiting non-zero).
set -euo pipefail

secs=30
toolchain=nightly
corpus=
while [[ $# -gt 0 ]]; do
  case $1 in
    -t) secs=$2; shift 2 ;;
    --toolchain) toolchain=$2; shift 2 ;;
    --corpus) corpus=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
targets=("$@")
cd "$(dirname "$0")"
corpus=${corpus:-$PWD/corpus}

if [[ $toolchain == auto ]]; then
  # Asking rustup rather than trying `cargo +nightly`, which a rustup that auto-installs
  # toolchains would try to download.
  if rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null; then
    toolchain=nightly
  else
    toolchain=stable
  fi
fi
case $toolchain in
  nightly) cargo=(cargo +nightly); sanitizer=(); ;;
  stable) cargo=(cargo); sanitizer=(-s none) ;;
  *) echo "run.sh: --toolchain nightly|stable|auto, not $toolchain" >&2; exit 2 ;;
esac
if ! "${cargo[@]}" fuzz --version >/dev/null; then
  echo "run.sh: '${cargo[*]} fuzz' does not work: install cargo-fuzz (and the $toolchain toolchain)" >&2
  exit 1
fi
echo "fuzz: $("${cargo[@]}" --version), $("${cargo[@]}" fuzz --version), sanitizer ${sanitizer[1]:-address}, ${secs}s per target"

if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <("${cargo[@]}" fuzz list)
  if [[ ${#targets[@]} -eq 0 ]]; then echo "run.sh: '${cargo[*]} fuzz list' found no target" >&2; exit 1; fi
fi
jobs=${FUZZ_JOBS:-1}

python3 seed_corpus.py --out "$corpus" >/dev/null
"${cargo[@]}" fuzz build -O "${sanitizer[@]}"

mkdir -p logs
run_one() {
  local t=$1
  mkdir -p "$corpus/$t" "artifacts/$t"
  find "artifacts/$t" -type f | sort >"logs/$t.artifacts"
  local start=$SECONDS
  set +e
  "${cargo[@]}" fuzz run -O "${sanitizer[@]}" "$t" "$corpus/$t" -- -max_total_time="$secs" \
    -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1
  local rc=$?
  set -e
  local new
  new=$(find "artifacts/$t" -type f | sort | comm -13 "logs/$t.artifacts" -)
  local runs cov ft
  # (a crashed run may print none of these)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1) || true
  cov=$(grep -oE '(#[0-9]+).*cov: [0-9]+' "logs/$t.log" | tail -1 | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+') || true
  ft=$(grep -oE 'ft: [0-9]+' "logs/$t.log" | tail -1 | grep -oE '[0-9]+') || true
  printf '%-14s %4ss  runs %-10s cov %-6s ft %-6s corpus %-6s findings %s (exit %s)\n' \
    "$t" "$((SECONDS - start))" "${runs:-?}" "${cov:-?}" "${ft:-?}" \
    "$(find "$corpus/$t" -type f | wc -l)" "$(grep -c . <<<"$new" || true)" "$rc"
  if [[ $rc -ne 0 || -n $new ]]; then
    {
      echo "$t: FINDING (libFuzzer exit $rc), log fuzz/logs/$t.log, new artifacts:"
      sed 's/^/  fuzz\//' <<<"$new"
      # from the panic or sanitizer report on, else the end of the log
      if grep -qE 'panicked at|ERROR: ' "logs/$t.log"; then
        sed -nE '/panicked at|ERROR: /,$p' "logs/$t.log" | sed -n 1,60p
      else
        tail -n 40 "logs/$t.log"
      fi
    } >&2
    return 1
  fi
}

failed=0
if [[ $jobs -le 1 ]]; then
  for t in "${targets[@]}"; do run_one "$t" || failed=1; done
else
  pids=()
  for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    if (( ${#pids[@]} % jobs == 0 )); then
      for p in "${pids[@]}"; do wait "$p" || failed=1; done
      pids=()
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
fi
exit $failed
