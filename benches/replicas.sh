#!/usr/bin/env bash
# Revoke → cut across replicas: one PostgreSQL registry, two control-plane replicas, three
# gateways, every one a separate process on its own loopback ports.
#
#   benches/replicas.sh [CERTGATE_BINARY]     (default target/measure/certgate)
#
#   - PostgreSQL: a throwaway cluster (initdb into the output folder, postgres on PG_PORT,
#     as the `postgres` user when run as root), stopped by its PID at the end;
#   - control-plane replicas A and B (`certgate control-plane`), each with its own state folder
#     holding a copy of one CA, both on the same database;
#   - gateways gw1 → A, gw2 → B, gw3 → A (`lifecycle.source`: long poll of /generation, 1 s
#     retry), one nginx upstream;
#   - REVOCATIONS rounds (default 20): a fresh partner is onboarded with the real CLI (register,
#     approve, issue from an openssl CSR) through one replica; once all three gateways serve it,
#     it opens one keep-alive connection to each (a request answered 200, then idle), and
#     `certgate partner revoke` runs through the other replica. Recorded per gateway: the time
#     from starting the revoke command to its connection being closed.
# Prints p50/p90/p99/max over all cuts and per gateway, and writes cuts.csv.
#
# Then failover under load (PHASES="cuts failover" by default; either alone works):
#   - HAProxy in TCP mode on FAILOVER_PORT in front of the three gateways, round robin, health
#     checked on each gateway's /readyz every 250 ms, a refused connect redispatched;
#   - LOOPS curl loops (half of them on a route whose upstream answers after 1 s, so requests
#     are in flight at any moment), every request a new connection, for LOAD_SECONDS;
#   - gw2 is killed (SIGKILL) a quarter of the way in, and restarted on its kept copy a quarter
#     later; its /readyz is polled every 20 ms from before the restart.
# Checked, from every request's start, end and status: each failure was in flight at the kill;
# every request started after it was served. At gw2's first ready answer: it serves the newest
# partner, refuses a revoked one, and holds the control plane's generation. Written to
# requests.csv and failover.txt.
#
# Loopback only; every process started is stopped by its PID. Output under
# target/bench-results/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/measure/certgate}")
N=${REVOCATIONS:-20}
PHASES=${PHASES:-cuts failover}
FAILOVER_PORT=${FAILOVER_PORT:-28460} SLOW_PORT=${SLOW_PORT:-28181}
LOOPS=${LOOPS:-6} LOAD_SECONDS=${LOAD_SECONDS:-24}
PG_PORT=${PG_PORT:-25432} UP_PORT=${UP_PORT:-28180}
FEED_A=${FEED_A:-29902} FEED_B=${FEED_B:-29903}
GW_PORTS=(28451 28452 28453) ADMIN_PORTS=(29911 29912 29913)
OUT=$ROOT/target/bench-results/replicas-$(date -u +%Y%m%dT%H%M%SZ)
P=$OUT/pki
mkdir -p "$P"
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
    return 0
}
trap cleanup EXIT
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
for tool in nginx openssl curl python3 /usr/sbin/haproxy; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pg_bin/initdb" ] || { echo "needs the PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }
log "binary: $BIN"
log "load: $(uptime)"

# --- PostgreSQL ----------------------------------------------------------------------------------
as_pg=()
if [ "$(id -u)" = 0 ]; then
    as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
    mkdir -p "$OUT/pg" && chown postgres: "$OUT/pg"
else
    mkdir -p "$OUT/pg"
fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$OUT/pg/data" -U certgate -A trust -E UTF8 --locale=C --no-sync > "$OUT/pg/initdb.log"
"${as_pg[@]}" "$pg_bin/postgres" -D "$OUT/pg/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$OUT/pg" -c fsync=off > "$OUT/pg/postgres.log" 2>&1 &
PIDS+=($!)
DB="postgres://certgate@127.0.0.1:$PG_PORT/postgres"
for _ in $(seq 200); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.1
done
"$pg_bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >&2

# --- server PKI, upstream ------------------------------------------------------------------------
(
    cd "$P"
    printf '[server]\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf
    ec=(genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)
    openssl "${ec[@]}" -out root.key 2>/dev/null
    openssl req -new -x509 -key root.key -subj "/CN=replicas root" -days 30 \
        -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign \
        -out root.pem 2>/dev/null
    openssl "${ec[@]}" -out server.key 2>/dev/null
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA root.pem -CAkey root.key -set_serial 0x300 -days 30 \
        -extfile ext.cnf -extensions server -out server.pem 2>/dev/null
)
mkdir -p "$OUT/up/tmp"
cat > "$OUT/up/nginx.conf" <<EOF
user root; worker_processes 1; master_process off; pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $OUT/up/tmp; proxy_temp_path $OUT/up/tmp;
  fastcgi_temp_path $OUT/up/tmp; uwsgi_temp_path $OUT/up/tmp; scgi_temp_path $OUT/up/tmp;
  server { listen 127.0.0.1:$UP_PORT; default_type text/plain; location / { return 200 "ok"; } } }
EOF
nginx -p "$OUT/up" -c "$OUT/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
# The slow upstream: every answer after 1 s, so requests are in flight when a gateway dies.
python3 - "$SLOW_PORT" <<'EOF' > "$OUT/up/slow.log" 2>&1 &
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(1)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
EOF
PIDS+=($!)

# --- configurations ------------------------------------------------------------------------------
config() { # file listen admin lifecycle-lines
    cat > "$1" <<EOF
server:
  listen: "127.0.0.1:$2"
  tls:
    certificates: [{cert: $P/server.pem, key: $P/server.key}]
  client_auth:
    trust_bundles: []
admin: {listen: "127.0.0.1:$3"}
upstreams:
  origin: {endpoints: ["http://127.0.0.1:$UP_PORT"]}
  slow: {endpoints: ["http://127.0.0.1:$SLOW_PORT"], request_timeout: 5s}
routes:
  - {name: orders, path_prefix: /v1, scope: "orders:read", upstream: origin}
  - {name: slow, path_prefix: /v1/slow, scope: "orders:read", upstream: slow}
lifecycle:
$4
EOF
}
config "$OUT/cp-a.yaml" 28450 29910 "  state_dir: $OUT/cp-a
  database: $DB"
config "$OUT/cp-b.yaml" 28450 29910 "  state_dir: $OUT/cp-b
  database: $DB"
"$BIN" ca init --config "$OUT/cp-a.yaml" > /dev/null
mkdir -p "$OUT/cp-b/ca" && cp -p "$OUT/cp-a/ca/"* "$OUT/cp-b/ca/"

"$BIN" control-plane --config "$OUT/cp-a.yaml" --listen "127.0.0.1:$FEED_A" > "$OUT/cp-a.log" 2>&1 &
PIDS+=($!)
"$BIN" control-plane --config "$OUT/cp-b.yaml" --listen "127.0.0.1:$FEED_B" > "$OUT/cp-b.log" 2>&1 &
PIDS+=($!)
for feed in "$FEED_A" "$FEED_B"; do
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$feed/readyz")" = 200 ] && break
        sleep 0.1
    done
done

sources=("$FEED_A" "$FEED_B" "$FEED_A")
GW_PIDS=()
for i in 0 1 2; do
    config "$OUT/gw$((i + 1)).yaml" "${GW_PORTS[$i]}" "${ADMIN_PORTS[$i]}" "  state_dir: $OUT/gw$((i + 1))-state
  source: http://127.0.0.1:${sources[$i]}"
    "$BIN" serve --config "$OUT/gw$((i + 1)).yaml" > "$OUT/gw$((i + 1)).log" 2>&1 &
    PIDS+=($!) GW_PIDS+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ADMIN_PORTS[$i]}/readyz")" = 200 ] && break
        sleep 0.1
    done
done
log "2 control-plane replicas, 3 gateways ready"

# --- rounds --------------------------------------------------------------------------------------
onboard() { # config partner
    local id=$2 spiffe="spiffe://partners.example.com/$2"
    "$BIN" partner register "$id" --owner ops@example.com --scopes orders:read --spiffe "$spiffe" \
        --actor alice --config "$1" 2>> "$OUT/cli.log" > /dev/null
    "$BIN" partner approve "$id" --actor bob --config "$1" 2>> "$OUT/cli.log" > /dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/$id.key" 2>/dev/null
    openssl req -new -key "$P/$id.key" -subj "/" -addext "subjectAltName=URI:$spiffe" \
        -out "$P/$id.csr" 2>/dev/null
    "$BIN" partner issue "$id" --csr "$P/$id.csr" --out "$P/$id.pem" --actor carol --config "$1" 2>> "$OUT/cli.log" > /dev/null
}
served_everywhere() { # partner
    for port in "${GW_PORTS[@]}"; do
        for _ in $(seq 300); do
            code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$P/root.pem" --cert "$P/$1.pem" \
                --key "$P/$1.key" "https://localhost:$port/v1/x" --resolve "localhost:$port:127.0.0.1" || true)
            [ "$code" = 200 ] && continue 2
            sleep 0.05
        done
        echo "gateway $port never served $1" >&2
        return 1
    done
}
cut_round() { # partner revoke-config → "s1 s2 s3"
    python3 - "$P/root.pem" "$P/$1.pem" "$P/$1.key" "$BIN" "$2" "$1" "${GW_PORTS[@]}" <<'EOF'
import select, socket, ssl, subprocess, sys, time
ca, cert, key, binary, config, partner, *ports = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
socks = {}
for port in ports:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
    s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    s.setblocking(False)
    socks[s] = port
cut = {}
t0 = time.monotonic()
cli = subprocess.Popen([binary, "partner", "revoke", partner, "--reason", "keyCompromise",
                        "--actor", "dave", "--config", config],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = t0 + 30
while socks and time.monotonic() < deadline:
    ready, _, _ = select.select(list(socks), [], [], 0.5)
    for s in ready:
        try:
            data = s.recv(65536)
        except ssl.SSLWantReadError:
            continue
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            cut[socks.pop(s)] = time.monotonic() - t0
            s.close()
assert cli.wait() == 0, "revoke failed"
print(" ".join(f"{cut.get(p, float('nan')):.3f}" for p in ports))
EOF
}
cuts_phase() {
echo "round,partner,onboarded_via,revoked_via,gateway,follows,revoke_to_cut_s" > "$OUT/cuts.csv"
follows=(A B A)
for k in $(seq 1 "$N"); do
    if [ $((k % 2)) = 1 ]; then on=A off=B; else on=B off=A; fi
    on_cfg=$OUT/cp-${on,,}.yaml off_cfg=$OUT/cp-${off,,}.yaml
    onboard "$on_cfg" "p$k"
    served_everywhere "p$k"
    read -r -a cuts <<< "$(cut_round "p$k" "$off_cfg")"
    for i in 0 1 2; do
        echo "$k,p$k,$on,$off,gw$((i + 1)),${follows[$i]},${cuts[$i]}" >> "$OUT/cuts.csv"
    done
    log "round $k: revoke via $off → cut on gw1 ${cuts[0]} s, gw2 ${cuts[1]} s, gw3 ${cuts[2]} s"
done
log "load: $(uptime)"

python3 - "$OUT/cuts.csv" <<'EOF'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]
def line(name, xs):
    return f"{name:<28} n={len(xs):<3} p50={pct(xs,50):.3f}s p90={pct(xs,90):.3f}s p99={pct(xs,99):.3f}s max={max(xs):.3f}s"
all_ = [float(r["revoke_to_cut_s"]) for r in rows]
print(line("all gateways", all_))
for gw in sorted({r["gateway"] for r in rows}):
    xs = [float(r["revoke_to_cut_s"]) for r in rows if r["gateway"] == gw]
    print(line(f"{gw} (follows {rows[[r['gateway'] for r in rows].index(gw)]['follows']})", xs))
same = [float(r["revoke_to_cut_s"]) for r in rows if r["follows"] == r["revoked_via"]]
other = [float(r["revoke_to_cut_s"]) for r in rows if r["follows"] != r["revoked_via"]]
print(line("revoked via its replica", same))
print(line("revoked via the other", other))
EOF
}

failover_phase() {
    # A current partner for the load, and a revoked one that a ready gateway must refuse.
    onboard "$OUT/cp-a.yaml" load
    onboard "$OUT/cp-b.yaml" gone
    served_everywhere load
    served_everywhere gone
    "$BIN" partner revoke gone --reason keyCompromise --actor dave --config "$OUT/cp-a.yaml" 2>> "$OUT/cli.log" > /dev/null
    for port in "${GW_PORTS[@]}"; do
        for _ in $(seq 300); do
            curl -s -o /dev/null --cacert "$P/root.pem" --cert "$P/gone.pem" --key "$P/gone.key" \
                "https://localhost:$port/v1/x" --resolve "localhost:$port:127.0.0.1" || break
            sleep 0.05
        done
    done

    local servers="" i
    for i in 0 1 2; do
        servers+="  server gw$((i + 1)) 127.0.0.1:${GW_PORTS[$i]} check port ${ADMIN_PORTS[$i]} inter 250ms fall 1 rise 2"$'\n'
    done
    cat > "$OUT/haproxy.cfg" <<EOF
global
  maxconn 512
defaults
  mode tcp
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
listen gateways
  bind 127.0.0.1:$FAILOVER_PORT
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz
$servers
EOF
    /usr/sbin/haproxy -db -q -f "$OUT/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -s -o /dev/null --cacert "$P/root.pem" --cert "$P/load.pem" --key "$P/load.key" \
            "https://localhost:$FAILOVER_PORT/v1/x" --resolve "localhost:$FAILOVER_PORT:127.0.0.1" && break
        sleep 0.1
    done
    sleep 1 # every backend passed its health checks

    # Load: LOOPS curl loops, a new connection per request, until the deadline.
    local t_start t_end loop_pids=()
    t_start=$EPOCHREALTIME
    t_end=$(( ${t_start%.*} + LOAD_SECONDS ))
    for i in $(seq 1 "$LOOPS"); do
        local path=/v1/x
        [ $((i % 2)) = 0 ] && path=/v1/slow/x
        (
            while [ "${EPOCHREALTIME%.*}" -lt "$t_end" ]; do
                s=$EPOCHREALTIME
                code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$P/root.pem" \
                    --cert "$P/load.pem" --key "$P/load.key" \
                    "https://localhost:$FAILOVER_PORT$path" --resolve "localhost:$FAILOVER_PORT:127.0.0.1" || true)
                echo "$i,$path,$s,$EPOCHREALTIME,$code"
            done
        ) > "$OUT/loop-$i.csv" &
        loop_pids+=($!)
    done

    # Kill gw2 a quarter of the way in; restart it a quarter later.
    sleep "$(python3 -c "print($LOAD_SECONDS / 4)")"
    local killed_at restarted_at
    killed_at=$EPOCHREALTIME
    kill -KILL "${GW_PIDS[1]}"
    wait "${GW_PIDS[1]}" 2>/dev/null || true
    log "gw2 killed"
    sleep "$(python3 -c "print($LOAD_SECONDS / 4)")"
    # Readiness, every 20 ms from before the restart: the first 200, and what the gateway does
    # at that moment.
    python3 - "${ADMIN_PORTS[1]}" "${GW_PORTS[1]}" "$P/root.pem" "$P" "$FEED_A" "$OUT/restarted_at" > "$OUT/readiness.txt" <<'EOF' &
import json, os, socket, ssl, sys, time, urllib.request
admin, port, ca, pki, feed, stamp = sys.argv[1:]
open(stamp + ".polling", "w").close()
while not os.path.exists(stamp):
    time.sleep(0.005)
polls = {"refused": 0, "503": 0}
deadline = time.time() + 60
while time.time() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except urllib.error.HTTPError as e:
        polls[str(e.code)] = polls.get(str(e.code), 0) + 1
    except OSError:
        polls["refused"] += 1
    time.sleep(0.02)
else:
    sys.exit("gw2 never became ready")
ready_after = time.time() - float(open(stamp).read())
def request(partner):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(f"{pki}/{partner}.pem", f"{pki}/{partner}.key")
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=5), server_hostname="localhost")
        s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = s.recv(65536)
        return head.split(b"\r\n", 1)[0].decode() or "closed"
    except (ssl.SSLError, OSError) as e:
        return f"refused ({type(e).__name__})"
with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=2) as r:
    held = json.load(r)["lifecycle_source"]["generation"]
with urllib.request.urlopen(f"http://127.0.0.1:{feed}/generation", timeout=2) as r:
    generation = json.load(r)["generation"]
current, revoked = request("load"), request("gone")
print(f"ready {ready_after:.3f} s after the restart; polls before: {polls}")
print(f"at ready: current partner → {current}; revoked partner → {revoked}; generation {held} (control plane {generation})")
ok = current.startswith("HTTP/1.1 200") and not revoked.startswith("HTTP/1.1 200") and held == int(generation)
print("readiness order: " + ("ok" if ok else "VIOLATED"))
EOF
    local poller=$!
    while [ ! -e "$OUT/restarted_at.polling" ]; do sleep 0.01; done
    echo "$EPOCHREALTIME" > "$OUT/restarted_at"
    restarted_at=$(cat "$OUT/restarted_at")
    "$BIN" serve --config "$OUT/gw2.yaml" > "$OUT/gw2-restarted.log" 2>&1 &
    GW_PIDS[1]=$! PIDS+=($!)
    wait "$poller"
    for p in "${loop_pids[@]}"; do wait "$p"; done
    cat "$OUT"/loop-*.csv > "$OUT/requests.csv"
    python3 - "$OUT/requests.csv" "$killed_at" "$restarted_at" "$t_start" <<'EOF' | tee "$OUT/failover.txt" >&2
import sys
rows = [l.strip().split(",") for l in open(sys.argv[1]) if l.strip()]
killed, restarted, t0 = map(float, sys.argv[2:])
reqs = [(int(l), p, float(s), float(e), c) for l, p, s, e, c in rows]
failed = [r for r in reqs if r[4] != "200"]
in_flight = [r for r in failed if r[2] <= killed <= r[3]]
after = [r for r in reqs if r[2] > killed]
after_failed = [r for r in after if r[4] != "200"]
print(f"requests: {len(reqs)} ({sum(1 for r in reqs if r[1] == '/v1/x')} fast, {sum(1 for r in reqs if r[1] != '/v1/x')} slow), "
      f"failed: {len(failed)}, of which in flight at the kill: {len(in_flight)}")
for r in failed:
    print(f"  failed: loop {r[0]} {r[1]} started {r[2]-t0:.3f} s, ended {r[3]-t0:.3f} s, status {r[4]} (kill at {killed-t0:.3f} s)")
print(f"started after the kill: {len(after)}, failed: {len(after_failed)}; "
      f"while gw2 was down: {sum(1 for r in after if r[2] < restarted)}, after its restart: {sum(1 for r in after if r[2] >= restarted)}")
print("only in-flight requests failed: " + ("yes" if len(in_flight) == len(failed) and not after_failed else "NO"))
EOF
    cat "$OUT/readiness.txt" >&2
    # The restarted gateway's own account, in order.
    grep -E '"lifecycle copy is current"|"loaded CRL from|accepting partner connections' "$OUT/gw2-restarted.log" |
        python3 -c 'import json, sys
for l in sys.stdin:
    e = json.loads(l)
    print("gw2 log:", e["timestamp"], e["message"][:40])' | tee -a "$OUT/readiness.txt" >&2
    echo "requests answered by the restarted gw2 (one is the readiness check's): $(grep -c '"request answered"' "$OUT/gw2-restarted.log")" |
        tee -a "$OUT/readiness.txt" >&2
}

if [[ " $PHASES " == *" cuts "* ]]; then
    cuts_phase
fi
if [[ " $PHASES " == *" failover "* ]]; then
    failover_phase
fi
echo "written to $OUT" >&2
