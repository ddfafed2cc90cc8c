//! What the gateway and the CLI report about the partner lifecycle: registry certificates in the
//! expiry gauge before any traffic, scope usage recorded from real requests and persisted in the
//! state folder, the unused-scope report built on it, and the onboarding and revocation metrics.
//! The registry side is the `certgate` binary with CSRs from the `openssl` CLI; the gateway is
//! the library's `Gateway`, started through the loader `serve` uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

// === helpers ===

/// A test environment whose gateway config has a `lifecycle:` state folder `state/` beside it,
/// with the CA created.
struct Lab {
    env: Env,
    yaml: String,
    config: PathBuf,
    state: PathBuf,
}

impl Lab {
    fn new(upstream: SocketAddr) -> Lab {
        let env = Env::new();
        let yaml = env.config(upstream, "lifecycle:\n  state_dir: state\n");
        let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
        let state = env.path("state");
        let lab = Lab {
            env,
            yaml,
            config,
            state,
        };
        lab.ok(&["ca", "init"]);
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        common::cli::run(&self.config, args)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::cli::ok(&self.config, args)
    }

    /// Registers `id` (by alice) with `scopes` and a SPIFFE identity, and approves it (by bob).
    fn onboard(&self, id: &str, scopes: &str) {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        self.ok(&[
            "partner",
            "register",
            id,
            "--owner",
            &format!("api@{id}.example"),
            "--scopes",
            scopes,
            "--spiffe",
            &spiffe,
            "--actor",
            "alice",
        ]);
        self.ok(&["partner", "approve", id, "--actor", "bob"]);
    }

    /// Issues `id` a certificate from a CSR `openssl req` makes; returns (chain, key).
    fn issue(&self, id: &str, name: &str) -> (PathBuf, PathBuf) {
        self.issue_for(id, name, 90)
    }

    /// [`Lab::issue`] valid for `days`.
    fn issue_for(&self, id: &str, name: &str, days: u32) -> (PathBuf, PathBuf) {
        let key = self.env.path(&format!("{name}-key.pem"));
        let csr = self.env.path(&format!("{name}.csr"));
        let cert = self.env.path(&format!("{name}.pem"));
        common::openssl::partner_csr(
            &key,
            &csr,
            &format!("URI:spiffe://partners.example.com/{id}"),
        );
        self.ok(&[
            "partner",
            "issue",
            id,
            "--csr",
            path(&csr),
            "--out",
            path(&cert),
            "--days",
            &days.to_string(),
            "--actor",
            "carol",
        ]);
        (cert, key)
    }

    /// Calls the gateway as the partner holding `cert`/`key`; returns the status.
    async fn call(
        &self,
        gw: &certgate::runtime::Gateway,
        (cert, key): &(PathBuf, PathBuf),
        req: http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> u16 {
        let leaf = common::pki::leaf_from_files(cert, key);
        self.env
            .call_as(gw, &leaf, req)
            .await
            .unwrap()
            .status
            .as_u16()
    }

    fn usage(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state.join("usage/scopes.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// What the usage file says of `partner`'s calls on `scope`, over every writer.
    fn calls(&self, partner: &str, scope: &str) -> certgate::usage::CallSummary {
        certgate::usage::UsageFile::read(&self.state.join("usage/scopes.json"))
            .unwrap()
            .calls(partner, scope)
    }

    async fn gateway(&self) -> certgate::runtime::Gateway {
        self.env.start_with(&self.yaml, true).await
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl_ok(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (serial as `openssl x509 -serial` prints it, notAfter in Unix seconds) of a chain's leaf.
fn serial_and_not_after(cert: &Path) -> (String, i64) {
    let serial = openssl_ok(&["x509", "-in", path(cert), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_owned();
    let end = openssl_ok(&[
        "x509",
        "-in",
        path(cert),
        "-noout",
        "-enddate",
        "-dateopt",
        "iso_8601",
    ]);
    let end = end.trim().trim_start_matches("notAfter=");
    let not_after = time::OffsetDateTime::parse(
        &end.replace(' ', "T"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("notAfter {end}: {e}"))
    .unix_timestamp();
    (serial, not_after)
}

fn expiry_line(partner: &str, serial: &str, not_after: i64) -> String {
    format!(
        "certgate_partner_cert_expiry_timestamp_seconds{{partner=\"{partner}\",serial=\"{serial}\"}} {not_after}"
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_certificates_are_in_the_expiry_gauge_before_any_traffic_and_follow_changes() {
    let up = Upstream::start().await;
    let lab = Lab::new(up.addr);
    lab.onboard("initech", "orders:read");
    let (first, _) = lab.issue("initech", "initech-1");
    let (serial1, end1) = serial_and_not_after(&first);

    let gw = lab.gateway().await;
    scrape_until(gw.admin_addr(), &[&expiry_line("initech", &serial1, end1)]).await;

    // A second certificate appears, and a revoked one leaves, with the reload the table triggers.
    let (second, _) = lab.issue("initech", "initech-2");
    let (serial2, end2) = serial_and_not_after(&second);
    lab.ok(&[
        "partner",
        "revoke",
        "initech",
        "--serial",
        &serial1,
        "--reason",
        "superseded",
        "--actor",
        "carol",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(gw.admin_addr()).await;
        let has = |l: &str| text.lines().any(|line| line == l);
        if has(&expiry_line("initech", &serial2, end2)) && !text.contains(&serial1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gauge did not follow the registry:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn post(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(path)
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_usage_from_real_traffic_persists_and_drives_the_unused_scope_report() {
    let up = Upstream::start().await;
    let lab = Lab::new(up.addr);
    lab.onboard("initech", "orders:read,payments:write");
    lab.onboard("hooli", "orders:read");
    let initech = lab.issue("initech", "initech");
    // Another gateway sharing the state folder recorded hooli's last use 40 days ago.
    let long_ago = unix_now() - 40 * 24 * 3600;
    std::fs::create_dir_all(lab.state.join("usage")).unwrap();
    std::fs::write(
        lab.state.join("usage/scopes.json"),
        serde_json::json!({"partners": {"hooli": {
            "first_call": long_ago, "last_call": long_ago, "scopes": {"orders:read": long_ago}
        }}})
        .to_string(),
    )
    .unwrap();

    let started = unix_now();
    let gw = lab.gateway().await;
    assert_eq!(lab.call(&gw, &initech, get("/v1/orders/7")).await, 200);
    // A request policy refuses is no use of a scope.
    assert_eq!(lab.call(&gw, &initech, get("/v1/payments/1")).await, 405);
    gw.flush_usage().await.unwrap();
    let usage = lab.usage();
    let initech_usage = &usage["partners"]["initech"];
    let read = initech_usage["scopes"]["orders:read"].as_u64().unwrap();
    assert!(read >= started, "{usage}");
    assert!(
        initech_usage["scopes"].get("payments:write").is_none(),
        "{usage}"
    );
    let first_call = initech_usage["first_call"].as_u64().unwrap();
    assert!(first_call >= started, "{usage}");
    assert_eq!(
        usage["partners"]["hooli"]["scopes"]["orders:read"], long_ago,
        "{usage}"
    );
    // Call outcomes per scope, under this process's writer id: the refusal is counted on the
    // scope of the route that refused it.
    let calls = lab.calls("initech", "orders:read");
    assert_eq!(
        (calls.calls, calls.ok, calls.refused, calls.since_refused),
        (1, 1, 0, None)
    );
    let calls = lab.calls("initech", "payments:write");
    assert_eq!(
        (calls.calls, calls.ok, calls.refused, calls.since_refused),
        (1, 0, 1, Some(0))
    );

    // The last requests before a shutdown are flushed by it.
    assert_eq!(lab.call(&gw, &initech, post("/v1/payments/1")).await, 200);
    gw.shutdown().await;
    let usage = lab.usage();
    assert!(
        usage["partners"]["initech"]["scopes"]["payments:write"]
            .as_u64()
            .unwrap()
            >= started,
        "{usage}"
    );

    // A restarted gateway keeps the first call it finds in the folder.
    let gw = lab.gateway().await;
    assert_eq!(lab.call(&gw, &initech, get("/v1/orders/8")).await, 200);
    gw.flush_usage().await.unwrap();
    let usage = lab.usage();
    assert_eq!(
        usage["partners"]["initech"]["first_call"], first_call,
        "{usage}"
    );
    assert_eq!(usage["partners"]["hooli"]["last_call"], long_ago, "{usage}");
    gw.shutdown().await;
    // Counts add up across restarts: the new process writes beside the old one's record and
    // counts nothing twice; its calls all follow the old process's refusal.
    let calls = lab.calls("initech", "orders:read");
    assert_eq!((calls.calls, calls.ok), (2, 2));
    assert_eq!(
        usage["partners"]["initech"]["calls"]["orders:read"]
            .as_object()
            .unwrap()
            .len(),
        2,
        "{usage}"
    );
    let calls = lab.calls("initech", "payments:write");
    assert_eq!(
        (calls.calls, calls.ok, calls.refused, calls.since_refused),
        (2, 1, 1, Some(1)),
        "the POST before the shutdown was flushed by it"
    );

    // 30 days: hooli's stale scope, with the command that removes it; initech used both.
    let report = lab.ok(&["partner", "report", "--unused-scopes", "--since", "30d"]);
    assert!(
        report.starts_with("scopes held but not used in the last 30 days: 1\n"),
        "{report}"
    );
    let line = report.lines().nth(1).unwrap();
    assert!(
        line.starts_with("hooli\towner=api@hooli.example\tscope=orders:read\tlast_used=20"),
        "{line}"
    );
    let command = line.split("remove: ").nth(1).unwrap();
    assert_eq!(
        command,
        "certgate partner scopes hooli --remove orders:read --actor NAME"
    );
    let args: Vec<&str> = command
        .strip_prefix("certgate ")
        .unwrap()
        .replace("NAME", "dave")
        .leak()
        .split(' ')
        .collect();
    lab.ok(&args);
    let report = lab.ok(&["partner", "report", "--unused-scopes", "--since", "30d"]);
    assert!(
        report.starts_with("scopes held but not used in the last 30 days: 0\n"),
        "{report}"
    );

    // A scope never used counts once its grant is older than the window: a fresh partner's is not.
    lab.onboard("umbrella", "orders:read");
    let report = lab.ok(&["partner", "report", "--unused-scopes", "--json"]);
    let unused: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(unused, serde_json::json!([]), "{report}");
    let report = lab.ok(&[
        "partner",
        "report",
        "--unused-scopes",
        "--since",
        "0d",
        "--json",
    ]);
    let unused: serde_json::Value = serde_json::from_str(&report).unwrap();
    let umbrella: Vec<_> = unused
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["partner"] == "umbrella")
        .collect();
    assert_eq!(umbrella.len(), 1, "{report}");
    assert_eq!(umbrella[0]["scope"], "orders:read");
    assert_eq!(umbrella[0]["last_used"], serde_json::Value::Null);
    assert_eq!(
        umbrella[0]["remove"],
        "certgate partner scopes umbrella --remove orders:read --actor NAME"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_metrics_cover_lead_times_expiry_idle_partners_revocation_and_publishing() {
    let up = Upstream::start().await;
    let lab = Lab::new(up.addr);
    lab.onboard("initech", "orders:read");
    lab.onboard("hooli", "orders:read");
    let initech = lab.issue_for("initech", "initech", 5);
    lab.issue_for("hooli", "hooli", 20);
    // As if both had been approved two months ago: the table is what the gateway knows.
    let table_path = lab.state.join("published/partners.json");
    let mut table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&table_path).unwrap()).unwrap();
    let two_months_ago = unix_now() as i64 - 60 * 86_400;
    for p in table["partners"].as_array_mut().unwrap() {
        p["registered_at"] = (two_months_ago - 3600).into();
        p["approved_at"] = two_months_ago.into();
    }
    std::fs::write(&table_path, table.to_string()).unwrap();

    let gw = lab.gateway().await;
    let admin = gw.admin_addr();
    scrape_until(
        admin,
        &[
            "certgate_onboarding_registered_to_approved_seconds_count 2",
            "certgate_onboarding_registered_to_approved_seconds_sum 7200",
            "certgate_onboarding_approved_to_issued_seconds_count 2",
            "certgate_onboarding_issued_to_first_call_seconds_count 0",
            "certgate_registry_certificates_expiring{within=\"7d\"} 1",
            "certgate_registry_certificates_expiring{within=\"30d\"} 2",
            "certgate_registry_publish_failures_total 0",
        ],
    )
    .await;

    // initech calls; hooli never does.
    assert_eq!(lab.call(&gw, &initech, get("/v1/orders/1")).await, 200);
    assert_eq!(lab.call(&gw, &initech, get("/v1/orders/2")).await, 200);
    gw.flush_usage().await.unwrap();
    let text = scrape_until(
        admin,
        &[
            "certgate_onboarding_issued_to_first_call_seconds_count 1",
            "certgate_partners_without_traffic 1",
        ],
    )
    .await;
    let first_call = text
        .lines()
        .find_map(|l| l.strip_prefix("certgate_onboarding_issued_to_first_call_seconds_sum "))
        .unwrap();
    assert!(first_call.parse::<f64>().unwrap() < 600.0, "{first_call}");

    // Revoking every certificate of initech: observed once the gateway has applied it.
    lab.ok(&[
        "partner",
        "revoke",
        "initech",
        "--reason",
        "keyCompromise",
        "--actor",
        "carol",
    ]);
    scrape_until(
        admin,
        &["certgate_registry_certificates_expiring{within=\"7d\"} 0"],
    )
    .await;
    gw.flush_usage().await.unwrap();
    scrape_until(admin, &["certgate_time_to_revoke_seconds_count 1"]).await;
    // Refused from now on, and observed once only. The last request came before the revoke
    // command; the registry's revocation time has one-second resolution, so the observation is
    // under a second.
    let leaf = common::pki::leaf_from_files(&initech.0, &initech.1);
    let refused = lab.env.call_as(&gw, &leaf, get("/v1/orders/3")).await;
    assert!(refused.unwrap_err().contains("CertificateRevoked"));
    gw.flush_usage().await.unwrap();
    scrape_until(
        admin,
        &[
            "certgate_time_to_revoke_seconds_count 1",
            "certgate_time_to_revoke_seconds_bucket{le=\"1\"} 1",
        ],
    )
    .await;

    // A change whose publication fails is counted through the state folder.
    let crl = lab.state.join("published/crl.der");
    let saved = std::fs::read(&crl).unwrap();
    std::fs::remove_file(&crl).unwrap();
    std::fs::create_dir_all(crl.join("blocker")).unwrap();
    let out = lab.run(&[
        "partner",
        "scopes",
        "hooli",
        "--remove",
        "orders:read",
        "--actor",
        "dave",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("publishing it failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.flush_usage().await.unwrap();
    scrape_until(
        admin,
        &[
            "certgate_registry_publish_failures_total 1",
            "certgate_registry_publish_pending 1",
        ],
    )
    .await;
    std::fs::remove_dir_all(&crl).unwrap();
    std::fs::write(&crl, saved).unwrap();
    lab.ok(&["registry", "publish"]);
    gw.flush_usage().await.unwrap();
    scrape_until(
        admin,
        &[
            "certgate_registry_publish_failures_total 1",
            "certgate_registry_publish_pending 0",
        ],
    )
    .await;
    gw.shutdown().await;
}
