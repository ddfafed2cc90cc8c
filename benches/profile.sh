#!/usr/bin/env bash
# Profiles certgate's keep-alive forwarding path with `perf record` (software cpu-clock sampling,
# DWARF call graphs: works where hardware counters are not exposed, as in this sandbox).
#
#   benches/profile.sh PKI_DIR [SECONDS]
#
# PKI_DIR: the `work/pki` folder a run of benches/compare.sh left under target/bench-results/.
# Starts the same upstream and gateway configuration as compare.sh (gateway on core 0, loadgen and
# upstream on core 1), drives 64 HTTP/1.1 keep-alive connections, and writes perf.data plus
# flat and caller reports next to it. Every process started is stopped by its PID.
# Also measures the audit log's share: the same load with RUST_LOG=warn (request lines off).
# CLIENT_CHAIN=full makes the partner present its intermediate too (default: its leaf only), as
# compare.sh's --client-chain (read in bench-env.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$(cd "$1" && pwd)
SECS=${2:-8}
OUT=$ROOT/target/bench-results/profile-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
CERTGATE=$ROOT/target/release/certgate
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done' EXIT
ulimit -n 20000
# shellcheck source=benches/bench-env.sh
. "$ROOT/benches/bench-env.sh"
start_upstream
write_certgate_config "$OUT/certgate.yaml" "  limits: {max_connections: 30000}"

start_gw() { # RUST_LOG value
    RUST_LOG=$1 taskset -c 0 "$CERTGATE" --threads 1 serve --config "$OUT/certgate.yaml" >> "$OUT/certgate.log" 2>&1 &
    GW=$!
    PIDS+=("$GW")
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && return; sleep 0.05; done
}
load() { # seconds label
    taskset -c 1 "$LOADGEN" keepalive --connections 64 --addr 127.0.0.1:$GW_PORT --ca "$P/cas.pem" \
        --cert "$P/$PARTNER_CERT.pem" --key "$P/partner.key" --duration "$1" --warmup 0.5 --watch-pid "$GW" --label "$2"
}

# 1. Audit log on (info) vs off (warn), interleaved, three times each.
for i in 1 2 3; do
    for level in info warn; do
        start_gw "$level"
        load 4 "audit-$level" | tee -a "$OUT/audit-ab.jsonl" | python3 -c \
            "import json,sys; r=json.load(sys.stdin); print(r['label'], round(r['rps']), 'req/s', round(r['watched_cpu_us_per_req'],1), 'us/req', round(r['watched_cpu_util']*100), '% core')" >&2
        kill "$GW"; wait "$GW" 2>/dev/null || true
    done
done

# 2. The profile, audit log on (the default).
start_gw info
load $((SECS + 2)) profile > "$OUT/profile-load.json" &
LG=$!
sleep 1
perf record -F 499 -e cpu-clock --call-graph dwarf,16384 -o "$OUT/perf.data" -p "$GW" -- sleep "$SECS" 2> "$OUT/perf-record.err"
wait "$LG"
kill "$GW"; wait "$GW" 2>/dev/null || true
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^$' | head -150 > "$OUT/flat.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^$' | head -200 > "$OUT/children.txt"
echo "profile written to $OUT" >&2
