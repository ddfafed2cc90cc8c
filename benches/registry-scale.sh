#!/usr/bin/env bash
# The gateway with a large lifecycle registry against the same gateway with a small one, side by
# side, on one release binary:
#
#   benches/registry-scale.sh CERTGATE_BINARY [LOADGEN_BINARY]
#
# Build the binary with the `measure` profile (`cargo build --profile measure`, then
# target/measure/certgate): optimised like a release, without the release's fat LTO. Without
# LOADGEN_BINARY (or with `-`) the handshake and keep-alive rates are skipped; everything else
# is measured.
#
# Two state folders share one CA and the same 10 partners, onboarded with the real CLI (register,
# approve, issue from an openssl CSR); the large one also holds PARTNERS (default 100 000)
# synthetic approved partners, written straight into the registry as register + approve events
# with a correct hash chain (`registry verify` checks it), then published with `registry publish`.
# Measured for each:
#   - `certgate check`: wall time and maximum RSS (`/usr/bin/time -v`);
#   - `serve`: time from start to `/readyz` answering 200, and the RSS then;
#   - handshake and keep-alive rates (loadgen, one partner per window, rotating through the 10),
#     small and large interleaved, ROUNDS rounds, with the gateway's CPU per request;
#   - `certgate partner revoke` to the close of an open keep-alive connection of that partner
#     (CUTS runs each, a different partner every run), and the revoke command's own wall time;
#   - `registry publish` (wall time, maximum RSS), and the gateway's reload of the partner table
#     each publication causes (`reload.elapsed_ms` of its "configuration reloaded" lines).
# Loopback only; ports GW_PORT/UP_PORT/ADMIN_PORT (defaults 28443/28080/29901, away from
# compare.sh's). Every process started is stopped by its PID. Output under target/bench-results/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "$1")
LOADGEN=${2:--}
[ "$LOADGEN" = - ] || LOADGEN=$(realpath "$LOADGEN")
N=${PARTNERS:-100000}
ROUNDS=${ROUNDS:-3}
CUTS=${CUTS:-5}
WINDOW=${WINDOW:-3}
GW_PORT=${GW_PORT:-28443} UP_PORT=${UP_PORT:-28080} ADMIN_PORT=${ADMIN_PORT:-29901}
OUT=$ROOT/target/bench-results/registry-scale-$(date -u +%Y%m%dT%H%M%SZ)
P=$OUT/pki
mkdir -p "$P"
PIDS=()
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
trap 'for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done' EXIT
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }
for tool in nginx openssl curl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
log "load: $(uptime)"

# --- server PKI (the partners' CA is the lifecycle's own) ----------------------------------------
(
    cd "$P"
    printf '[server]\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf
    ec=(genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)
    openssl "${ec[@]}" -out root.key 2>/dev/null
    openssl req -new -x509 -key root.key -subj "/CN=scale root" -days 30 \
        -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign \
        -out root.pem 2>/dev/null
    openssl "${ec[@]}" -out server.key 2>/dev/null
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA root.pem -CAkey root.key -set_serial 0x300 -days 30 \
        -extfile ext.cnf -extensions server -out server.pem 2>/dev/null
)

# --- upstream ------------------------------------------------------------------------------------
mkdir -p "$OUT/up/tmp"
cat > "$OUT/up/nginx.conf" <<EOF
user root; worker_processes 1; master_process off; pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $OUT/up/tmp; proxy_temp_path $OUT/up/tmp;
  fastcgi_temp_path $OUT/up/tmp; uwsgi_temp_path $OUT/up/tmp; scgi_temp_path $OUT/up/tmp;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$UP_PORT; default_type text/plain; location / { return 200 "$(printf 'x%.0s' $(seq 100))"; } } }
EOF
taskset -c 1 nginx -p "$OUT/up" -c "$OUT/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

config() { # name → path
    cat > "$OUT/$1.yaml" <<EOF
server:
  listen: "127.0.0.1:$GW_PORT"
  tls:
    certificates: [{cert: $P/server.pem, key: $P/server.key}]
  client_auth:
    trust_bundles: []
admin: {listen: "127.0.0.1:$ADMIN_PORT"}
upstreams:
  origin: {endpoints: ["http://127.0.0.1:$UP_PORT"]}
partners: []
routes:
  - {name: all, path_prefix: /, scope: bench, upstream: origin}
lifecycle:
  state_dir: $OUT/state-$1
EOF
    echo "$OUT/$1.yaml"
}
SMALL=$(config small)
LARGE=$(config large)
cg() { "$BIN" "$@"; }

# --- the same CA and 10 partners in both ---------------------------------------------------------
log "onboarding 10 partners with the CLI"
cg ca init --config "$SMALL" >/dev/null
for i in $(seq 1 10); do
    cg partner register "p$i" --owner "ops@p$i.example" --scopes bench --cn "bench-p$i" \
        --actor alice --config "$SMALL" >/dev/null
    cg partner approve "p$i" --actor bob --config "$SMALL" >/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/p$i.key" 2>/dev/null
    openssl req -new -key "$P/p$i.key" -subj "/CN=bench-p$i" -out "$P/p$i.csr" 2>/dev/null
    cg partner issue "p$i" --csr "$P/p$i.csr" --out "$P/p$i.pem" --actor alice \
        --config "$SMALL" >/dev/null
done
cp -r "$OUT/state-small" "$OUT/state-large"

log "adding $N synthetic partners to the large registry"
t0=$(date +%s.%N)
python3 - "$OUT/state-large/registry.sqlite" "$N" <<'EOF'
import hashlib, sqlite3, struct, sys
db = sqlite3.connect(sys.argv[1])
n = int(sys.argv[2])
# Templates: p1's register and approve events, byte for byte, with its ID and CN replaced.
(reg,) = db.execute("SELECT data_before || char(0) || data_after || char(0) || time FROM events WHERE partner='p1' AND action='register'").fetchone()
(app,) = db.execute("SELECT data_after || char(0) || time FROM events WHERE partner='p1' AND action='approve'").fetchone()
reg_before, reg_after, reg_time = reg.split("\0")
app_after, app_time = app.split("\0")
row = db.execute("SELECT owner, status, identity_kind FROM partners WHERE id='p1'").fetchone()
last_id, prev = db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
import json
partner_of = lambda after: json.dumps(json.loads(after)["partner"], separators=(",", ":"), ensure_ascii=False)
def sub(text, i):
    return text.replace('"p1"', f'"bulk{i}"').replace("bench-p1", f"bulk-{i}").replace("p1.example", f"bulk{i}.example")
def h(fields):
    m = hashlib.sha256()
    for f in fields:
        m.update(struct.pack(">Q", len(f))); m.update(f)
    return m.hexdigest()
events, partners = [], []
for i in range(n):
    pid = f"bulk{i}"
    for action, actor, time, before, after in (
        ("register", "alice", reg_time, reg_before, sub(reg_after, i)),
        ("approve", "bob", app_time, sub(reg_after, i), sub(app_after, i)),
    ):
        last_id += 1
        digest = h([struct.pack(">q", last_id), time.encode(), actor.encode(), action.encode(),
                    pid.encode(), b"0", before.encode(), after.encode(), prev.encode()])
        events.append((last_id, time, actor, action, pid, None, before, after, prev, digest))
        prev = digest
    partners.append((pid, f"ops@bulk{i}.example", row[1], row[2], f"bulk-{i}", partner_of(sub(app_after, i))))
with db:
    db.executemany("INSERT INTO events (id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)", events)
    db.executemany("INSERT INTO partners (id, owner, status, identity_kind, identity_value, data) VALUES (?,?,?,?,?,?)", partners)
EOF
log "generated in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
cg registry verify --config "$LARGE" | tail -1 >&2
for name in small large; do
    /usr/bin/time -v "$BIN" registry publish --config "$OUT/$name.yaml" > /dev/null 2> "$OUT/publish-$name.txt"
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s }' "$OUT/publish-$name.txt")
    rss=$(awk -F': ' '/Maximum resident/ { print $2 }' "$OUT/publish-$name.txt")
    log "registry publish ($name): ${wall} s, max RSS ${rss} kB (load $(load1))"
done
python3 -c "import json,sys; print('published partners:', len(json.load(open(sys.argv[1]))['partners']))" \
    "$OUT/state-large/published/partners.json" >&2

# --- load time and memory ------------------------------------------------------------------------
{
    echo "registry,check_wall_s,check_max_rss_kb,load1"
    for r in 1 2 3; do
        for name in small large; do
            /usr/bin/time -v "$BIN" check --config "$OUT/$name.yaml" > /dev/null 2> "$OUT/time-$name.txt" || true
            wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s }' "$OUT/time-$name.txt")
            rss=$(awk -F': ' '/Maximum resident/ { print $2 }' "$OUT/time-$name.txt")
            echo "$name,$wall,$rss,$(load1)"
        done
    done
} | tee "$OUT/check.csv" >&2

ready() { for _ in $(seq 1200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz")" = 200 ] && return; sleep 0.02; done; return 1; }
serve() { # name → sets GW
    taskset -c 0 "$BIN" --threads 1 serve --config "$OUT/$1.yaml" > "$OUT/gw-$1.log" 2>&1 &
    GW=$!; PIDS+=("$GW")
}
lg() { taskset -c 1 "$LOADGEN" "$@"; }

# --- start-up, rates -----------------------------------------------------------------------------
echo "registry,round,ready_s,rss_kb,mode,partner,rate,gw_cpu_us_per_req,load1" > "$OUT/rates.csv"
for round in $(seq 1 "$ROUNDS"); do
    for name in small large; do
        t0=$(date +%s.%N)
        serve "$name"
        ready
        t=$(python3 -c "print(round($(date +%s.%N)-$t0,3))")
        rss=$(awk '/VmRSS/ { print $2 }' "/proc/$GW/status")
        [ "$LOADGEN" = - ] && echo "$name,$round,$t,$rss,-,-,-,-,$(load1)" | tee -a "$OUT/rates.csv" >&2
        for mode in handshake keepalive; do
            [ "$LOADGEN" = - ] && break
            if [ "$mode" = handshake ]; then
                pn=$(( (round * 2) % 10 + 1 )) extra=(--concurrency 16)
            else
                pn=$(( (round * 2 + 1) % 10 + 1 )) extra=(--connections 16)
            fi
            j=$(lg "$mode" "${extra[@]}" --addr "127.0.0.1:$GW_PORT" --ca "$P/root.pem" \
                --cert "$P/p$pn.pem" --key "$P/p$pn.key" --path /v1/x --duration "$WINDOW" \
                --warmup 0.5 --watch-pid "$GW" --label "$name")
            echo "$j" >> "$OUT/loadgen.jsonl"
            rate=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['rps']))" "$j")
            cpu=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['watched_cpu_us_per_req'] or 0, 1))" "$j")
            echo "$name,$round,$t,$rss,$mode,p$pn,$rate,$cpu,$(load1)" | tee -a "$OUT/rates.csv" >&2
        done
        stop "$GW"
    done
done

# --- revoke → cut --------------------------------------------------------------------------------
cut_once() { # name partner
    python3 - "$GW_PORT" "$P/root.pem" "$P/$2.pem" "$P/$2.key" "$BIN" "$OUT/$1.yaml" "$2" <<'EOF'
import socket, ssl, subprocess, sys, time
port, ca, cert, key, binary, config, partner = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
head = s.recv(65536)
assert head.startswith(b"HTTP/1.1 200"), head[:80]
s.settimeout(30)
t0 = time.monotonic()
cli = subprocess.Popen([binary, "partner", "revoke", partner, "--reason", "keyCompromise",
                        "--actor", "carol", "--config", config], stdout=subprocess.DEVNULL)
try:
    while s.recv(65536):
        pass
except (ssl.SSLError, OSError):
    pass
cut = time.monotonic() - t0
cli.wait()
print(f"{cut:.3f},{time.monotonic() - t0:.3f}")
EOF
}
echo "registry,partner,revoke_to_cut_s,revoke_cli_s,load1" > "$OUT/cut.csv"
echo "registry,reload_elapsed_ms" > "$OUT/reload.csv"
for name in small large; do
    serve "$name"
    ready
    for k in $(seq 1 "$CUTS"); do
        pn=$((10 - CUTS + k))
        c=$(cut_once "$name" "p$pn")
        echo "$name,p$pn,$c,$(load1)" | tee -a "$OUT/cut.csv" >&2
    done
    # One more publication without a change, then the reloads: one per revoke, one for it.
    t0=$(date +%s.%N)
    cg registry publish --config "$OUT/$name.yaml" > /dev/null
    log "registry publish ($name, gateway running): $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s"
    for _ in $(seq 100); do
        [ "$(grep -c 'configuration reloaded' "$OUT/gw-$name.log")" -gt "$CUTS" ] && break
        sleep 0.1
    done
    ms=$(grep 'configuration reloaded' "$OUT/gw-$name.log" | grep -o 'reload.elapsed_ms[^0-9]*[0-9]*' | grep -o '[0-9]*$' | paste -sd' ')
    echo "$name,$ms" | tee -a "$OUT/reload.csv" >&2
    log "load: $(uptime)"
    stop "$GW"
done
log "load: $(uptime)"
echo "written to $OUT" >&2
