#!/usr/bin/env bash
# Instructions and system calls per proxied keep-alive request, for one or more certgate binaries
# side by side: a measure that does not move with the machine's load, unlike req/s or CPU time.
#
#   benches/instructions.sh PKI_DIR BINARY [BINARY ...]
#
# PKI_DIR: the `work/pki` folder a run of benches/compare.sh left under target/bench-results/.
# For each binary: the gateway runs under `valgrind --tool=callgrind` uninstrumented, a
# loadgen drives 16 keep-alive connections through it to a plain nginx upstream (HTTP/1.1, or
# HTTP/2 with PROTO=h2, one stream in flight per connection unless STREAMS=N), and
# instrumentation is switched on for a fixed window once the connections are warm. The requests in
# the window are the calls callgrind counted to the function that ends each request (its audit
# line and metrics), so
#   instructions/request = Ir collected ÷ requests in the window
# (the gateway's `certgate_requests_total` before and after the window, also shown, drifts from
# that on a loaded machine: switching instrumentation on and off takes effect late there)
# (user-space instructions only: the kernel's share of a request is not in it). A second pass runs
# the same load under `strace -c -f` and reports system calls per request by name.
# Loopback only; every process started is stopped by its PID. Output under target/bench-results/.
# CLIENT_CHAIN=full makes the partner present its intermediate too (default: its leaf only), as
# compare.sh's --client-chain (read in bench-env.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$(cd "$1" && pwd)
shift
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
WINDOW=${WINDOW:-8}
PROTO=${PROTO:-http1}
STREAMS=${STREAMS:-1}
OUT=$ROOT/target/bench-results/instructions-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
PIDS=()
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
trap 'for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done' EXIT
for tool in valgrind callgrind_control strace nginx; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind strace nginx)" >&2; exit 1; }
done

# shellcheck source=benches/bench-env.sh
. "$ROOT/benches/bench-env.sh"
start_upstream
write_certgate_config "$OUT/certgate.yaml"

wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; return 1; }
requests() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^certgate_requests_total/ { s += $NF } END { printf "%d\n", s }'
}
load() { # seconds
    taskset -c 1 "$LOADGEN" keepalive --connections 16 --proto "$PROTO" --streams "$STREAMS" --addr "127.0.0.1:$GW_PORT" --ca "$P/cas.pem" \
        --cert "$P/$PARTNER_CERT.pem" --key "$P/partner.key" --duration "$1" --warmup 0.1 --label load
}

# Calls into the function whose name contains $2, summed over a callgrind output file (whose
# names are compressed: "(id) name" the first time, "(id)" after).
calls_to() {
    python3 - "$1" "$2" <<'PY'
import re, sys
names, calls, callee = {}, 0, ""
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
    if m:
        if m.group(3) is not None:
            names[m.group(2)] = m.group(3)
        if m.group(1) == "cfn":
            callee = names.get(m.group(2), "")
    elif line.startswith("calls=") and sys.argv[2] in callee:
        calls += int(line[6:].split()[0])
print(calls)
PY
}

printf '%s\n' "binary,instructions_per_request,requests_in_window,syscalls_per_request" > "$OUT/summary.csv"
for bin in "${BINS[@]}"; do
    name=$(basename "$(dirname "$bin")")/$(basename "$bin")
    # 1. Instructions.
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.%p" \
        "$bin" --threads 1 serve --config "$OUT/certgate.yaml" > "$OUT/gw.log" 2>&1 &
    GW=$!; PIDS+=("$GW")
    wait_port "$GW_PORT"
    load $((WINDOW + 12)) > "$OUT/load.json" &
    LG=$!
    sleep 6
    r1=$(requests)
    callgrind_control -i on "$GW" >/dev/null
    sleep "$WINDOW"
    callgrind_control -i off "$GW" >/dev/null
    r2=$(requests)
    wait "$LG" || true
    stop "$GW"
    run=$((${run:-0} + 1))
    cg="$OUT/callgrind-$run-$(basename "$bin").out"
    cat "$OUT"/callgrind.* > "$cg"
    rm -f "$OUT"/callgrind.*
    ir=$(awk '/^totals:/ { print $2; exit }' "$cg")
    n=$(calls_to "$cg" 'Exchange as certgate::upstream::body::OnFinish>::finish')
    echo "run $run: $n requests counted by callgrind, $((r2 - r1)) by the metrics" >&2
    ipr=$(python3 -c "print(round($ir / max($n, 1)))")
    # 2. System calls.
    taskset -c 0 strace -f -c -o "$OUT/strace.txt" "$bin" --threads 1 serve --config "$OUT/certgate.yaml" \
        > "$OUT/gw-strace.log" 2>&1 &
    GW=$!; PIDS+=("$GW")
    wait_port "$GW_PORT"
    load 6 > /dev/null
    n2=$(requests)
    # strace detaches on SIGTERM and leaves the gateway running: stop the gateway itself, and
    # strace writes its table once it exits.
    stop "$(pgrep -P "$GW" | head -1)"
    stop "$GW"
    calls=$(awk '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" { s += $4 } END { print s }' "$OUT/strace.txt")
    spr=$(python3 -c "print(round($calls / max($n2, 1), 2))")
    echo "$name,$ipr,$n,$spr" >> "$OUT/summary.csv"
    printf '%-40s %9s instructions/request (%s requests)  %s syscalls/request\n' "$name" "$ipr" "$n" "$spr" >&2
    awk -v n="$n2" '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" && $4 / n >= 0.05 { printf "      %-16s %6.2f/request\n", $NF, $4 / n }' \
        "$OUT/strace.txt" >&2
done
echo "written to $OUT/summary.csv" >&2
