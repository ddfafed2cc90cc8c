#!/usr/bin/env bash
# certgate vs nginx vs HAProxy doing the same mTLS reverse-proxy job on this machine, in one run.
#
#   benches/compare.sh [--quick] [--rounds N] [--duration S] [--warmup S]
#                      [--peers "certgate nginx haproxy nginx-minlog nginx-min"]
#                      [--idle-conns N] [--no-build] [--baseline PATH] [--variants "ecdsa-none rsa-none ..."]
#                      [--keepalive-only] [--idle-only] [--storm] [--storm-only] [--certgate PATH]
#                      [--handshakes N] [--client-chain leaf|full]
#
# --certgate PATH measures that certgate binary instead of building one. Either way the binary is
# copied into the results first: `cargo bench --no-run --bench loadgen` (the load generator's build)
# rebuilds target/release/certgate under the bench profile, with dev-dependencies' features.
# --baseline PATH adds a peer "baseline": another certgate binary (e.g. the previous commit's
# release build) run with the same config, so a change is measured before/after in one run.
# --variants limits the gateway variants (default: ecdsa-none rsa-none ecdsa-0 ecdsa-10k ecdsa-1m;
# keep-alive and the ECDSA handshake run on ecdsa-none). --idle-conns 0 skips the idle test.
# --keepalive-only runs just the keep-alive rows (implies --variants ecdsa-none --idle-conns 0): more
# and longer rounds in the same time, for a change that only touches the per-request path.
# --idle-only runs just the idle-memory test (no rounds). --storm adds the reconnect storm to each
# round (on the 1M-entry CRL variant): 64 keep-alive connections send while --storm-conns (5 000) new
# connections arrive, each a full mTLS handshake and one request; --storm-only runs just that.
# --handshakes N sets certgate's server.limits.max_concurrent_handshakes (the handshake budget;
# default 8 per worker thread); the baseline peer keeps its config as is, so an older binary still starts.
# --client-chain says what the bench partner presents: its leaf only (the default; the trust
# bundle holds the intermediate, as the independent harness set it up) or its leaf and intermediate
# (`full`). With `full`, certgate also forwards the intermediate upstream as `Client-Cert-Chain`
# (RFC 9440), which no other peer sends: about 600 more bytes on every upstream request.
#
# The same job for every gateway includes the audit trail: certgate writes one JSON line per request
# naming the partner's certificate (subject, serial, fingerprint), the route, the status, the byte
# counts and the timings, so nginx and HAProxy are configured to log the same line, field for field
# where they have the value (their fingerprint is SHA-1; partner comes from a map of the subject
# CN). Peer "nginx-minlog" is nginx with a minimal access log (`reused=... status=...`, no identity):
# not the same job, it runs the keep-alive rows only, as a reference for what the audit line costs.
# Peer "nginx-min" is nginx doing the least it can: `access_log off` and no identity or forwarding
# headers sent upstream; keep-alive rows only, the floor certgate is compared with besides the
# same-job peers.
#
# Needs: root (apt-get for nginx/haproxy/openssl/curl/python3 if missing), a Rust toolchain, 2+ cores.
# Loopback only. Every process it starts is stopped by its PID (also on error, via a trap).
# Pinning: every gateway runs on core 0 (one worker: certgate --threads 1, nginx worker_processes 1,
# HAProxy nbthread 1); loadgen and the shared upstream run on core 1.
# Output: target/bench-results/<timestamp>/{results.jsonl,summary.json,summary.md}; never the repo.
#
# Full run (default: 3 rounds x 5 s windows) takes ~10-12 minutes; --quick (3 rounds x 1.5 s) ~4.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The summary names the command as given, so a table can be reproduced from it.
COMMAND="benches/compare.sh${*:+ $*}"
ROUNDS=3
DURATION=5
WARMUP=1
PEERS="certgate nginx haproxy nginx-minlog nginx-min"
IDLE_CONNS=10000
IDLE_ONLY=0
STORM=0
STORM_CONNS=5000
BUILD=1
QUICK=0
KEEPALIVE_ONLY=0
BASELINE=""
CERTGATE_BIN=""
HANDSHAKES=""
CLIENT_CHAIN=leaf
VARIANTS="ecdsa-none rsa-none ecdsa-0 ecdsa-10k ecdsa-1m"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; DURATION=1.5; WARMUP=0.5 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --peers) PEERS=$2; shift ;;
        --idle-conns) IDLE_CONNS=$2; shift ;;
        --no-build) BUILD=0 ;;
        --certgate) CERTGATE_BIN=$(realpath "$2"); BUILD=0; shift ;;
        --baseline) BASELINE=$(realpath "$2"); PEERS="$PEERS baseline"; shift ;;
        --variants) VARIANTS=$2; shift ;;
        --keepalive-only) KEEPALIVE_ONLY=1; VARIANTS=ecdsa-none; IDLE_CONNS=0 ;;
        --idle-only) IDLE_ONLY=1 ;;
        --storm) STORM=1 ;;
        --storm-only) STORM=1; KEEPALIVE_ONLY=1; VARIANTS=ecdsa-1m; IDLE_CONNS=0 ;;
        --storm-conns) STORM_CONNS=$2; shift ;;
        --handshakes) HANDSHAKES=$2; shift ;;
        --client-chain) CLIENT_CHAIN=$2; shift ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$CLIENT_CHAIN" in
    leaf) PARTNER_CERT=partner; REVOKED_CERT=revoked ;;
    full) PARTNER_CERT=partner-chain; REVOKED_CERT=revoked-chain ;;
    *) echo "--client-chain is leaf or full, not $CLIENT_CHAIN" >&2; exit 2 ;;
esac

GW_PORT=18443
UP_PORT=18080
ADMIN_PORT=19901
GW_CORE=0
LG_CORE=1
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-results/$STAMP
W=$OUT/work
mkdir -p "$W"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- processes: every PID we start, stopped by PID ---------------------------------------------
PIDS=()
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
}
trap cleanup EXIT

# --- tools ---------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian packages may start system services on install; we use our own instances on our own
# ports and leave theirs alone.

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "fd limit $(ulimit -n); results in $OUT"

cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    log "building certgate and loadgen (release profile)"
    cargo build --release --locked --bin certgate >&2
fi
CERTGATE=$OUT/certgate
cp "${CERTGATE_BIN:-$ROOT/target/release/certgate}" "$CERTGATE"
# LOADGEN=path overrides the lookup (e.g. to reuse a binary while cargo is busy elsewhere).
LOADGEN=${LOADGEN:-$(cargo bench --locked --no-run --bench loadgen --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)}
[ -x "$CERTGATE" ] && [ -x "$LOADGEN" ] || { echo "build missing: $CERTGATE / $LOADGEN" >&2; exit 1; }
lg() { taskset -c "$LG_CORE" "$LOADGEN" "$@"; }

# --- one PKI for every peer ----------------------------------------------------------------------
P=$W/pki
mkdir -p "$P"
gen_pki() {
    cd "$P"
    cat > ext.cnf <<'EOF'
[root]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[inter]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    local ec=(genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)
    openssl "${ec[@]}" -out root.key 2>/dev/null
    openssl req -new -key root.key -subj "/O=certgate bench/CN=bench root" -out root.csr 2>/dev/null
    openssl x509 -req -in root.csr -signkey root.key -set_serial 0x100 -days 30 \
        -extfile ext.cnf -extensions root -out root.pem 2>/dev/null
    sign() { # name subject ext issuer serial
        openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
        openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -set_serial "$5" -days 30 \
            -extfile ext.cnf -extensions "$3" -out "$1.pem" 2>/dev/null
    }
    openssl "${ec[@]}" -out inter.key 2>/dev/null
    sign inter "/O=certgate bench/CN=bench intermediate" inter root 0x200
    openssl "${ec[@]}" -out server-ecdsa.key 2>/dev/null
    sign server-ecdsa "/CN=localhost" server inter 0x300
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-rsa.key 2>/dev/null
    sign server-rsa "/CN=localhost" server inter 0x301
    openssl "${ec[@]}" -out partner.key 2>/dev/null
    sign partner "/O=bench/CN=bench-partner" client inter 0x4a1001
    openssl "${ec[@]}" -out revoked.key 2>/dev/null
    sign revoked "/O=bench/CN=bench-revoked" client inter 0x4a1002
    for n in server-ecdsa server-rsa partner revoked; do cat "$n.pem" inter.pem > "$n-chain.pem"; done
    for n in server-ecdsa server-rsa; do cat "$n-chain.pem" "$n.key" > "$n-combined.pem"; done
    cat root.pem inter.pem > cas.pem
    openssl verify -CAfile root.pem -untrusted inter.pem partner.pem server-rsa.pem >/dev/null
    # CRLs: the root's (empty; nginx and HAProxy check every CA in the chain) and the
    # intermediate's with 0, 10 000 and 1 000 000 entries, the latter two listing `revoked`.
    "$LOADGEN" gen-crl --issuer-cert root.pem --issuer-key root.key --count 0 --out root.crl >/dev/null
    "$LOADGEN" gen-crl --issuer-cert inter.pem --issuer-key inter.key --count 0 --out inter-0.crl >/dev/null
    # The idle test needs no CRL: skip the large ones there.
    local sizes="0"
    if [ "$IDLE_ONLY" = 0 ]; then
        sizes="0 10k 1m"
        "$LOADGEN" gen-crl --issuer-cert inter.pem --issuer-key inter.key --count 9999 --revoke 4a1002 --out inter-10k.crl >/dev/null
        "$LOADGEN" gen-crl --issuer-cert inter.pem --issuer-key inter.key --count 999999 --revoke 4a1002 --out inter-1m.crl \
            | tee -a "$OUT/gen-crl.json" >&2
    fi
    for c in $sizes; do
        cat root.crl "inter-$c.crl" > "crl-$c.pem"
        openssl crl -in "inter-$c.crl" -CAfile cas.pem -noout 2>&1 | grep -q "verify OK"
    done
    cd "$ROOT"
}
log "generating the PKI and CRLs"
t0=$(date +%s.%N)
gen_pki
log "PKI done in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"

# --- the upstream: one plain nginx answering a 100-byte 200, the same for everyone -------------
BODY=$(printf 'x%.0s' $(seq 100))
mkdir -p "$W/upstream/logs"
cat > "$W/upstream/nginx.conf" <<EOF
user root;
worker_processes 1;
master_process off;
worker_rlimit_nofile 20000;
pid $W/upstream/nginx.pid;
error_log $W/upstream/logs/error.log warn;
events { worker_connections 16000; }
http {
    access_log off;
    client_body_temp_path $W/upstream/tmp;
    proxy_temp_path $W/upstream/tmp;
    fastcgi_temp_path $W/upstream/tmp;
    uwsgi_temp_path $W/upstream/tmp;
    scgi_temp_path $W/upstream/tmp;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT reuseport backlog=4096;
        default_type text/plain;
        location / { return 200 "$BODY"; }
    }
}
EOF
mkdir -p "$W/upstream/tmp"
taskset -c "$LG_CORE" nginx -p "$W/upstream" -c "$W/upstream/nginx.conf" -g 'daemon off;' &
UP_PID=$!
PIDS+=("$UP_PID")

wait_port() { # port timeout_s
    local deadline=$(( $(date +%s) + $2 ))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}
wait_port "$UP_PORT" 10 || { echo "upstream did not start" >&2; exit 1; }

# --- gateways ------------------------------------------------------------------------------------
# variant: <server key type>-<crl>: ecdsa-none (the main one), rsa-none, ecdsa-0, ecdsa-10k, ecdsa-1m
GW_PID=""
WATCH=""
GW_START_SECS=0
GW_LOG=""

write_certgate() { # variant dir peer
    local v=$1 d=$2 key=${1%%-*} crl=${1#*-}
    local crl_yaml="" budget=""
    if [ "$3" = certgate ] && [ -n "$HANDSHAKES" ]; then
        budget="
    max_concurrent_handshakes: $HANDSHAKES"
    fi
    if [ "$crl" != none ]; then
        crl_yaml="        crl:
          - path: $P/root.crl
          - path: $P/inter-$crl.crl"
    fi
    cat > "$d/certgate.yaml" <<EOF
server:
  listen: "127.0.0.1:$GW_PORT"
  tls:
    certificates:
      - cert: $P/server-$key-chain.pem
        key: $P/server-$key.key
    min_version: "1.2"
  client_auth:
    trust_bundles:
      - name: bench
        ca: $P/cas.pem
$crl_yaml
  limits:
    max_connections: 30000$budget
    idle_timeout: 75s
    # An idle HTTP/1.1 connection closes at the shorter of this and idle_timeout (hyper's header
    # read timer runs between requests): 75 s like the others' keep-alive timeouts, so the idle
    # test's connections outlive a slow opening phase on a loaded machine.
    header_read_timeout: 75s
admin:
  listen: "127.0.0.1:$ADMIN_PORT"
upstreams:
  origin:
    endpoints: ["http://127.0.0.1:$UP_PORT"]
    connect_timeout: 2s
    request_timeout: 30s
partners:
  - id: bench
    owner: perf@example.com
    trust_bundle: bench
    identities:
      - subject_cn: bench-partner
      - subject_cn: bench-revoked
    scopes: [bench]
routes:
  - name: all
    path_prefix: /
    scope: bench
    upstream: origin
forward:
  client_cert_header: rfc9440
  partner_header: X-Partner-Id
EOF
}

# The audit line certgate writes for a request (src/audit.rs), in each peer's log language. The
# `reused` field lets server_side_full_handshakes confirm full handshakes from the server's side.
NGINX_AUDIT_FORMAT='{"timestamp":"$time_iso8601","level":"INFO","message":"request answered","event":"request","decision":"allow","reason":"ok","conn.id":$connection,"client.addr":"$remote_addr:$remote_port","sni":"$ssl_server_name","partner":"$partner","cert.subject":"$ssl_client_s_dn","cert.serial":"$ssl_client_serial","cert.sha1":"$ssl_client_fingerprint","route":"all","upstream":"$upstream_addr","http.method":"$request_method","http.path":"$uri","http.status":$status,"bytes.in":$request_length,"bytes.out":$bytes_sent,"upstream_ms":"$upstream_header_time","duration_ms":$request_time,"reused":"$ssl_session_reused","target":"audit"}'
HAPROXY_AUDIT_FORMAT='{"timestamp":"%trg","level":"INFO","message":"request answered","event":"request","decision":"allow","reason":"ok","conn.id":%rt,"client.addr":"%ci:%cp","sni":"%[ssl_fc_sni]","partner":"%[ssl_c_s_dn(cn),map_str(PARTNERS_MAP,unknown)]","cert.subject":%{+Q}[ssl_c_s_dn],"cert.serial":"%[ssl_c_serial,hex]","cert.sha1":"%[ssl_c_sha1,hex]","route":"all","upstream":"%b","http.method":"%HM","http.path":%{+Q}HP,"http.status":%ST,"bytes.in":%U,"bytes.out":%B,"upstream_ms":%Tr,"duration_ms":%Ta,"reused":%[ssl_fc_is_resumed],"target":"audit"}'

write_nginx() { # variant dir [minlog|min]
    local v=$1 d=$2 key=${1%%-*} crl=${1#*-}
    local crl_line="" log_format access_log identity_headers
    access_log="access_log $d/logs/access.log bench buffer=64k flush=1s;"
    identity_headers='proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Client-Cert $ssl_client_escaped_cert;'
    if [ "${3:-}" = min ]; then
        # The least nginx can do: no log, no identity or forwarding headers upstream.
        log_format=""
        access_log="access_log off;"
        identity_headers=""
    elif [ "${3:-}" = minlog ]; then
        log_format="log_format bench 'reused=\$ssl_session_reused status=\$status proto=\$ssl_protocol';"
    else
        # A partner is named by its certificate's subject, as in certgate's partners list.
        log_format="map \$ssl_client_s_dn \$partner { \"CN=bench-partner,O=bench\" bench; default unknown; }
    log_format bench escape=json '$NGINX_AUDIT_FORMAT';"
    fi
    [ "$crl" != none ] && crl_line="ssl_crl $P/crl-$crl.pem;"
    mkdir -p "$d/tmp" "$d/logs"
    cat > "$d/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 16000; }
http {
    $log_format
    $access_log
    client_body_temp_path $d/tmp;
    proxy_temp_path $d/tmp;
    fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp;
    scgi_temp_path $d/tmp;
    upstream origin {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$GW_PORT ssl http2 backlog=4096;
        server_name localhost;
        ssl_certificate $P/server-$key-chain.pem;
        ssl_certificate_key $P/server-$key.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate $P/cas.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        $crl_line
        ssl_session_cache off;
        ssl_session_tickets off;
        keepalive_requests 100000000;
        keepalive_timeout 75s;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            $identity_headers
        }
    }
}
EOF
}

write_haproxy() { # variant dir
    local v=$1 d=$2 key=${1%%-*} crl=${1#*-}
    local crl_opt=""
    [ "$crl" != none ] && crl_opt="crl-file $P/crl-$crl.pem"
    # A partner is named by its certificate's subject CN.
    echo "bench-partner bench" > "$d/partners.map"
    local log_format=${HAPROXY_AUDIT_FORMAT//PARTNERS_MAP/$d/partners.map}
    cat > "$d/haproxy.cfg" <<EOF
global
    nbthread 1
    # HAProxy reserves two descriptors per connection and will not start if 2 x maxconn exceeds
    # RLIMIT_NOFILE; this sandbox's hard limit is 20 000.
    maxconn 9990
    tune.ssl.cachesize 0
    log stdout format raw local0
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s
    timeout http-request 10s
frontend fe
    bind 127.0.0.1:$GW_PORT ssl crt $P/server-$key-combined.pem ca-file $P/cas.pem verify required $crl_opt alpn h2,http/1.1 no-tls-tickets
    log-format '$log_format'
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header Client-Cert :%[ssl_c_der,base64]:
    default_backend origin
backend origin
    http-reuse always
    server up 127.0.0.1:$UP_PORT
EOF
}

start_gw() { # peer variant
    local peer=$1 v=$2 d="$W/$1-$2"
    mkdir -p "$d"
    GW_LOG=$d/stdout.log
    local t0
    t0=$(date +%s.%N)
    case "$peer" in
        certgate|baseline)
            write_certgate "$v" "$d" "$peer"
            local bin=$CERTGATE
            [ "$peer" = baseline ] && bin=$BASELINE
            taskset -c "$GW_CORE" "$bin" --threads 1 --log-format json serve --config "$d/certgate.yaml" \
                >>"$GW_LOG" 2>&1 &
            GW_PID=$! ;;
        nginx|nginx-minlog|nginx-min)
            write_nginx "$v" "$d" "${peer#nginx-}"
            taskset -c "$GW_CORE" nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' >>"$GW_LOG" 2>&1 &
            GW_PID=$! ;;
        haproxy)
            write_haproxy "$v" "$d"
            taskset -c "$GW_CORE" haproxy -f "$d/haproxy.cfg" -db >>"$GW_LOG" 2>&1 &
            GW_PID=$! ;;
    esac
    PIDS+=("$GW_PID")
    if ! wait_port "$GW_PORT" 120; then
        echo "$peer ($v) did not start; see $GW_LOG" >&2
        tail -20 "$GW_LOG" >&2
        exit 1
    fi
    GW_START_SECS=$(python3 -c "print(round($(date +%s.%N)-$t0,2))")
    WATCH=$GW_PID
    if [ "${peer%%-*}" = nginx ]; then
        # The master plus its (single) worker; the worker does the work.
        for _ in $(seq 50); do
            kids=$(pgrep -P "$GW_PID" | tr '\n' ',' | sed 's/,$//')
            [ -n "$kids" ] && break
            sleep 0.1
        done
        WATCH=$GW_PID,$kids
    fi
}

stop_gw() {
    [ -n "$GW_PID" ] && stop_pid "$GW_PID"
    # Wait for the port to be free for the next peer.
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT") 2>/dev/null || break; sleep 0.05; done
    GW_PID=""
}

record() { # peer test round json
    printf '{"peer":"%s","test":"%s","round":%s,"start_secs":%s,"result":%s}\n' "$1" "$2" "$3" "$GW_START_SECS" "$4" >> "$RESULTS"
}

curl_code() { # extra curl args...
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 --resolve "localhost:$GW_PORT:127.0.0.1" \
        --cacert "$P/cas.pem" "$@" "https://localhost:$GW_PORT/v1/bench" || true
}

check_peer() { # peer variant round: valid → 200; no cert → refused; revoked → refused (with a CRL)
    local peer=$1 v=$2 valid none revoked="n/a" ok=true
    valid=$(curl_code --cert "$P/$PARTNER_CERT.pem" --key "$P/partner.key")
    none=$(curl_code)
    [ "$valid" = 200 ] || ok=false
    [ "$none" != 200 ] || ok=false
    if [ "${v#*-}" != none ] && [ "${v#*-}" != 0 ]; then
        revoked=$(curl_code --cert "$P/$REVOKED_CERT.pem" --key "$P/revoked.key")
        [ "$revoked" != 200 ] || ok=false
    fi
    record "$peer" "check-$v" "$3" "{\"valid\":\"$valid\",\"no_cert\":\"$none\",\"revoked\":\"$revoked\",\"ok\":$ok}"
    if [ "$ok" != true ]; then
        echo "CORRECTNESS CHECK FAILED for $peer ($v): valid=$valid no_cert=$none revoked=$revoked" >&2
        exit 1
    fi
}

TLS_ARGS=(--ca "$P/cas.pem" --cert "$P/$PARTNER_CERT.pem" --key "$P/partner.key")
run_lg() { # peer test round mode args...
    local peer=$1 test=$2 round=$3; shift 3
    local out
    out=$(lg "$@" --addr "127.0.0.1:$GW_PORT" --duration "$DURATION" --warmup "$WARMUP" \
        --watch-pid "$WATCH" --label "$peer/$test" "${TLS_ARGS[@]}")
    record "$peer" "$test" "$round" "$out"
    python3 - "$peer" "$test" "$out" <<'EOF' >&2
import json, sys
r = json.loads(sys.argv[3])
e = r["errors"]
print(f"    {sys.argv[1]:9} {sys.argv[2]:14} {r['rps']:9.0f}/s p50 {r['latency_ms']['p50']:6.2f} ms "
      f"p99 {r['latency_ms']['p99']:6.2f} ms  gw cpu {r['watched_cpu_util']*100:3.0f}% "
      f"{r['watched_cpu_us_per_req']:6.1f} us/req  loadgen cpu {r['loadgen_cpu_util']*100:3.0f}%  "
      f"cores busy {'/'.join(f'{b*100:.0f}' for b in r.get('cores_busy', []))}%  "
      f"rss {r['watched_rss_kb_peak']/1024:6.1f} MiB  errors {sum(e.values())}")
EOF
}

run_storm() { # peer round: the reconnect storm on the running gateway
    local peer=$1 round=$2 out
    out=$(lg storm --connections 64 --storm "$STORM_CONNS" --storm-concurrency 128 \
        --storm-limit-secs 120 --duration "$DURATION" --warmup "$WARMUP" \
        --addr "127.0.0.1:$GW_PORT" --watch-pid "$WATCH" --label "$peer/storm" "${TLS_ARGS[@]}")
    record "$peer" storm "$round" "$out"
    python3 - "$peer" "$out" <<'EOF' >&2
import json, sys
r = json.loads(sys.argv[2])
b, d = r["keepalive_before"], r["keepalive_during"]
print(f"    {sys.argv[1]:9} storm {r['storm_served']}/{r['params']['storm']} served in {r['storm_secs']:.2f} s, "
      f"{r['storm_failed']} failed, {r['storm_unfinished']} unfinished; keep-alive p99 {b['latency_ms']['p99']:.2f} ms "
      f"before, {d['latency_ms']['p99']:.2f} ms during ({b['rps']:.0f} -> {d['rps']:.0f} req/s); "
      f"peak RSS {r['watched_rss_kb_peak']/1024:.1f} MiB")
EOF
}

server_side_full_handshakes() { # peer round: how the gateway's own log confirms full handshakes
    local peer=$1 d="$W/$1-rsa-none" j
    case "$peer" in
        certgate|baseline)
            j=$(python3 - "$d/stdout.log" <<'EOF'
import json, sys
reqs, conns = 0, set()
for line in open(sys.argv[1], errors="replace"):
    if '"event":"request"' in line:
        ev = json.loads(line); reqs += 1; conns.add(ev.get("conn.id"))
print(json.dumps({"requests": reqs, "distinct_connections": len(conns),
                  "note": "session_resumption off: no session store, no tickets; one conn.id per request = one full handshake each"}))
EOF
) ;;
        nginx)
            j=$(printf '{"requests":%s,"reused":%s}' "$(grep -c '"event":"request"' "$d/logs/access.log" || true)" \
                "$(grep -c '"reused":"r"' "$d/logs/access.log" || true)") ;;
        haproxy)
            j=$(printf '{"requests":%s,"reused":%s}' "$(grep -c '"event":"request"' "$d/stdout.log" || true)" \
                "$(grep -c '"reused":1' "$d/stdout.log" || true)") ;;
    esac
    record "$peer" "server-full-handshakes" "$2" "$j"
}

# --- the run -------------------------------------------------------------------------------------
read -r -a PEER_LIST <<< "$PEERS"
# The reference peers (not the same job) run the keep-alive rows only.
reference_peer() { [ "$1" = nginx-minlog ] || [ "$1" = nginx-min ]; }
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$IDLE_ONLY" = 1 ] && ROUNDS=0
for round in $(seq "$ROUNDS"); do
    # Rotate the peer order each round so no peer always runs first (or right after a compile).
    n=${#PEER_LIST[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${PEER_LIST[$(( (i + round - 1) % n ))]}"); done
    log "round $round/$ROUNDS: ${order[*]} (load $(cut -d' ' -f1 /proc/loadavg))"
    # The ceiling: the upstream alone, plain HTTP keep-alive.
    out=$(lg keepalive --plain --connections 64 --addr "127.0.0.1:$UP_PORT" --duration "$DURATION" \
        --warmup "$WARMUP" --watch-pid "$UP_PID" --label upstream/ka-h1)
    GW_START_SECS=0
    record upstream ka-h1 "$round" "$out"
    for peer in "${order[@]}"; do
        for v in $VARIANTS; do
            reference_peer "$peer" && [ "$v" != ecdsa-none ] && continue
            start_gw "$peer" "$v"
            log "  $peer $v (up in ${GW_START_SECS}s)"
            check_peer "$peer" "$v" "$round"
            case "$v" in
                ecdsa-none)
                    run_lg "$peer" ka-h1 "$round" keepalive --connections 64 --proto http1
                    run_lg "$peer" ka-h2 "$round" keepalive --connections 64 --proto h2
                    if [ "$KEEPALIVE_ONLY" = 0 ] && ! reference_peer "$peer"; then
                        run_lg "$peer" hs-ecdsa "$round" handshake --concurrency 16
                    fi ;;
                rsa-none)
                    run_lg "$peer" hs-rsa "$round" handshake --concurrency 16 ;;
                ecdsa-0) run_lg "$peer" hs-crl0 "$round" handshake --concurrency 16 ;;
                ecdsa-10k) run_lg "$peer" hs-crl10k "$round" handshake --concurrency 16 ;;
                ecdsa-1m)
                    [ "$KEEPALIVE_ONLY" = 0 ] && run_lg "$peer" hs-crl1m "$round" handshake --concurrency 16
                    if [ "$STORM" = 1 ]; then
                        # A fresh gateway for the storm: the handshake row above leaves nothing behind.
                        stop_gw
                        start_gw "$peer" "$v"
                        run_storm "$peer" "$round"
                    fi ;;
            esac
            stop_gw
            # After the stop, so nginx has flushed its buffered access log.
            if [ "$v" = rsa-none ] && [ "$round" = 1 ]; then server_side_full_handshakes "$peer" "$round"; fi
        done
    done
done

# Memory per idle connection: a fresh gateway, IDLE_CONNS connections with one request each, held.
# Held 3 s after the last one opened: certgate parks an HTTP/1.1 connection (frees its HTTP buffers)
# after 1-2 s without a request, and the measurement should see idle connections, not fresh ones.
for peer in "${PEER_LIST[@]}"; do
    [ "$IDLE_CONNS" -gt 0 ] || break
    reference_peer "$peer" && continue
    start_gw "$peer" ecdsa-none
    sleep 0.5
    n_idle=$IDLE_CONNS
    # See maxconn in write_haproxy: HAProxy cannot hold 10 000 under a 20 000-descriptor limit.
    [ "$peer" = haproxy ] && [ "$n_idle" -gt 9900 ] && n_idle=9900
    out=$(lg idle --connections "$n_idle" --concurrency 32 --settle-secs 3 --duration 90 \
        --addr "127.0.0.1:$GW_PORT" --watch-pid "$WATCH" --label "$peer/idle" "${TLS_ARGS[@]}")
    record "$peer" idle 1 "$out"
    log "  $peer idle: $(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['connections_held'], 'held,', round(r['rss_bytes_per_conn']), 'B RSS/conn,', r['rss_kb_after']//1024, 'MiB total, probe alive', r['probe_alive_of_16'], 'of 16')" "$out")"
    stop_gw
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- summary -------------------------------------------------------------------------------------
python3 "$ROOT/benches/summarize.py" "$RESULTS" "$OUT" \
    --command "$COMMAND (rounds $ROUNDS, ${DURATION} s windows, client chain: $CLIENT_CHAIN)" \
    --peers "$PEERS"
log "done: $OUT/summary.md"
