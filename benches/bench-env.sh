# Shared by benches/profile.sh and benches/instructions.sh (sourced, not run): the loadgen binary,
# the upstream (a plain nginx answering a 100-byte 200 on core 1) and a one-route certgate config
# over a compare.sh PKI. Expects ROOT, OUT and P set; appends what it starts to PIDS.
GW_PORT=${GW_PORT:-18443} UP_PORT=${UP_PORT:-18080} ADMIN_PORT=${ADMIN_PORT:-19901}
# What the partner presents (compare.sh's --client-chain): its leaf only, or `full` with its
# intermediate. The loads use $P/$PARTNER_CERT.pem.
case "${CLIENT_CHAIN:-leaf}" in
    leaf) PARTNER_CERT=partner ;;
    full) PARTNER_CERT=partner-chain ;;
    *) echo "CLIENT_CHAIN is leaf or full" >&2; exit 2 ;;
esac
# LOADGEN=path overrides the lookup (e.g. to reuse a binary while cargo is busy elsewhere).
LOADGEN=${LOADGEN:-$(cd "$ROOT" && cargo bench --locked --no-run --bench loadgen --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)}

start_upstream() {
    local body
    body=$(printf 'x%.0s' $(seq 100))
    mkdir -p "$OUT/up/tmp"
    cat > "$OUT/up/nginx.conf" <<EOF
user root; worker_processes 1; master_process off; pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $OUT/up/tmp; proxy_temp_path $OUT/up/tmp;
  fastcgi_temp_path $OUT/up/tmp; uwsgi_temp_path $OUT/up/tmp; scgi_temp_path $OUT/up/tmp;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$UP_PORT; default_type text/plain; location / { return 200 "$body"; } } }
EOF
    taskset -c 1 nginx -p "$OUT/up" -c "$OUT/up/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}

write_certgate_config() { # path [extra server: lines]
    cat > "$1" <<EOF
server:
  listen: "127.0.0.1:$GW_PORT"
  tls:
    certificates: [{cert: $P/server-ecdsa-chain.pem, key: $P/server-ecdsa.key}]
  client_auth:
    trust_bundles: [{name: bench, ca: $P/cas.pem}]
${2:-}
admin: {listen: "127.0.0.1:$ADMIN_PORT"}
upstreams:
  origin: {endpoints: ["http://127.0.0.1:$UP_PORT"]}
partners:
  - {id: bench, owner: perf@example.com, trust_bundle: bench, identities: [{subject_cn: bench-partner}], scopes: [bench]}
routes:
  - {name: all, path_prefix: /, scope: bench, upstream: origin}
EOF
}
