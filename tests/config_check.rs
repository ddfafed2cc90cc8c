//! `certgate check` behaviour: a good file becomes the expected model, and a bad file is reported
//! as located problems an operator can jump to.
// Tests state their expectations with unwrap: a panic there is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certgate::config::model::{
    BundleId, ClientCertHeader, CrlExpiredPolicy, CrlSource, Endpoint, IdentityMatch, OcspMode,
    PathMatch, ScopeId, TlsVersion, UpstreamId, UpstreamProtocol,
};
use certgate::config::{self, Place, Problem, Problems};

const SOURCE: &str = "/etc/certgate/certgate.yaml";

/// A complete configuration using every section; line numbers below are referred to by tests.
const FULL: &str = r#"server:
  listen: "0.0.0.0:8443"
  tls:
    certificates:
      - cert: certs/server.pem
        key: certs/server-key.pem
      - cert: /opt/other.pem
        key: /opt/other-key.pem
    min_version: "1.3"
  client_auth:
    trust_bundles:
      - name: partner-ca
        ca: certs/partner-ca.pem
        crl:
          - path: certs/partner-ca.crl
          - url: http://127.0.0.1:8888/partner-ca.crl
            refresh: 10m
        crl_expired: allow_with_warning
        ocsp: { mode: hard_fail, responder: http://127.0.0.1:8889, timeout: 250ms, max_cache_age: 2h }
      - name: internal-ca
        ca: certs/internal-ca.pem
  limits:
    max_connections: 500
    idle_timeout: 90s
admin:
  listen: "127.0.0.1:9901"
upstreams:
  orders:
    endpoints: ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    connect_timeout: 1s
    request_timeout: 45s
  billing:
    endpoints: ["https://billing.internal"]
    protocol: http2
    ca: certs/billing-ca.pem
partners:
  - id: acme
    owner: payments-team@example.com
    trust_bundle: partner-ca
    identities:
      - spiffe: spiffe://partners.example.com/acme
      - subject_cn: acme-billing
      - san_dns: Billing.ACME.example
      - fingerprint_sha256: "3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a:3f:9a"
    scopes: [orders:write, orders:read, orders:read]
  - id: globex
    owner: platform-team
    trust_bundle: internal-ca
    identities:
      - spiffe: spiffe://internal.example.com/globex
    scopes: [billing:read]
routes:
  - name: orders-read
    host: API.example.com
    path_prefix: /v1/orders
    methods: [GET, HEAD]
    scope: orders:read
    upstream: orders
  - name: billing-exact
    path: /v1/billing/summary
    scope: billing:read
    upstream: billing
forward:
  client_cert_header: xfcc
  partner_header: X-Partner
"#;

/// Everything required and nothing else: the defaults fill the rest.
const MINIMAL: &str = r#"server:
  listen: "0.0.0.0:8443"
  tls:
    certificates:
      - cert: server.pem
        key: server-key.pem
  client_auth:
    trust_bundles:
      - name: ca
        ca: ca.pem
        crl:
          - url: https://crl.example.com/ca.crl
        ocsp: { mode: soft_fail }
upstreams:
  app:
    endpoints: ["http://127.0.0.1:9000"]
partners:
  - id: acme
    owner: team
    trust_bundle: ca
    identities:
      - subject_cn: acme
routes:
  - name: all
    path_prefix: /
    scope: any
    upstream: app
"#;

fn check(text: &str) -> Result<config::model::Config, Problems> {
    config::parse(text, Path::new(SOURCE))
}

/// The problems of a config that must fail, as the operator sees them.
fn problems(text: &str) -> Vec<String> {
    match check(text) {
        Ok(_) => panic!("expected problems, the config was accepted"),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// The one problem of a config that must fail with exactly one.
fn only_problem(text: &str) -> Problem {
    match check(text) {
        Ok(_) => panic!("expected a problem, the config was accepted"),
        Err(problems) => {
            let all = problems.into_vec();
            assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
            all.into_iter().next().unwrap()
        }
    }
}

/// The position and field of a problem placed in the YAML.
fn yaml_place(problem: &Problem) -> (usize, usize, &str) {
    match &problem.place {
        Place::Yaml {
            file,
            line,
            column,
            field,
        } => {
            assert_eq!(file, Path::new(SOURCE));
            (*line, *column, field.as_str())
        }
        other => panic!("expected a yaml place, got {other:?}"),
    }
}

fn etc(path: &str) -> PathBuf {
    Path::new("/etc/certgate").join(path)
}

// --- a good file ---

#[test]
fn a_full_config_becomes_the_expected_model() {
    let c = check(FULL).unwrap();

    assert_eq!(c.source, Path::new(SOURCE));
    assert_eq!(c.version.len(), 64);
    assert!(c.version.bytes().all(|b| b.is_ascii_hexdigit()));

    assert_eq!(
        c.server.listen,
        "0.0.0.0:8443".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.server.certificates.len(), 2);
    assert_eq!(c.server.certificates[0].cert, etc("certs/server.pem"));
    assert_eq!(c.server.certificates[0].key, etc("certs/server-key.pem"));
    assert_eq!(c.server.certificates[1].cert, Path::new("/opt/other.pem"));
    assert_eq!(c.server.min_version, TlsVersion::Tls13);
    assert!(c.server.session_resumption);
    assert_eq!(c.server.limits.max_connections, 500);
    assert_eq!(c.server.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.server.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));

    assert_eq!(c.trust_bundles.len(), 2);
    let partner_ca = &c.trust_bundles[0];
    assert_eq!(partner_ca.name, "partner-ca");
    assert_eq!(partner_ca.ca, etc("certs/partner-ca.pem"));
    assert_eq!(
        partner_ca.crls,
        vec![
            CrlSource::File(etc("certs/partner-ca.crl")),
            CrlSource::Url {
                url: "http://127.0.0.1:8888/partner-ca.crl".to_owned(),
                refresh: Duration::from_secs(600),
            },
        ]
    );
    assert_eq!(partner_ca.crl_expired, CrlExpiredPolicy::AllowWithWarning);
    let ocsp = partner_ca.ocsp.as_ref().unwrap();
    assert_eq!(ocsp.mode, OcspMode::HardFail);
    assert_eq!(ocsp.responder.as_deref(), Some("http://127.0.0.1:8889"));
    assert_eq!(ocsp.timeout, Duration::from_millis(250));
    assert_eq!(ocsp.max_cache_age, Duration::from_secs(7200));
    assert!(c.trust_bundles[1].ocsp.is_none());
    assert_eq!(c.trust_bundles[1].crl_expired, CrlExpiredPolicy::Reject);

    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
    );

    // Upstreams are ordered by name.
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["billing", "orders"]);
    let billing = &c.upstreams[0];
    assert_eq!(
        billing.endpoints,
        vec![Endpoint {
            tls: true,
            authority: "billing.internal:443".to_owned()
        }]
    );
    assert_eq!(billing.protocol, UpstreamProtocol::Http2);
    assert_eq!(
        billing.ca.as_deref(),
        Some(etc("certs/billing-ca.pem").as_path())
    );
    let orders = &c.upstreams[1];
    assert_eq!(orders.endpoints.len(), 2);
    assert_eq!(orders.endpoints[1].authority, "127.0.0.1:9001");
    assert!(!orders.endpoints[1].tls);
    assert_eq!(orders.protocol, UpstreamProtocol::Http1);
    assert_eq!(orders.connect_timeout, Duration::from_secs(1));
    assert_eq!(orders.request_timeout, Duration::from_secs(45));

    // Scopes are interned in order of first mention, partners first.
    assert_eq!(c.scopes, ["orders:write", "orders:read", "billing:read"]);

    let acme = &c.partners[0];
    assert_eq!(acme.id, "acme");
    assert_eq!(acme.owner, "payments-team@example.com");
    assert_eq!(acme.trust_bundle, BundleId(0));
    assert_eq!(
        acme.identities,
        vec![
            IdentityMatch::Spiffe("spiffe://partners.example.com/acme".to_owned()),
            IdentityMatch::SubjectCn("acme-billing".to_owned()),
            IdentityMatch::SanDns("billing.acme.example".to_owned()),
            IdentityMatch::Fingerprint([0x3f, 0x9a].repeat(16).try_into().unwrap()),
        ]
    );
    assert_eq!(
        acme.scopes,
        [ScopeId(0), ScopeId(1)],
        "sorted, deduplicated"
    );
    assert_eq!(c.partners[1].trust_bundle, BundleId(1));
    assert_eq!(c.partners[1].scopes, [ScopeId(2)]);

    let read = &c.routes[0];
    assert_eq!(read.name, "orders-read");
    assert_eq!(read.host.as_deref(), Some("api.example.com"));
    assert_eq!(read.path, PathMatch::Prefix("/v1/orders".to_owned()));
    assert_eq!(
        read.methods,
        Some(vec![http::Method::GET, http::Method::HEAD])
    );
    assert_eq!(read.scope, ScopeId(1));
    assert_eq!(read.upstream, UpstreamId(1));
    let summary = &c.routes[1];
    assert_eq!(
        summary.path,
        PathMatch::Exact("/v1/billing/summary".to_owned())
    );
    assert_eq!(summary.methods, None);
    assert_eq!(summary.host, None);
    assert_eq!(summary.upstream, UpstreamId(0));
    assert_eq!(summary.scope, ScopeId(2));

    assert_eq!(c.forward.client_cert_header, ClientCertHeader::Xfcc);
    assert_eq!(c.forward.partner_header, "x-partner");
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let c = check(MINIMAL).unwrap();
    assert_eq!(c.server.min_version, TlsVersion::Tls12);
    assert!(c.server.session_resumption);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.server.limits.max_connections, 10_000);
    assert_eq!(c.server.limits.max_header_bytes, 64 * 1024);
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
    );
    assert!(!c.admin.allow_remote);
    let bundle = &c.trust_bundles[0];
    assert_eq!(bundle.crl_expired, CrlExpiredPolicy::Reject);
    assert_eq!(
        bundle.crls,
        vec![CrlSource::Url {
            url: "https://crl.example.com/ca.crl".to_owned(),
            refresh: Duration::from_secs(300),
        }]
    );
    let ocsp = bundle.ocsp.as_ref().unwrap();
    assert_eq!(ocsp.mode, OcspMode::SoftFail);
    assert_eq!(ocsp.responder, None);
    assert_eq!(ocsp.timeout, Duration::from_secs(2));
    assert_eq!(ocsp.max_cache_age, Duration::from_secs(3600));
    let app = &c.upstreams[0];
    assert_eq!(app.connect_timeout, Duration::from_secs(2));
    assert_eq!(app.request_timeout, Duration::from_secs(30));
    assert_eq!(app.protocol, UpstreamProtocol::Http1);
    assert_eq!(c.forward.client_cert_header, ClientCertHeader::Rfc9440);
    assert_eq!(c.forward.partner_header, "x-partner-id");
    assert_eq!(c.routes[0].path, PathMatch::Prefix("/".to_owned()));
    assert_eq!(c.server.limits.max_body_bytes, None);
    assert_eq!(c.routes[0].max_body_bytes, None);
}

#[test]
fn a_route_body_limit_overrides_the_server_wide_one() {
    let text = FULL
        .replace(
            "    idle_timeout: 90s\n",
            "    idle_timeout: 90s\n    max_body_bytes: 1048576\n",
        )
        .replace(
            "    upstream: billing\n",
            "    upstream: billing\n    max_body_bytes: 4096\n",
        );
    let c = check(&text).unwrap();
    assert_eq!(c.server.limits.max_body_bytes, Some(1_048_576));
    assert_eq!(c.routes[0].max_body_bytes, Some(1_048_576));
    assert_eq!(c.routes[1].max_body_bytes, Some(4096));
}

#[test]
fn a_zero_body_limit_is_located_at_the_server_or_its_route() {
    let server = FULL.replace(
        "    idle_timeout: 90s\n",
        "    idle_timeout: 90s\n    max_body_bytes: 0\n",
    );
    let problem = only_problem(&server);
    let (line, column, field) = yaml_place(&problem);
    assert_eq!(field, "server.limits.max_body_bytes");
    assert_eq!((line, column), (line_of(&server, "max_body_bytes: 0"), 21));
    assert_eq!(problem.message, "must be greater than zero");

    let route = FULL.replace(
        "    upstream: billing\n",
        "    upstream: billing\n    max_body_bytes: 0\n",
    );
    let problem = only_problem(&route);
    let (line, column, field) = yaml_place(&problem);
    assert_eq!(field, "routes[1].max_body_bytes");
    assert_eq!((line, column), (line_of(&route, "max_body_bytes: 0"), 21));
    assert_eq!(problem.message, "must be greater than zero");
}

#[test]
fn a_zero_handshake_budget_is_located() {
    let text = FULL.replace(
        "    idle_timeout: 90s\n",
        "    idle_timeout: 90s\n    max_concurrent_handshakes: 0\n",
    );
    let problem = only_problem(&text);
    let (line, _, field) = yaml_place(&problem);
    assert_eq!(field, "server.limits.max_concurrent_handshakes");
    assert_eq!(line, line_of(&text, "max_concurrent_handshakes: 0"));
    assert_eq!(problem.message, "must be greater than zero");
}

#[test]
fn ocsp_off_means_no_ocsp() {
    let text = MINIMAL.replace("mode: soft_fail", "mode: off");
    assert!(check(&text).unwrap().trust_bundles[0].ocsp.is_none());
}

#[test]
fn the_version_is_the_sha256_of_the_text() {
    let a = check(MINIMAL).unwrap().version;
    let b = check(&format!("{MINIMAL}# a comment\n")).unwrap().version;
    assert_eq!(a, check(MINIMAL).unwrap().version);
    assert_ne!(a, b);
}

#[test]
fn a_relative_config_path_still_gives_absolute_file_paths() {
    let c = config::parse(MINIMAL, Path::new("conf/certgate.yaml")).unwrap();
    let cert = &c.server.certificates[0].cert;
    assert!(cert.is_absolute(), "{cert:?}");
    assert!(cert.ends_with("conf/server.pem"), "{cert:?}");
}

#[test]
fn load_reads_the_file_and_resolves_against_its_folder() {
    let dir = std::env::temp_dir().join(format!("certgate-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("certgate.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = config::load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let c = c.unwrap();
    assert_eq!(c.server.certificates[0].cert, dir.join("server.pem"));
}

// --- a bad file ---

#[test]
fn an_unreadable_file_is_one_problem_naming_the_path_and_the_os_error() {
    let path = Path::new("/nonexistent/certgate.yaml");
    let problems = config::load(path).unwrap_err().into_vec();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].place, Place::File(path.to_owned()));
    let shown = problems[0].to_string();
    assert!(shown.starts_with("/nonexistent/certgate.yaml: "), "{shown}");
    assert!(shown.contains("No such file or directory"), "{shown}");
}

#[test]
fn a_typo_in_a_field_name_is_reported_where_it_was_made() {
    let text = FULL.replace("    connect_timeout: 1s", "    conect_timeout: 1s");
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem),
        (30, 5, "upstreams.orders.conect_timeout")
    );
    assert!(
        problem
            .message
            .starts_with("unknown field `conect_timeout`, expected one of"),
        "{}",
        problem.message
    );
    assert!(
        problem.to_string().starts_with(
            "/etc/certgate/certgate.yaml:30:5: upstreams.orders.conect_timeout: unknown field"
        ),
        "{problem}"
    );
}

#[test]
fn bad_yaml_syntax_is_located() {
    // One space too many: `key` continues the `cert` scalar, and its colon is then misplaced.
    let text = FULL.replacen(
        "        key: certs/server-key.pem",
        "         key: certs/server-key.pem",
        1,
    );
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (6, 13, ""));
    assert_eq!(
        problem.to_string(),
        "/etc/certgate/certgate.yaml:6:13: mapping values are not allowed in this context"
    );
}

#[test]
fn a_route_to_an_unknown_upstream_points_at_the_value() {
    let text = FULL.replace("    upstream: billing", "    upstream: biling");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (62, 15, "routes[1].upstream"));
    assert_eq!(
        problem.to_string(),
        "/etc/certgate/certgate.yaml:62:15: routes[1].upstream: \
         unknown upstream `biling` (known: billing, orders)"
    );
}

#[test]
fn a_partner_with_an_unknown_trust_bundle_is_located() {
    let text = FULL.replace("trust_bundle: internal-ca", "trust_bundle: internal");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (48, 19, "partners[1].trust_bundle"));
    assert!(problem
        .message
        .starts_with("unknown trust bundle `internal`"));
}

#[test]
fn two_partners_claiming_one_spiffe_id_are_both_named() {
    let text = FULL.replace(
        "spiffe://internal.example.com/globex",
        "spiffe://partners.example.com/acme",
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem),
        (50, 17, "partners[1].identities[0].spiffe")
    );
    assert_eq!(
        problem.message,
        "spiffe id `spiffe://partners.example.com/acme` is claimed by partner `globex` \
         and by partner `acme` at partners[0].identities[0].spiffe (line 41 column 17); \
         a certificate must map to one partner"
    );
}

#[test]
fn the_same_fingerprint_written_differently_is_still_one_identity() {
    let text = FULL.replace(
        "      - spiffe: spiffe://internal.example.com/globex",
        &format!("      - fingerprint_sha256: {}", "3F9A".repeat(16)),
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem).2,
        "partners[1].identities[0].fingerprint_sha256"
    );
    assert!(problem.message.contains("partner `acme`"), "{problem}");
}

#[test]
fn a_bad_duration_names_the_accepted_forms() {
    let text = FULL.replace("request_timeout: 45s", "request_timeout: 45 seconds");
    let problem = only_problem(&text);
    assert_eq!(
        problem.to_string(),
        "/etc/certgate/certgate.yaml:31:22: upstreams.orders.request_timeout: \
         invalid duration `45 seconds`: expected a whole number and a unit: ms, s, m or h \
         (like 250ms, 2s, 5m, 1h)"
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    let text = FULL.replace("timeout: 250ms", "timeout: 0ms");
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem).2,
        "server.client_auth.trust_bundles[0].ocsp.timeout"
    );
    assert_eq!(problem.message, "must be greater than zero");
}

#[test]
fn a_bad_fingerprint_is_located() {
    let text = FULL.replace(
        r#"fingerprint_sha256: "3f:9a:3f:9a"#,
        r#"fingerprint_sha256: "3f:9a:zz:9a"#,
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem),
        (44, 29, "partners[0].identities[3].fingerprint_sha256")
    );
    assert!(problem.message.contains("64 hex digits"), "{problem}");
}

#[test]
fn a_short_fingerprint_says_how_many_digits_it_got() {
    let text = MINIMAL.replace("subject_cn: acme", r#"fingerprint_sha256: "3f9a…""#);
    let problem = only_problem(&text);
    assert!(problem.message.contains("hex digits"), "{problem}");
    let text = MINIMAL.replace("subject_cn: acme", "fingerprint_sha256: 3f9a");
    let problem = only_problem(&text);
    assert!(problem.message.ends_with("got 4 digits"), "{problem}");
}

#[test]
fn a_missing_owner_is_located_at_its_partner() {
    let text = FULL.replace("    owner: platform-team\n", "");
    let problem = only_problem(&text);
    let (line, column, field) = yaml_place(&problem);
    assert_eq!(field, "partners[1]");
    assert_eq!((line, column), (46, 5));
    assert!(
        problem.message.contains("missing field `owner`"),
        "{problem}"
    );
}

#[test]
fn a_blank_owner_is_a_problem() {
    let text = FULL.replace("owner: platform-team", "owner: \"  \"");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (47, 12, "partners[1].owner"));
}

#[test]
fn a_remote_admin_listener_needs_allow_remote() {
    let text = FULL.replace("\"127.0.0.1:9901\"", "\"0.0.0.0:9901\"");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (26, 11, "admin.listen"));
    assert!(problem.message.contains("allow_remote"), "{problem}");

    let allowed = text.replace(
        "  listen: \"0.0.0.0:9901\"\n",
        "  listen: \"0.0.0.0:9901\"\n  allow_remote: true\n",
    );
    assert!(check(&allowed).unwrap().admin.allow_remote);
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = FULL
        .replace("listen: \"0.0.0.0:8443\"", "listen: \"0.0.0.0\"")
        .replace("min_version: \"1.3\"", "min_version: \"1.1\"")
        .replace("refresh: 10m", "refresh: 0s")
        .replace("\"127.0.0.1:9901\"", "\"10.0.0.1:9901\"")
        .replace("\"http://127.0.0.1:9001\"", "\"http://127.0.0.1:9001/api\"")
        .replace("owner: platform-team", "owner: \"\"")
        .replace("path_prefix: /v1/orders", "path_prefix: v1/orders")
        .replace("methods: [GET, HEAD]", "methods: [GET, get]")
        .replace("upstream: billing", "upstream: nowhere")
        .replace("client_cert_header: xfcc", "client_cert_header: envoy")
        .replace("partner_header: X-Partner", "partner_header: \"X Partner\"");
    let shown = problems(&text);
    let fields: Vec<&str> = shown
        .iter()
        .map(|p| p.split(": ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "server.listen",
            "server.tls.min_version",
            "server.client_auth.trust_bundles[0].crl[1].refresh",
            "admin.listen",
            "upstreams.orders.endpoints[1]",
            "partners[1].owner",
            "routes[0].path_prefix",
            "routes[0].methods[1]",
            "routes[1].upstream",
            "forward.client_cert_header",
            "forward.partner_header",
        ],
        "{shown:#?}"
    );
    assert!(shown[0]
        .starts_with("/etc/certgate/certgate.yaml:2:11: server.listen: invalid listen address"));
}

#[test]
fn problems_display_one_per_line() {
    let text = FULL
        .replace("upstream: billing", "upstream: nowhere")
        .replace("upstream: orders", "upstream: elsewhere");
    let all = check(&text).unwrap_err();
    assert_eq!(all.len(), 2);
    let shown = all.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("/etc/certgate/certgate.yaml:58:15: routes[0].upstream: "));
    assert!(lines[1].starts_with("/etc/certgate/certgate.yaml:62:15: routes[1].upstream: "));
}

#[test]
fn duplicate_names_point_at_the_first_declaration() {
    let text = FULL.replace("name: internal-ca", "name: partner-ca");
    let shown = problems(&text);
    assert_eq!(
        shown[0],
        "/etc/certgate/certgate.yaml:20:15: server.client_auth.trust_bundles[1].name: \
         duplicate trust bundle `partner-ca`; first declared at \
         server.client_auth.trust_bundles[0].name (line 12 column 15)"
    );

    let text = FULL.replace("name: billing-exact", "name: orders-read");
    assert!(problems(&text)[0].contains("routes[1].name: duplicate route name `orders-read`"));

    let text = FULL.replace("id: globex", "id: acme");
    assert!(problems(&text)
        .iter()
        .any(|p| p.contains("partners[1].id: duplicate partner id `acme`")));
}

#[test]
fn an_upstream_written_twice_is_a_problem_not_a_silent_overwrite() {
    let text = FULL.replace(
        "  billing:\n",
        "  orders:\n    endpoints: [\"http://127.0.0.1:1\"]\n  billing:\n",
    );
    let shown = problems(&text);
    assert_eq!(
        shown,
        ["/etc/certgate/certgate.yaml:32:3: upstreams.orders: duplicate key; first written at line 28 column 3"]
    );
}

#[test]
fn crl_sources_need_exactly_one_of_path_and_url() {
    let text = FULL.replace(
        "          - path: certs/partner-ca.crl\n",
        "          - path: certs/partner-ca.crl\n            url: http://x/y.crl\n",
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem),
        (15, 13, "server.client_auth.trust_bundles[0].crl[0]")
    );

    let text = FULL.replace("url: http://127.0.0.1:8888", "url: ftp://127.0.0.1:8888");
    assert_eq!(
        yaml_place(&only_problem(&text)).2,
        "server.client_auth.trust_bundles[0].crl[1].url"
    );

    let text = FULL.replace("responder: http://", "responder: https://");
    assert!(only_problem(&text)
        .message
        .contains("expected an http:// url"));
}

#[test]
fn identities_set_exactly_one_key_per_item() {
    let text = FULL.replace(
        "      - subject_cn: acme-billing\n",
        "      - subject_cn: acme-billing\n        san_dns: other.example\n",
    );
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (42, 9, "partners[0].identities[1]"));

    let text = FULL.replace("      - subject_cn: acme-billing\n", "      - {}\n");
    assert!(only_problem(&text)
        .message
        .starts_with("an identity needs one of"));

    let text = FULL.replace(
        "spiffe: spiffe://internal.example.com/globex",
        "spiffe: https://x",
    );
    assert!(only_problem(&text).message.contains("spiffe://"));
}

#[test]
fn routes_need_one_path_that_starts_with_a_slash() {
    let text = FULL.replace(
        "    path: /v1/billing/summary\n",
        "    path: /v1/billing/summary\n    path_prefix: /v1/billing\n",
    );
    assert_eq!(yaml_place(&only_problem(&text)).2, "routes[1]");

    let text = FULL.replace("    path: /v1/billing/summary\n", "");
    assert_eq!(
        only_problem(&text).message,
        "set one of path (exact) or path_prefix"
    );

    let text = FULL.replace("host: API.example.com", "host: api.example.com:443");
    assert_eq!(yaml_place(&only_problem(&text)).2, "routes[0].host");
}

#[test]
fn the_required_lists_must_not_be_empty() {
    let text = MINIMAL
        .replace(
            "    certificates:\n      - cert: server.pem\n        key: server-key.pem\n",
            "    certificates: []\n",
        )
        .replace(
            "    endpoints: [\"http://127.0.0.1:9000\"]",
            "    endpoints: []",
        )
        .replace(
            "    identities:\n      - subject_cn: acme\n",
            "    identities: []\n",
        );
    let shown = problems(&text);
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(shown[0].contains("server.tls.certificates: at least one server certificate"));
    assert!(shown[1].contains("upstreams.app.endpoints: at least one endpoint"));
    assert!(shown[2].contains("partners[0].identities: at least one identity"));
}

#[test]
fn a_value_of_the_wrong_type_is_a_located_shape_problem() {
    let text = MINIMAL.replace("    scope: any\n", "    scope: [any]\n");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (26, 12, "routes[0].scope"));
    assert!(
        problem.message.starts_with("invalid type: sequence"),
        "{problem}"
    );
}

#[test]
fn an_empty_file_is_a_problem() {
    let shown = problems("");
    assert_eq!(shown.len(), 1);
    assert!(
        shown[0].starts_with("/etc/certgate/certgate.yaml"),
        "{shown:?}"
    );
}

#[test]
fn strip_headers_add_to_the_defaults_and_bad_names_are_located() {
    let text = FULL.replace(
        "  partner_header: X-Partner\n",
        "  partner_header: X-Partner\n  strip_headers: [X-Acme-*, X_Internal_User]\n",
    );
    let c = check(&text).unwrap();
    let strip = &c.forward.strip_headers;
    for name in [
        "x-acme-role",
        "x-internal-user",
        "x_internal_user",
        "x-ssl-client-verify",
        "ssl_client_s_dn",
        "x-real-ip",
    ] {
        assert!(strip.matches(name.as_bytes()), "{name}");
    }
    for name in ["x-acme", "x-internal-user-id", "x-request-id", "x-sslx"] {
        assert!(!strip.matches(name.as_bytes()), "{name}");
    }

    for (bad, why) in [
        ("\"*\"", "a lone `*`"),
        ("\"X-*-Role\"", "`*` may only end a name"),
        ("\"X Role\"", "not a header name"),
        ("\"\"", "an empty name"),
    ] {
        let text = FULL.replace(
            "  partner_header: X-Partner\n",
            &format!("  partner_header: X-Partner\n  strip_headers: [X-Ok, {bad}]\n"),
        );
        let problem = only_problem(&text);
        let (line, _, field) = yaml_place(&problem);
        assert_eq!(field, "forward.strip_headers[1]", "{bad}");
        assert_eq!(
            text.lines().nth(line - 1).unwrap(),
            format!("  strip_headers: [X-Ok, {bad}]"),
            "{bad}"
        );
        assert!(problem.message.contains(why), "{bad}: {}", problem.message);
    }
}

// --- warnings: a valid file that will bite later ---

/// The warnings of a config that must load, as the operator sees them.
fn warnings(text: &str) -> Vec<Problem> {
    match config::parse_checked(text, Path::new(SOURCE)) {
        Ok(checked) => checked.warnings,
        Err(problems) => panic!("expected a valid config: {problems}"),
    }
}

/// [`MINIMAL`] with its one scope held by its one partner: nothing to warn about.
fn clean() -> String {
    MINIMAL.replace(
        "      - subject_cn: acme\n",
        "      - subject_cn: acme\n    scopes: [any]\n",
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .expect("the test config holds the needle")
}

#[test]
fn a_config_where_every_scope_is_used_and_revocation_is_set_has_no_warnings() {
    assert_eq!(warnings(&clean()), []);
    // MINIMAL's route requires a scope its partner lacks.
    assert_eq!(warnings(MINIMAL).len(), 1);
}

#[test]
fn a_scope_granted_to_partners_that_no_route_requires_is_a_warning_at_the_grant() {
    let text = clean().replace("    scopes: [any]\n", "    scopes: [any, reports:read]\n");
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, _, field) = yaml_place(&all[0]);
    assert_eq!(
        (line, field),
        (line_of(&text, "reports:read"), "partners[0].scopes[1]")
    );
    assert_eq!(
        all[0].message,
        "scope `reports:read` is granted to acme but no route requires it"
    );
}

#[test]
fn a_route_scope_no_partner_holds_is_a_warning_at_the_route() {
    let text = format!(
        "{}  - name: reports\n    path_prefix: /reports\n    scope: reprts:read\n    upstream: app\n",
        clean()
    );
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, _, field) = yaml_place(&all[0]);
    assert_eq!(
        (line, field),
        (line_of(&text, "reprts:read"), "routes[1].scope")
    );
    assert!(
        all[0]
            .message
            .contains("no partner holds scope `reprts:read`")
            && all[0].message.contains("route `reports`"),
        "{}",
        all[0].message
    );
}

#[test]
fn a_trust_bundle_without_crl_or_ocsp_is_a_warning_at_its_name() {
    let text = clean()
        .replace(
            "        crl:\n          - url: https://crl.example.com/ca.crl\n",
            "",
        )
        .replace(
            "        ocsp: { mode: soft_fail }\n",
            "        ocsp: { mode: off }\n",
        );
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, _, field) = yaml_place(&all[0]);
    assert_eq!(
        (line, field),
        (
            line_of(&text, "- name: ca"),
            "server.client_auth.trust_bundles[0].name"
        )
    );
    assert!(
        all[0].message.contains("no revocation source"),
        "{}",
        all[0].message
    );

    // Either source alone is enough.
    let crl_only = clean().replace("        ocsp: { mode: soft_fail }\n", "");
    assert_eq!(warnings(&crl_only), []);
    let ocsp_only = clean().replace(
        "        crl:\n          - url: https://crl.example.com/ca.crl\n",
        "",
    );
    assert_eq!(warnings(&ocsp_only), []);
}

#[test]
fn a_dns_san_and_another_partners_cn_with_the_same_name_are_a_warning_naming_the_winner() {
    let text = clean().replace(
        "routes:\n",
        "  - id: initech\n    owner: team\n    trust_bundle: ca\n    identities:\n      - san_dns: ACME\n    scopes: [any]\nroutes:\n",
    );
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, _, field) = yaml_place(&all[0]);
    // At the claim that loses: a certificate with CN acme and DNS SAN acme goes to initech.
    assert_eq!(
        (line, field),
        (
            line_of(&text, "subject_cn: acme"),
            "partners[0].identities[0].subject_cn"
        )
    );
    let message = &all[0].message;
    assert!(
        message.contains("partner `acme`'s subject_cn and partner `initech`'s san_dns")
            && message.contains(&format!("line {}", line_of(&text, "san_dns: ACME")))
            && message.contains("fingerprint_sha256 > spiffe > san_dns > subject_cn")
            && message.contains("gives it to `initech`"),
        "{message}"
    );

    // Identities of different kinds with different values do not overlap.
    let apart = text.replace("san_dns: ACME", "san_dns: initech.example");
    assert_eq!(warnings(&apart), []);

    // A subject CN holding another partner's SPIFFE ID overlaps too (exactly, SPIFFE IDs are
    // compared as written).
    let spiffe = apart
        .replace("subject_cn: acme", "subject_cn: spiffe://example.org/acme")
        .replace(
            "san_dns: initech.example",
            "spiffe: spiffe://example.org/acme",
        );
    let all = warnings(&spiffe);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0]
            .message
            .contains("partner `acme`'s subject_cn and partner `initech`'s spiffe"),
        "{}",
        all[0].message
    );
    let other_case = spiffe.replace(
        "spiffe: spiffe://example.org/acme",
        "spiffe: spiffe://example.org/ACME",
    );
    assert_eq!(warnings(&other_case), []);
}

#[test]
fn a_key_dedented_out_of_its_partner_says_so_beside_the_parser() {
    let text = MINIMAL.replace(
        "      - subject_cn: acme\n",
        "      - subject_cn: acme\n  scopes: [any]\n",
    );
    let problem = only_problem(&text);
    let line = line_of(&text, "  scopes: [any]");
    assert_eq!(yaml_place(&problem).0, line);
    assert!(
        problem.message.starts_with(
            "indentation: `scopes` is not inside `partners[0]`: it is indented 2 spaces, the keys of `partners[0]` 4 (parser: "
        ),
        "{}",
        problem.message
    );

    // Dedented to the top level it parses, as an unknown top-level key.
    let text = MINIMAL.replace(
        "      - subject_cn: acme\n",
        "      - subject_cn: acme\nscopes: [any]\n",
    );
    let problem = only_problem(&text);
    assert!(
        problem
            .message
            .starts_with("indentation: `scopes` is not inside `partners[0]`; if it belongs there, indent it 4 spaces"),
        "{}",
        problem.message
    );
    assert!(
        problem.message.contains("unknown field `scopes`"),
        "{}",
        problem.message
    );
}

#[test]
fn the_revocation_scope_defaults_to_full_chain_and_reject_and_can_be_relaxed() {
    use certgate::config::model::{Coverage, RevocationScope, UnknownIssuer};
    let c = check(MINIMAL).unwrap();
    assert_eq!(
        c.trust_bundles[0].revocation,
        RevocationScope {
            coverage: Coverage::FullChain,
            unknown_issuer: UnknownIssuer::Reject,
        }
    );

    let relaxed = MINIMAL.replace(
        "        ocsp: { mode: soft_fail }\n",
        "        ocsp: { mode: soft_fail }\n        revocation: { coverage: leaf_only, unknown_issuer: allow }\n",
    );
    assert_eq!(
        check(&relaxed).unwrap().trust_bundles[0].revocation,
        RevocationScope {
            coverage: Coverage::LeafOnly,
            unknown_issuer: UnknownIssuer::Allow,
        }
    );
}

#[test]
fn an_unknown_revocation_scope_value_is_located_and_names_the_choices() {
    let text = MINIMAL.replace(
        "        ocsp: { mode: soft_fail }\n",
        "        ocsp: { mode: soft_fail }\n        revocation:\n          coverage: intermediates\n",
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem).2,
        "server.client_auth.trust_bundles[0].revocation.coverage"
    );
    assert!(
        problem.message.contains("full_chain or leaf_only"),
        "{}",
        problem.message
    );

    let text = MINIMAL.replace(
        "        ocsp: { mode: soft_fail }\n",
        "        ocsp: { mode: soft_fail }\n        revocation:\n          unknown_issuer: maybe\n",
    );
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem).2,
        "server.client_auth.trust_bundles[0].revocation.unknown_issuer"
    );
    assert!(
        problem.message.contains("reject or allow"),
        "{}",
        problem.message
    );
}

#[test]
fn a_route_that_lists_connect_is_refused_at_the_method() {
    let text = FULL.replace("methods: [GET, HEAD]", "methods: [GET, CONNECT]");
    let problem = only_problem(&text);
    let (line, _, field) = yaml_place(&problem);
    assert_eq!(field, "routes[0].methods[1]");
    assert!(text
        .lines()
        .nth(line - 1)
        .unwrap()
        .contains("methods: [GET, CONNECT]"));
    assert!(
        problem.message.contains("CONNECT is not supported"),
        "{}",
        problem.message
    );
}

// --- what the parser itself refuses ---

#[test]
fn a_key_written_twice_in_one_mapping_is_refused_naming_both_places() {
    let text = MINIMAL.replace("    owner: team\n", "    owner: team\n    owner: other\n");
    let problem = only_problem(&text);
    assert_eq!(
        problem.to_string(),
        format!(
            "/etc/certgate/certgate.yaml:{}:5: partners[0].owner: duplicate key; \
             first written at line {} column 5",
            line_of(&text, "owner: other"),
            line_of(&text, "owner: team")
        )
    );
}

#[test]
fn a_missing_field_is_placed_at_the_mapping_that_lacks_it() {
    let text = MINIMAL.replace("ocsp: { mode: soft_fail }", "ocsp: { timeout: 1s }");
    let problem = only_problem(&text);
    assert_eq!(
        yaml_place(&problem),
        (
            line_of(&text, "ocsp:"),
            9,
            "server.client_auth.trust_bundles[0].ocsp"
        )
    );
    assert_eq!(problem.message, "missing field `mode`");

    let text = MINIMAL.replace("  listen: \"0.0.0.0:8443\"\n", "");
    let problem = only_problem(&text);
    assert_eq!(yaml_place(&problem), (1, 1, "server"));
    assert_eq!(problem.message, "missing field `listen`");
}

#[test]
fn yaml_1_1_booleans_merge_keys_tags_and_empty_values_are_refused_where_written() {
    let cases = [
        (
            MINIMAL.replace("upstreams:\n", "admin:\n  allow_remote: yes\nupstreams:\n"),
            "allow_remote: yes",
            "admin.allow_remote",
            "invalid boolean",
        ),
        (
            MINIMAL.replace("    owner: team\n", "    <<: { owner: team }\n"),
            "<<:",
            "partners[0].<<",
            "merge keys (`<<`) are not supported",
        ),
        (
            MINIMAL.replace("    owner: team\n", "    owner: !secret team\n"),
            "owner: !secret",
            "partners[0].owner",
            "unsupported tag `!secret`",
        ),
        (
            MINIMAL.replace("    owner: team\n", "    owner:\n"),
            "owner:",
            "partners[0].owner",
            "empty value: expected text",
        ),
        (
            MINIMAL.replace(
                "upstreams:\n",
                "  limits:\n    max_connections: lots\nupstreams:\n",
            ),
            "max_connections: lots",
            "server.limits.max_connections",
            "invalid value: expected a whole number, 0 or more",
        ),
        (
            format!("{MINIMAL}---\nserver: {{}}\n"),
            "server: {}",
            "",
            "a second YAML document",
        ),
    ];
    for (text, line, field, message) in cases {
        let problem = only_problem(&text);
        let (at, _, named) = yaml_place(&problem);
        assert_eq!((at, named), (line_of(&text, line), field), "{problem}");
        assert!(problem.message.contains(message), "{problem}");
    }
}

#[test]
fn aliases_resolve_but_an_alias_bomb_is_refused_by_the_parser_budget() {
    let text = MINIMAL
        .replace("      - name: ca\n", "      - name: &bundle ca\n")
        .replace("    trust_bundle: ca\n", "    trust_bundle: *bundle\n");
    assert_eq!(check(&text).unwrap().partners[0].trust_bundle, BundleId(0));

    // Each alias of a scalar costs little, but 60,000 of them are no configuration.
    let aliases = ", *h".repeat(60_000);
    let text = clean().replace(
        "upstreams:\n",
        &format!("forward:\n  strip_headers: [&h X-A{aliases}]\nupstreams:\n"),
    );
    let problem = only_problem(&text);
    let (line, _, field) = yaml_place(&problem);
    assert_eq!(
        (line, field),
        (
            line_of(&text, "strip_headers"),
            "forward.strip_headers[50001]"
        )
    );
    assert!(
        problem
            .message
            .starts_with("more than 50000 aliases: over a parser limit"),
        "{}",
        problem.message
    );
}
