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
}

impl Lab {
    fn new(upstream: SocketAddr) -> Lab {
        let env = Env::new();
        let yaml = env.config(upstream, "lifecycle:\n  state_dir: state\n");
        let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
        let lab = Lab { env, yaml, config };
        lab.ok(&["ca", "init"]);
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "certgate {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let key = self.env.path(&format!("{name}-key.pem"));
        let csr = self.env.path(&format!("{name}.csr"));
        let cert = self.env.path(&format!("{name}.pem"));
        openssl_ok(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
            "-subj",
            "/O=partner",
            "-addext",
            &format!("subjectAltName=URI:spiffe://partners.example.com/{id}"),
        ]);
        self.ok(&[
            "partner",
            "issue",
            id,
            "--csr",
            path(&csr),
            "--out",
            path(&cert),
            "--actor",
            "carol",
        ]);
        (cert, key)
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
