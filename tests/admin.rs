//! Operations: the admin API (metrics, health, readiness, status, reload), bounded metric labels,
//! and the audit line of each request — over real sockets, against a real upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::net::TcpStream;

use common::*;

async fn json(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let (status, headers, body) = admin(addr, method, path).await;
    assert_eq!(headers["content-type"], "application/json", "{body}");
    (status, serde_json::from_str(&body).unwrap())
}

fn with_crl(yaml: &str, source: &str) -> String {
    yaml.replacen(
        "        ca: ca.pem\n",
        &format!("        ca: ca.pem\n        crl:\n          - {source}\n"),
        1,
    )
}

#[tokio::test]
async fn metrics_count_an_allowed_call_a_scope_denial_and_refused_handshakes() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();

    let allowed = env.call_as(&gw, &acme, get("/v1/orders/1")).await.unwrap();
    assert_eq!(allowed.status, 200);

    let scope = Request::post("/v1/payments/7")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let denied = env.call_as(&gw, &acme, scope).await.unwrap();
    assert_eq!(denied.reason(), "scope_denied");

    let no_cert = call(
        gw.local_addr(),
        env.client(None, &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await;
    assert!(no_cert.is_err());

    let stranger = acme_identity(&Ca::root("some other CA")).issue();
    let unknown_ca = env.call_as(&gw, &stranger, get("/v1/orders/1")).await;
    assert!(unknown_ca.is_err());

    let text = scrape_until(
        gw.admin_addr(),
        &[
            r#"certgate_requests_total{partner="acme",route="orders-read",status_class="2xx"} 1"#,
            r#"certgate_requests_total{partner="acme",route="payments-write",status_class="4xx"} 1"#,
            r#"certgate_policy_denials_total{partner="acme",reason="scope_denied"} 1"#,
            r#"certgate_tls_handshakes_total{result="ok"} 2"#,
            r#"certgate_tls_handshakes_total{result="no_client_cert"} 1"#,
            r#"certgate_tls_handshakes_total{result="unknown_ca"} 1"#,
            r#"certgate_tls_handshakes_total{result="expired"} 0"#,
            r#"certgate_tls_handshakes_total{result="timeout"} 0"#,
            "certgate_tls_handshake_duration_seconds_count 4",
            r#"certgate_request_duration_seconds_count{route="orders-read"} 1"#,
            r#"certgate_request_duration_seconds_count{route="payments-write"} 1"#,
            r#"certgate_upstream_duration_seconds_count{upstream="orders"} 1"#,
            r#"certgate_upstream_errors_total{kind="connect",upstream="orders"} 0"#,
            "certgate_connections_active 0",
        ],
    )
    .await;
    // The partner's certificate, keyed by the serial certgate read from it.
    let expiry = text
        .lines()
        .find(|l| l.starts_with("certgate_partner_cert_expiry_timestamp_seconds{partner=\"acme\""))
        .unwrap_or_else(|| panic!("no expiry gauge for acme:\n{text}"));
    let not_after: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let in_days = (not_after - now_unix()) / 86_400.0;
    assert!((29.0..31.0).contains(&in_days), "{expiry}");
    assert!(text.contains("certgate_build_info{version=\""));
    assert!(text.contains("certgate_config_last_reload_success_timestamp_seconds "));
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_counted_by_upstream_and_kind_not_as_denials() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let answer = env
        .call_as(&gw, &env.acme(), get("/v1/broken/x"))
        .await
        .unwrap();
    assert_eq!(answer.status, 502);
    let text = scrape_until(
        gw.admin_addr(),
        &[
            r#"certgate_upstream_errors_total{kind="connect",upstream="dead"} 1"#,
            r#"certgate_requests_total{partner="acme",route="broken",status_class="5xx"} 1"#,
        ],
    )
    .await;
    assert!(!text.contains("certgate_policy_denials_total{"), "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn label_values_stay_bounded_under_hostile_paths_and_hosts() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let tls = env.tls_as(&gw, &env.globex()).await;
    let mut sender = handshake_http(tls).await.unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let path = match i % 5 {
            0 => format!("/evil-{seed:x}/../../etc/passwd"),
            1 => format!("/v1/orders/{seed:x}%2e%2e/%00"),
            2 => format!("/{seed:x}?q=%3Cscript%3E&x=%22"),
            3 => format!("/v1/payments/{seed:x}"),
            _ => format!("//evil-{seed:x}//x"),
        };
        let req = Request::builder()
            .method(["GET", "POST", "DELETE", "PURGE"][i % 4])
            .uri(path)
            .header("host", format!("evil-{seed:x}.example"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = read(sender.send(req).await.unwrap()).await;
        assert!(answer.status.is_client_error(), "{}", answer.status);
    }
    drop(sender);
    let text = scrape_until(gw.admin_addr(), &["certgate_connections_active 0"]).await;

    let routes: BTreeSet<&str> = ["none", "orders-read", "payments-write", "hosted", "broken"]
        .into_iter()
        .collect();
    let partners: BTreeSet<&str> = ["acme", "globex", "unknown"].into_iter().collect();
    let mut series = 0;
    for line in text.lines().filter(|l| l.starts_with("certgate_")) {
        series += 1;
        assert!(!line.contains("evil"), "client input in a label: {line}");
        for (name, allowed) in [("route", &routes), ("partner", &partners)] {
            if let Some(value) = label(line, name) {
                assert!(allowed.contains(value.as_str()), "{line}");
            }
        }
    }
    // Fixed series (every enum label value exported at zero, the lifecycle and onboarding
    // histograms) plus histogram buckets for the configured routes and upstreams: it must not
    // grow with the number of distinct requests.
    assert!(series < 400, "{series} series:\n{text}");
    let request_series = text
        .lines()
        .filter(|l| l.starts_with("certgate_requests_total{"))
        .count();
    assert!(request_series <= 2, "{text}");
    gw.shutdown().await;
}

fn label(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

#[tokio::test]
async fn readyz_is_ready_once_every_crl_source_has_loaded() {
    let env = Env::new();
    let up = Upstream::start().await;
    std::fs::write(env.path("ca.crl"), env.root.crl(&[4242], 1)).unwrap();
    let gw = env
        .start(&with_crl(&env.config(up.addr, ""), "path: ca.crl"))
        .await;

    let (status, body) = json(gw.admin_addr(), "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    let (status, body) = json(gw.admin_addr(), "GET", "/healthz").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &"ok".into()));

    let allowed = env
        .call_as(&gw, &env.acme(), get("/v1/orders/1"))
        .await
        .unwrap();
    assert_eq!(allowed.status, 200);

    let source = env.path("ca.crl").display().to_string();
    let entries = format!(r#"certgate_crl_entries{{bundle="partner-ca",source="{source}"}} 1"#);
    let text = scrape_until(gw.admin_addr(), &[&entries]).await;
    let next_update = text
        .lines()
        .find(|l| l.starts_with("certgate_crl_next_update_timestamp_seconds{bundle=\"partner-ca\""))
        .unwrap_or_else(|| panic!("no CRL nextUpdate:\n{text}"));
    let hours_left = (next_update
        .rsplit(' ')
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        - now_unix())
        / 3600.0;
    assert!((23.0..25.0).contains(&hours_left), "{next_update}");
    let good = text
        .lines()
        .find(|l| l.starts_with(r#"certgate_revocation_checks_total{result="good",source="crl"}"#))
        .unwrap();
    assert!(!good.ends_with(" 0"), "{good}");
    assert!(text.contains("certgate_ocsp_cache_entries 0"));
    gw.shutdown().await;
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_while_a_crl_url_is_unreachable() {
    let env = Env::new();
    let up = Upstream::start().await;
    let url = dead_url("ca.crl");
    let gw = env
        .start(&with_crl(
            &env.config(up.addr, ""),
            &format!("url: \"{url}\"\n            refresh: 1h"),
        ))
        .await;

    let (status, body) = json(gw.admin_addr(), "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{body}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.contains("partner-ca") && reason.contains(&url),
        "{reason}"
    );

    // It fails closed meanwhile: the partner is refused in the handshake.
    let refused = env.call_as(&gw, &env.acme(), get("/v1/orders/1")).await;
    assert!(refused.is_err(), "{refused:?}");
    scrape_until(
        gw.admin_addr(),
        &[
            r#"certgate_tls_handshakes_total{result="revocation_unknown"} 1"#,
            r#"certgate_revocation_checks_total{result="unknown",source="crl"} 1"#,
        ],
    )
    .await;

    let (_, status) = json(gw.admin_addr(), "GET", "/status").await;
    let crl = &status["bundles"][0]["crls"][0];
    assert_eq!(crl["source"], url.as_str());
    assert_eq!(crl["loaded"], false);
    assert!(crl["last_error"].as_str().unwrap().contains(&url), "{crl}");
    gw.shutdown().await;
}

#[tokio::test]
async fn status_reports_the_generation_its_bundles_and_counts() {
    let env = Env::new();
    let up = Upstream::start().await;
    std::fs::write(env.path("ca.crl"), env.root.crl(&[7, 8], 3)).unwrap();
    let gw = env
        .start(&with_crl(&env.config(up.addr, ""), "path: ca.crl"))
        .await;
    let (status, body) = json(gw.admin_addr(), "GET", "/status").await;
    assert_eq!(status, 200);
    let snapshot = gw.snapshot();
    assert_eq!(body["version"], snapshot.config.version.as_str());
    assert_eq!(
        body["source"],
        env.path("certgate.yaml").display().to_string().as_str()
    );
    // Instants a person reads are RFC 3339, not epoch integers.
    let loaded_at = rfc3339_unix(body["loaded_at"].as_str().unwrap());
    assert!((now_unix() - loaded_at).abs() < 60.0, "{body}");
    assert_eq!(body["partners"], 2);
    assert_eq!(body["routes"], 4);
    assert_eq!(body["upstreams"], 2);
    assert_eq!(body["connections_active"], 0);
    assert_eq!(body["draining"], false);
    let bundle = &body["bundles"][0];
    assert_eq!(bundle["name"], "partner-ca");
    assert_eq!(bundle["ocsp"], false);
    let crl = &bundle["crls"][0];
    assert_eq!(crl["bundle"], "partner-ca");
    assert_eq!(crl["loaded"], true);
    assert!(crl["last_error"].is_null());
    assert_eq!(crl["crls"][0]["entries"], 2);
    assert_eq!(crl["crls"][0]["crl_number"], "03");
    let this_update = rfc3339_unix(crl["crls"][0]["this_update"].as_str().unwrap());
    let next_update = rfc3339_unix(crl["crls"][0]["next_update"].as_str().unwrap());
    // The test CA's CRL: issued a minute ago, next update in a day.
    assert!((now_unix() - this_update - 60.0).abs() < 60.0, "{body}");
    assert!(
        (next_update - now_unix() - 86_400.0).abs() < 120.0,
        "{body}"
    );
    let last_success = rfc3339_unix(crl["last_success"].as_str().unwrap());
    assert!((now_unix() - last_success).abs() < 60.0, "{body}");
    for counter in [
        "cache_entries",
        "queries_sent",
        "cache_hits",
        "errors",
        "soft_fail_allowed",
    ] {
        assert_eq!(body["ocsp"][counter], 0, "{counter}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_reports_which_partners_routes_and_bundles_it_changed() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start(&yaml).await;
    let addr = gw.admin_addr();

    let changed = yaml
        // acme gains a scope.
        .replace(
            "scopes: [orders:read]\n",
            "scopes: [orders:read, payments:write]\n",
        )
        // initech is new, with a scope no one had: interned scope indices shift, and globex,
        // whose scopes are the same names, must not read as changed.
        .replace(
            "routes:\n",
            "  - id: initech\n    owner: ops@initech.example\n    trust_bundle: partner-ca\n    \
             identities:\n      - subject_cn: initech\n    scopes: [a:first]\nroutes:\n",
        )
        .replace(
            "  - name: hosted\n    host: api.example.com\n    path: /v1/hosted\n    \
             scope: orders:read\n    upstream: orders\n",
            "",
        )
        .replace(
            "        ca: ca.pem\n",
            "        ca: ca.pem\n        crl_expired: allow_with_warning\n",
        );
    assert!(!changed.contains("name: hosted"));
    std::fs::write(env.path("certgate.yaml"), &changed).unwrap();
    let (status, body) = json(addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let expected = serde_json::json!({
        "partners": {"added": ["initech"], "removed": [], "changed": ["acme"]},
        "routes": {"added": [], "removed": ["hosted"], "changed": []},
        "bundles": {"added": [], "removed": [], "changed": ["partner-ca"]},
    });
    assert_eq!(body["changes"], expected, "{body}");

    // The same file again: nothing changed.
    let (status, body) = json(addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let none = serde_json::json!({"added": [], "removed": [], "changed": []});
    for list in ["partners", "routes", "bundles"] {
        assert_eq!(body["changes"][list], none, "{body}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_applies_or_rejects_with_the_located_problem_and_counts_both() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start(&yaml).await;
    let addr = gw.admin_addr();

    std::fs::write(
        env.path("certgate.yaml"),
        yaml.replace(
            "scopes: [orders:read]\n",
            "scopes: [orders:read, payments:write]\n",
        ),
    )
    .unwrap();
    let (status, body) = json(addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "applied");
    let version = body["version"].as_str().unwrap().to_owned();
    assert_eq!(version, gw.snapshot().config.version);

    std::fs::write(env.path("certgate.yaml"), "server:\n  listen: [\n").unwrap();
    let (status, body) = json(addr, "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["result"], "rejected");
    let problem = body["problems"][0].as_str().unwrap();
    let located = format!("{}:", env.path("certgate.yaml").display());
    assert!(problem.starts_with(&located), "{problem}");
    assert!(
        problem[located.len()..]
            .split(':')
            .take(2)
            .all(|n| n.parse::<u32>().is_ok()),
        "no line:column in {problem}"
    );

    // The applied generation keeps serving.
    assert_eq!(gw.snapshot().config.version, version);
    let pay = Request::post("/v1/payments/7")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = env.call_as(&gw, &env.acme(), pay).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    scrape_until(
        addr,
        &[
            r#"certgate_config_reloads_total{result="applied"} 1"#,
            r#"certgate_config_reloads_total{result="rejected"} 1"#,
            r#"certgate_requests_total{partner="acme",route="payments-write",status_class="2xx"} 1"#,
        ],
    )
    .await;

    let (status, headers, _) = admin(addr, "GET", "/reload").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    let (status, headers, _) = admin(addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, _, _) = admin(addr, "GET", "/nope").await;
    assert_eq!(status, 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_is_not_served_on_the_partner_port() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    assert_ne!(gw.admin_addr(), gw.local_addr());
    assert!(gw.admin_addr().ip().is_loopback());
    // With a partner certificate, /metrics on the partner port is just an unrouted path.
    let answer = env
        .call_as(&gw, &env.acme(), get("/metrics"))
        .await
        .unwrap();
    assert_eq!(answer.reason(), "no_route");
    gw.shutdown().await;
}

#[test]
fn check_refuses_a_non_loopback_admin_listener_without_allow_remote() {
    let env = Env::new();
    let yaml = env.config("127.0.0.1:9".parse().unwrap(), "").replace(
        "admin:\n  listen: \"127.0.0.1:0\"",
        "admin:\n  listen: \"0.0.0.0:9901\"",
    );
    let path = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("admin.listen") && stderr.contains("allow_remote"),
        "{stderr}"
    );

    let allowed = yaml.replace(
        "listen: \"0.0.0.0:9901\"",
        "listen: \"0.0.0.0:9901\"\n  allow_remote: true",
    );
    write_file(env.dir.path(), "certgate.yaml", &allowed);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn audit_lines_carry_every_field_for_allowed_denied_and_refused() {
    // Other tests' lines are filtered out by path below.
    let captured = audit();

    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();

    let upload = Request::post("/v1/orders/count-body/audit")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let allowed = call(gw.local_addr(), env.client(Some(&acme), &[b"h2"]), upload)
        .await
        .unwrap();
    assert_eq!(allowed.body, "{\"bytes\":5}");
    let deny = Request::post("/v1/payments/audit")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let denied = env.call_as(&gw, &acme, deny).await.unwrap();
    assert_eq!(denied.status, 403);
    let _ = call(
        gw.local_addr(),
        env.client(None, &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await
    .unwrap_err();

    let fields = [
        "timestamp",
        "conn.id",
        "client.addr",
        "sni",
        "partner",
        "cert.subject",
        "cert.serial",
        "cert.sha256",
        "route",
        "http.method",
        "http.path",
        "http.status",
        "decision",
        "reason",
        "upstream",
        "bytes.in",
        "bytes.out",
        "duration_ms",
        "upstream_ms",
    ];
    let allow = captured
        .lines("http.path", "/v1/orders/count-body/audit", 1)
        .await;
    assert_eq!(allow.len(), 1, "{allow:?}");
    let allow = &allow[0];
    for f in fields {
        assert!(!allow[f].is_null(), "allowed line lacks {f}: {allow}");
    }
    assert_eq!(allow["event"], "request");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reason"], "ok");
    assert_eq!(allow["partner"], "acme");
    assert_eq!(allow["sni"], "localhost");
    assert_eq!(allow["route"], "orders-read");
    assert_eq!(allow["upstream"], "orders");
    assert_eq!(allow["http.method"], "POST");
    assert_eq!(allow["http.status"], 200);
    assert_eq!(allow["bytes.in"], 5);
    assert_eq!(allow["bytes.out"], allowed.body.len());
    assert_eq!(allow["body.complete"], true);
    assert_eq!(allow["cert.sha256"], acme.fingerprint_hex().as_str());
    assert!(allow["cert.subject"]
        .as_str()
        .unwrap()
        .contains("acme-billing"));
    assert!(allow["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(allow["duration_ms"].as_f64().unwrap() >= allow["upstream_ms"].as_f64().unwrap());

    let deny = captured.lines("http.path", "/v1/payments/audit", 1).await;
    assert_eq!(deny.len(), 1, "{deny:?}");
    let deny = &deny[0];
    for f in fields {
        assert!(!deny[f].is_null(), "denied line lacks {f}: {deny}");
    }
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reason"], "scope_denied");
    assert_eq!(deny["http.status"], 403);
    // A route matched; the partner lacks its scope.
    assert_eq!(deny["route"], "payments-write");
    assert_eq!(deny["upstream"], "none");
    assert_eq!(deny["bytes.out"], denied.body.len());

    let refused = captured.lines("event", "handshake_refused", 1).await;
    let refused = refused
        .iter()
        .find(|v| v["reason"] == "no_client_cert")
        .unwrap_or_else(|| panic!("{refused:?}"));
    for f in [
        "timestamp",
        "conn.id",
        "client.addr",
        "decision",
        "reason",
        "duration_ms",
    ] {
        assert!(!refused[f].is_null(), "handshake line lacks {f}: {refused}");
    }
    assert_eq!(refused["decision"], "deny");
    gw.shutdown().await;
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_metrics_certgate_exports() {
    let env = Env::new();
    let up = Upstream::start().await;
    std::fs::write(env.path("ca.crl"), env.root.crl(&[], 1)).unwrap();
    let gw = env
        .start(&with_crl(&env.config(up.addr, ""), "path: ca.crl"))
        .await;
    // Populate the lazily created series: a request, a denial, a partner certificate.
    let client = env.tls_config_for(&env.acme());
    call(gw.local_addr(), client.clone(), get("/v1/orders/1"))
        .await
        .unwrap();
    call(gw.local_addr(), client, get("/v1/nothing"))
        .await
        .unwrap();
    let text = scrape_until(
        gw.admin_addr(),
        &[r#"certgate_policy_denials_total{partner="acme",reason="no_route"} 1"#],
    )
    .await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let alerts: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("alerts.yaml")).unwrap())
            .unwrap();
    let mut expressions = Vec::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            expressions.push((name.to_owned(), rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    assert!(expressions.len() >= 5);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    // The operator's minimum: the target itself, the server certificate, revocation sources.
    for wanted in [
        "CertgateTargetDown",
        "CertgateServerCertificateExpiring",
        "CertgateCrlSourceNotLoaded",
        "CertgateCrlStale",
        "CertgateOcspErrors",
    ] {
        assert!(
            expressions.iter().any(|(name, _)| name == wanted),
            "alerts.yaml lacks {wanted}"
        );
    }
    for (name, expr) in &expressions {
        let used = metric_names(expr);
        if name == "CertgateTargetDown" {
            // Prometheus' own series for the scrape target: certgate cannot export it.
            assert!(expr.starts_with("up{"), "{name}: {expr}");
            continue;
        }
        assert!(!used.is_empty(), "{name}: {expr} names no certgate metric");
        for metric in used {
            assert!(
                exported.contains(&metric),
                "{name}: {metric} is not exported by certgate"
            );
        }
    }

    // Where promtool is installed (the Debian `prometheus` package), it checks the rules too.
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("alerts.yaml"))
        .output()
    {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    gw.shutdown().await;
}

/// The certgate and standard process metrics an expression names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = ["certgate_", "process_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Unix seconds of an RFC 3339 UTC instant as `/status` writes it (`2026-12-03T03:23:15Z`).
fn rfc3339_unix(text: &str) -> f64 {
    let field = |range: std::ops::Range<usize>| -> u32 {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not RFC 3339 UTC: {text}"))
    };
    assert!(
        text.len() == 20 && text.ends_with('Z') && &text[10..11] == "T",
        "{text}"
    );
    let date = time::Date::from_calendar_date(
        field(0..4) as i32,
        time::Month::try_from(field(5..7) as u8).unwrap(),
        field(8..10) as u8,
    )
    .unwrap();
    let at = time::Time::from_hms(
        field(11..13) as u8,
        field(14..16) as u8,
        field(17..19) as u8,
    )
    .unwrap();
    time::PrimitiveDateTime::new(date, at)
        .assume_utc()
        .unix_timestamp() as f64
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_appends_audit_lines_to_the_log_file() {
    let env = Env::new();
    let up = Upstream::start().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (partner, admin_addr) = (free(), free());
    let yaml = env
        .config(up.addr, "")
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{partner}\""),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{admin_addr}\""),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let log = env.path("audit.log");
    std::fs::write(&log, "{\"kept\":true}\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(admin_addr).await.is_err() {
        assert!(Instant::now() < deadline, "certgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = call(
        partner,
        env.tls_config_for(&env.acme()),
        get("/v1/orders/logged"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    let (status, _, _) = admin(admin_addr, "GET", "/healthz").await;
    assert_eq!(status, 200);

    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["http.path"] == "/v1/orders/logged").then_some(v)
            });
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let line = found.expect("no audit line in the log file");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["target"], "certgate::audit");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("{\"kept\":true}\n"),
        "the file was not appended to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_the_gateway_drains() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let (partner, admin_addr) = (gw.local_addr(), gw.admin_addr());
    let client = env.tls_config_for(&env.acme());
    let slow = tokio::spawn(call(partner, client, get("/v1/orders/delay/1500")));
    // Wait until the slow request is in flight, then start draining.
    scrape_until(admin_addr, &["certgate_connections_active 1"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = tokio::spawn(gw.shutdown());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = json(admin_addr, "GET", "/readyz").await;
        if status == 503 {
            assert!(body["reasons"][0]
                .as_str()
                .unwrap()
                .contains("shutting down"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready while draining: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    assert!(
        drain.await.unwrap(),
        "the in-flight request should finish in time"
    );
    assert!(
        TcpStream::connect(admin_addr).await.is_err(),
        "admin API still up"
    );
}

/// The value of the series written exactly as `series` (name and labels), if the scrape has it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn whole_seconds_from_now(days: i64) -> (time::OffsetDateTime, f64) {
    let secs = now_unix() as i64 + days * 86_400;
    (
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap(),
        secs as f64,
    )
}

#[tokio::test]
async fn server_certificate_expiry_is_exported_per_sni_name_and_follows_reloads() {
    let env = Env::new();
    let up = Upstream::start().await;
    let (until_a, a) = whole_seconds_from_now(40);
    let (until_b, b) = whole_seconds_from_now(90);
    env.root
        .leaf("a")
        .dns("localhost")
        .dns("api.example.com")
        .server_auth_only()
        .valid_until(until_a)
        .issue()
        .write(env.dir.path(), "a");
    // `localhost` is named by both; the first configured certificate serves it.
    env.root
        .leaf("b")
        .dns("other.example.com")
        .dns("*.wild.example.com")
        .dns("localhost")
        .server_auth_only()
        .valid_until(until_b)
        .issue()
        .write(env.dir.path(), "b");
    let certificates = |files: &[&str]| {
        let base = env.config(up.addr, "");
        let listed: String = files
            .iter()
            .map(|f| format!("      - cert: {f}.pem\n        key: {f}-key.pem\n"))
            .collect();
        base.replacen(
            "      - cert: server.pem\n        key: server-key.pem\n",
            &listed,
            1,
        )
    };
    let gw = env.start(&certificates(&["a", "b"])).await;
    let metric = |sni: &str| {
        format!("certgate_server_certificate_expiry_timestamp_seconds{{sni=\"{sni}\"}}")
    };

    let text = scrape(gw.admin_addr()).await;
    for (sni, expiry) in [
        ("_default", a),
        ("localhost", a),
        ("api.example.com", a),
        ("other.example.com", b),
        ("*.wild.example.com", b),
    ] {
        assert_eq!(sample(&text, &metric(sni)), Some(expiry), "{sni}:\n{text}");
    }

    // A reload that drops certificate `a` moves `localhost` and the default to `b` and removes
    // the names only `a` served.
    std::fs::write(env.path("certgate.yaml"), certificates(&["b"])).unwrap();
    let (status, _, body) = admin(gw.admin_addr(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let text = scrape(gw.admin_addr()).await;
    assert_eq!(sample(&text, &metric("_default")), Some(b), "{text}");
    assert_eq!(sample(&text, &metric("localhost")), Some(b), "{text}");
    assert_eq!(sample(&text, &metric("api.example.com")), None, "{text}");

    // A rejected reload keeps the gauges of the configuration still in service.
    std::fs::write(env.path("certgate.yaml"), certificates(&["missing"])).unwrap();
    let (status, _, body) = admin(gw.admin_addr(), "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    let text = scrape(gw.admin_addr()).await;
    assert_eq!(sample(&text, &metric("localhost")), Some(b), "{text}");
    assert_eq!(
        sample(&text, &metric("other.example.com")),
        Some(b),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn partner_certificate_expiry_covers_registered_certificates_beside_those_seen() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let (until, seen_expiry) = whole_seconds_from_now(20);
    let acme = acme_identity(&env.root).valid_until(until).issue();
    let answer = env.call_as(&gw, &acme, get("/v1/orders/1")).await.unwrap();
    assert_eq!(answer.status, 200);
    // globex never connects: its certificate is known only to the lifecycle registry.
    let (_, registered_expiry) = whole_seconds_from_now(5);
    gw.metrics()
        .set_registered_certificates([("globex", "0A1B2C", registered_expiry as i64)]);

    let seen = format!(
        "certgate_partner_cert_expiry_timestamp_seconds{{partner=\"acme\",serial=\"{:X}\"}}",
        acme.serial
    );
    let registered =
        r#"certgate_partner_cert_expiry_timestamp_seconds{partner="globex",serial="0A1B2C"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(gw.admin_addr()).await;
        if sample(&text, &seen).is_some() || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(sample(&text, &seen), Some(seen_expiry), "{text}");
    assert_eq!(sample(&text, registered), Some(registered_expiry), "{text}");

    // The registry's next publication replaces its set; traffic-seen certificates stay.
    gw.metrics().set_registered_certificates([]);
    let text = scrape(gw.admin_addr()).await;
    assert_eq!(sample(&text, registered), None, "{text}");
    assert_eq!(sample(&text, &seen), Some(seen_expiry), "{text}");
    gw.shutdown().await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_standard_process_metrics_are_exported() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let text = scrape(gw.admin_addr()).await;
    let rss = sample(&text, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1_000_000.0, "resident memory {rss}:\n{text}");
    // The listeners alone hold descriptors open.
    let fds = sample(&text, "process_open_fds").unwrap();
    assert!(fds >= 2.0, "open fds {fds}");
    assert!(sample(&text, "process_max_fds").unwrap() >= fds);
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(sample(&text, "process_start_time_seconds").unwrap() > 1.6e9);
    gw.shutdown().await;
}
