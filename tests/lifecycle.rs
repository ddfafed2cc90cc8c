//! The partner lifecycle as operators and partners use it: the `certgate` binary for every
//! command, the `openssl` CLI on the partner's side (key, CSR) and as the verifier of what the CA
//! issues and revokes, `curl` and a keep-alive TLS client against a running `certgate serve`, and
//! the `sqlite3` and `psql` CLIs to tamper with the registry.
//!
//! Every test runs twice, once per registry backend: on the embedded SQLite file (`on_sqlite::…`)
//! and on a real PostgreSQL server (`on_postgres::…`, see `common::postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::postgres::PgDatabase;
use common::*;
use http_body_util::BodyExt;

/// The registry's database in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

// === helpers ===

/// A gateway config (the standard test one, with YAML partners acme and globex) whose
/// `lifecycle:` state folder is `state/` beside it, on free ports.
struct Setup {
    env: Env,
    config: PathBuf,
    state: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    /// The test's own PostgreSQL database, when the registry is on PostgreSQL.
    pg: Option<PgDatabase>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn setup(upstream: SocketAddr, backend: Backend) -> Setup {
    let env = Env::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pg = (backend == Backend::Postgres).then(PgDatabase::create);
    let lifecycle = match &pg {
        None => "lifecycle:\n  state_dir: state\n".to_owned(),
        Some(db) => format!("lifecycle:\n  state_dir: state\n  database: {}\n", db.url),
    };
    let yaml = env
        .config(upstream, &lifecycle)
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{listen}\""),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{admin}\""),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let state = env.path("state");
    Setup {
        env,
        config,
        state,
        listen,
        admin,
        pg,
    }
}

impl Setup {
    /// Runs `certgate ARGS --config CONFIG`.
    fn run(&self, args: &[&str]) -> Output {
        common::cli::run(&self.config, args)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::cli::ok(&self.config, args)
    }

    /// Runs a command that must fail; returns its stderr.
    fn refused(&self, args: &[&str]) -> String {
        common::cli::refused(&self.config, args)
    }

    fn ca_pem(&self) -> PathBuf {
        self.state.join("ca").join("ca.pem")
    }

    /// Runs SQL on the registry behind certgate's back: `sqlite3` on the file, `psql` on the
    /// PostgreSQL database. Rows come back as `a|b`, one a line.
    fn sql(&self, sql: &str) -> String {
        match &self.pg {
            Some(db) => db.psql(sql),
            None => sqlite3(&self.state.join("registry.sqlite"), sql),
        }
    }

    /// `registry verify`'s event count.
    fn events(&self) -> usize {
        let out = self.ok(&["registry", "verify"]);
        out.split(" events")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no event count in {out}"))
    }

    /// Registers `id` (by alice) with a SPIFFE identity and approves it (by bob).
    fn onboard(&self, id: &str) {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        self.ok(&[
            "partner",
            "register",
            id,
            "--owner",
            "ops@example.com",
            "--scopes",
            "orders:read",
            "--spiffe",
            &spiffe,
            "--actor",
            "alice",
        ]);
        self.ok(&["partner", "approve", id, "--actor", "bob"]);
    }

    /// Makes a P-256 key and a CSR for `san` with `openssl req`; returns (csr, key).
    fn csr(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let key = self.env.path(&format!("{name}-key.pem"));
        let csr = self.env.path(&format!("{name}.csr"));
        common::openssl::partner_csr(&key, &csr, san);
        (csr, key)
    }

    /// Issues `id` a certificate from a fresh CSR; returns (cert chain, key).
    fn issue(&self, id: &str, name: &str) -> (PathBuf, PathBuf) {
        let (csr, key) = self.csr(name, &format!("URI:spiffe://partners.example.com/{id}"));
        let cert = self.env.path(&format!("{name}.pem"));
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

    /// `openssl verify` of `cert` against the CA and its published CRL.
    fn openssl_verify(&self, cert: &Path) -> Output {
        let crl_pem = self.env.path("crl-now.pem");
        openssl_ok(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            path(&self.state.join("published/crl.der")),
            "-out",
            path(&crl_pem),
        ]);
        let leaf = self.env.path("leaf-only.pem");
        let text = std::fs::read_to_string(cert).unwrap();
        let first = text
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        std::fs::write(&leaf, first).unwrap();
        Command::new("openssl")
            .args(["verify", "-crl_check", "-purpose", "sslclient", "-CAfile"])
            .arg(self.ca_pem())
            .arg("-CRLfile")
            .arg(&crl_pem)
            .arg(&leaf)
            .output()
            .unwrap()
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

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `certgate serve` process, killed on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(s: &Setup) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&s.config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(s.listen).is_err() {
        assert!(Instant::now() < deadline, "certgate did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served(child)
}

async fn curl_status(s: &Setup, cert: &Path, key: &Path) -> Result<String, String> {
    let args = vec![
        "-sS".to_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-w".to_owned(),
        "%{http_code}".to_owned(),
        "--cacert".to_owned(),
        s.env.path("ca.pem").display().to_string(),
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
        format!("https://localhost:{}/v1/orders/7", s.listen.port()),
    ];
    let out =
        tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output().unwrap())
            .await
            .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// === tests ===

/// Each test once per backend, under the same name in `on_sqlite` and `on_postgres`.
macro_rules! on_both_backends {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_partner_onboarded_through_the_lifecycle_is_served_and_revoking_cuts_it() {
                super::a_partner_onboarded_through_the_lifecycle_is_served_and_revoking_cuts_it(
                    $backend,
                )
                .await;
            }

            #[test]
            fn refusals_name_their_reason_and_write_nothing() {
                super::refusals_name_their_reason_and_write_nothing($backend);
            }

            #[test]
            fn the_event_log_replays_to_the_same_state_and_an_edited_row_is_named() {
                super::the_event_log_replays_to_the_same_state_and_an_edited_row_is_named($backend);
            }

            #[test]
            fn twenty_concurrent_cli_invocations_leave_a_consistent_registry() {
                super::twenty_concurrent_cli_invocations_leave_a_consistent_registry($backend);
            }

            #[test]
            fn a_renewed_certificate_overlaps_the_old_one_and_offboarding_retires_everything() {
                super::a_renewed_certificate_overlaps_the_old_one_and_offboarding_retires_everything(
                    $backend,
                );
            }

            #[test]
            fn a_revocation_is_in_force_even_when_the_partner_table_cannot_be_written() {
                super::a_revocation_is_in_force_even_when_the_partner_table_cannot_be_written(
                    $backend,
                );
            }

            #[test]
            fn the_expiring_report_lists_certificates_due_with_their_owners_until_renewed() {
                super::the_expiring_report_lists_certificates_due_with_their_owners_until_renewed(
                    $backend,
                );
            }
        }
    };
}

on_both_backends!(on_sqlite, Backend::Sqlite);
on_both_backends!(on_postgres, Backend::Postgres);

async fn a_partner_onboarded_through_the_lifecycle_is_served_and_revoking_cuts_it(
    backend: Backend,
) {
    let up = Upstream::start().await;
    let s = setup(up.addr, backend);

    let out = s.ok(&["ca", "init"]);
    assert!(out.contains("CA ready"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.state.join("ca/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the CA key is readable by its owner only"
        );
    }
    let key_before = std::fs::read(s.state.join("ca/ca-key.pem")).unwrap();
    let again = s.refused(&["ca", "init"]);
    assert!(again.contains("refusing to overwrite"), "{again}");
    assert_eq!(
        std::fs::read(s.state.join("ca/ca-key.pem")).unwrap(),
        key_before
    );

    // The gateway runs from the start; it picks up the registry's changes as they come.
    let _gw = serve(&s);

    s.ok(&[
        "partner",
        "register",
        "initech",
        "--owner",
        "api@initech.example",
        "--scopes",
        "orders:read",
        "--spiffe",
        "spiffe://partners.example.com/initech",
        "--actor",
        "alice",
    ]);
    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);
    let (cert, key) = s.issue("initech", "initech");
    let issued = openssl_ok(&["x509", "-in", path(&cert), "-noout", "-text"]);
    assert!(issued.contains("TLS Web Client Authentication"), "{issued}");
    assert!(
        issued.contains("URI:spiffe://partners.example.com/initech"),
        "{issued}"
    );
    assert!(issued.contains("Authority Key Identifier"), "{issued}");
    assert!(issued.contains("Subject Key Identifier"), "{issued}");
    assert!(issued.contains("CA:FALSE"), "{issued}");
    let serial = openssl_ok(&["x509", "-in", path(&cert), "-noout", "-serial"]);
    let serial_hex = serial.trim().trim_start_matches("serial=");
    assert!(
        serial_hex.len() >= 16,
        "a serial of at least 64 bits: {serial_hex}"
    );
    assert!(s.openssl_verify(&cert).status.success());

    // curl, as the partner would, until the gateway has reloaded the new partner table.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = curl_status(&s, &cert, &key).await;
        if last.as_deref() == Ok("200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last.as_deref(),
        Ok("200"),
        "the onboarded partner is served"
    );
    assert_eq!(up.last().headers["x-partner-id"], "initech");

    // The identity is bound to the lifecycle CA: the YAML bundle's CA cannot speak for initech.
    let impostor = s
        .env
        .root
        .leaf("initech")
        .spiffe("spiffe://partners.example.com/initech")
        .issue();
    let seen = up.count();
    let answer = call(
        s.listen,
        s.env.tls_config_for(&impostor),
        get("/v1/orders/3"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.reason(), "unknown_partner");
    assert_eq!(up.count(), seen);

    // An open keep-alive connection, sending in a loop.
    let leaf = common::pki::leaf_from_files(&cert, &key);
    let tls = connect(s.listen, "localhost", s.env.tls_config_for(&leaf))
        .await
        .unwrap();
    let mut sender = handshake_http(tls).await.unwrap();
    let client = tokio::spawn(async move {
        let mut served = 0;
        loop {
            match sender.send(get("/v1/orders/1")).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let _ = resp.into_body().collect().await;
                    if status != 200 {
                        return (served, Instant::now(), format!("status {status}"));
                    }
                    served += 1;
                }
                Err(e) => return (served, Instant::now(), e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || up.count() >= 5).await,
        "the keep-alive client is being served"
    );

    // The revoke runs off the runtime, so the client keeps sending while it does.
    let started = Instant::now();
    let config = s.config.clone();
    let revoke = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["partner", "revoke", "initech", "--reason", "keyCompromise"])
            .args(["--actor", "dave", "--config"])
            .arg(config)
            .output()
            .unwrap()
    });
    let (served, ended, why) = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("the keep-alive connection was not cut within 5 s of the revoke")
        .unwrap();
    let revoke = revoke.await.unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let cut_after = ended.saturating_duration_since(started);
    eprintln!(
        "`partner revoke` started → keep-alive connection cut: {cut_after:?} ({served} requests served; {why})"
    );
    assert!(served >= 1);
    assert!(
        cut_after < Duration::from_millis(2500),
        "cut {cut_after:?} after the revoke command started; the target is 1 s"
    );

    // A new handshake is refused with the revoked alert, for our client and for curl. With TLS
    // 1.3 the client learns of the refusal on its first read.
    let attempt = async {
        let mut tls = connect(s.listen, "localhost", s.env.tls_config_for(&leaf)).await?;
        tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]).await
    };
    let refused = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("the handshake was neither refused nor accepted")
        .expect_err("a revoked certificate completed a handshake")
        .to_string();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    let curl = curl_status(&s, &cert, &key).await;
    assert!(curl.is_err(), "curl after the revoke: {curl:?}");
    let curl = curl.unwrap_err();
    assert!(curl.contains("revoked"), "{curl}");
    assert!(!s.openssl_verify(&cert).status.success());

    // Other gateways can poll the CRL from the admin listener.
    let crl = admin_get(s.admin, "/crl/lifecycle.crl", None).await;
    assert_eq!(crl.0, 200);
    assert_eq!(
        crl.2,
        std::fs::read(s.state.join("published/crl.der")).unwrap()
    );
    let etag = crl.1.unwrap();
    let again = admin_get(s.admin, "/crl/lifecycle.crl", Some(&etag)).await;
    assert_eq!(again.0, 304);
    assert_eq!(admin_get(s.admin, "/crl/nope.crl", None).await.0, 404);
}

/// GET on the admin listener: (status, ETag, body).
async fn admin_get(
    addr: SocketAddr,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, etag, body)
}

fn refusals_name_their_reason_and_write_nothing(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);

    let unknown = s.refused(&[
        "partner",
        "register",
        "initech",
        "--owner",
        "ops@example.com",
        "--scopes",
        "orders:read,payroll:admin",
        "--spiffe",
        "spiffe://partners.example.com/initech",
        "--actor",
        "alice",
    ]);
    assert!(
        unknown.contains("unknown scope(s) `payroll:admin`"),
        "{unknown}"
    );
    assert_eq!(s.events(), 0);

    s.ok(&[
        "partner",
        "register",
        "initech",
        "--owner",
        "ops@example.com",
        "--scopes",
        "orders:read",
        "--spiffe",
        "spiffe://partners.example.com/initech",
        "--actor",
        "alice",
    ]);
    let same = s.refused(&["partner", "approve", "initech", "--actor", "alice"]);
    assert!(same.contains("cannot approve"), "{same}");

    let (csr, _) = s.csr("good", "URI:spiffe://partners.example.com/initech");
    let pending = s.refused(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&csr),
        "--actor",
        "carol",
    ]);
    assert!(pending.contains("is pending"), "{pending}");
    assert_eq!(s.events(), 1);

    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);

    let (other, _) = s.csr("other", "URI:spiffe://partners.example.com/acme");
    let mismatch = s.refused(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&other),
        "--actor",
        "carol",
    ]);
    assert!(mismatch.contains("identity mismatch"), "{mismatch}");

    let rsa_key = s.env.path("rsa-key.pem");
    let rsa_csr = s.env.path("rsa.csr");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        path(&rsa_key),
        "-out",
        path(&rsa_csr),
        "-subj",
        "/O=partner",
        "-addext",
        "subjectAltName=URI:spiffe://partners.example.com/initech",
    ]);
    let weak = s.refused(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&rsa_csr),
        "--actor",
        "carol",
    ]);
    assert!(weak.contains("weak key: RSA 1024"), "{weak}");

    // The same good CSR with one bit of its signature flipped.
    let der = s.env.path("good.der");
    openssl_ok(&[
        "req",
        "-in",
        path(&csr),
        "-outform",
        "DER",
        "-out",
        path(&der),
    ]);
    let mut bytes = std::fs::read(&der).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    let tampered = s.env.path("tampered.der");
    std::fs::write(&tampered, &bytes).unwrap();
    let bad = s.refused(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&tampered),
        "--actor",
        "carol",
    ]);
    assert!(bad.contains("signature does not verify"), "{bad}");

    let long = s.refused(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&csr),
        "--days",
        "91",
        "--actor",
        "carol",
    ]);
    assert!(long.contains("over the maximum of 90 days"), "{long}");

    let no_actor = s.run(&["partner", "issue", "initech", "--csr", path(&csr)]);
    assert!(
        !no_actor.status.success(),
        "--actor is required for changes"
    );

    // Register and approve: two events; every refusal above wrote none.
    assert_eq!(s.events(), 2);
    s.ok(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&csr),
        "--actor",
        "carol",
    ]);
    assert_eq!(s.events(), 3);

    // An identity the YAML `partners:` claim (acme's) is refused at registration…
    let yaml = s.refused(&[
        "partner",
        "register",
        "acme2",
        "--owner",
        "ops@example.com",
        "--scopes",
        "orders:read",
        "--spiffe",
        "spiffe://partners.example.com/acme",
        "--actor",
        "alice",
    ]);
    assert!(
        yaml.contains("already claimed by partner `acme` in the configuration's YAML"),
        "{yaml}"
    );
    // …and when the YAML claims it later, `certgate check` names both.
    let yaml_text = std::fs::read_to_string(&s.config).unwrap();
    let without_acme = yaml_text.replace(
        "spiffe: spiffe://partners.example.com/acme",
        "spiffe: spiffe://partners.example.com/acme-old",
    );
    let earlier = write_file(s.env.dir.path(), "earlier.yaml", &without_acme);
    let earlier = path(&earlier);
    for args in [
        &[
            "partner",
            "register",
            "acme2",
            "--owner",
            "ops@example.com",
            "--scopes",
            "orders:read",
            "--spiffe",
            "spiffe://partners.example.com/acme",
            "--actor",
            "alice",
        ][..],
        &["partner", "approve", "acme2", "--actor", "bob"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(args)
            .args(["--config", earlier])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let check = s.refused(&["check"]);
    assert!(
        check.contains("spiffe spiffe://partners.example.com/acme of lifecycle partner `acme2` is also claimed by YAML partner `acme`"),
        "{check}"
    );
}

fn the_event_log_replays_to_the_same_state_and_an_edited_row_is_named(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);
    s.onboard("initech");
    s.issue("initech", "a");
    s.issue("initech", "b");
    s.ok(&[
        "partner",
        "scopes",
        "initech",
        "--remove",
        "orders:read",
        "--actor",
        "erin",
    ]);
    s.onboard("hooli");
    s.ok(&[
        "partner",
        "revoke",
        "initech",
        "--reason",
        "superseded",
        "--actor",
        "dave",
    ]);
    let shown = |id: &str| s.ok(&["partner", "show", id]);
    let before = (shown("initech"), shown("hooli"), s.ok(&["partner", "list"]));
    assert!(before.0.contains("revoked"), "{}", before.0);

    let replay = s.ok(&["registry", "replay"]);
    assert!(
        replay.contains("8 events applied; state unchanged"),
        "{replay}"
    );
    // Throw the derived tables away: verify notices, replay rebuilds them exactly.
    s.sql("DELETE FROM certificates; DELETE FROM partners;");
    let stale = s.run(&["registry", "verify"]);
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("differ from the event log"));
    let rebuilt = s.ok(&["registry", "replay"]);
    assert!(rebuilt.contains("rebuilt"), "{rebuilt}");
    assert_eq!(
        (shown("initech"), shown("hooli"), s.ok(&["partner", "list"])),
        before
    );
    s.ok(&["registry", "verify"]);

    let history = s.ok(&["partner", "history", "initech", "--json"]);
    let events: serde_json::Value = serde_json::from_str(&history).unwrap();
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["register", "approve", "issue", "issue", "scopes", "revoke"]
    );

    // Edit one row with the database's own CLI: verify fails and names it.
    s.sql("UPDATE events SET actor = 'mallory' WHERE id = 4");
    let tampered = s.run(&["registry", "verify"]);
    assert!(!tampered.status.success());
    let err = String::from_utf8_lossy(&tampered.stderr);
    assert!(err.contains("event 4: its hash does not match"), "{err}");
    s.sql("UPDATE events SET actor = 'carol' WHERE id = 4");
    s.ok(&["registry", "verify"]);
    // Remove one: the next event's link names the gap.
    s.sql("DELETE FROM events WHERE id = 6");
    let removed = s.run(&["registry", "verify"]);
    let err = String::from_utf8_lossy(&removed.stderr);
    assert!(err.contains("event 7: expected event 6"), "{err}");
}

fn twenty_concurrent_cli_invocations_leave_a_consistent_registry(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);
    s.onboard("base");
    let children: Vec<Child> = (0..20)
        .map(|i| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
            let id = format!("p{i}");
            let spiffe = format!("spiffe://partners.example.com/{id}");
            cmd.args([
                "partner",
                "register",
                &id,
                "--owner",
                "ops@example.com",
                "--scopes",
                "orders:read",
                "--spiffe",
                &spiffe,
                "--actor",
                "alice",
            ]);
            cmd.arg("--config")
                .arg(&s.config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each prints `event #N: …; published CRL #M …`: no two got the same event or CRL number.
    let mut event_ids = Vec::new();
    let mut crl_numbers = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let number_after = |marker: &str| -> u64 {
            let rest =
                &stderr[stderr.find(marker).unwrap_or_else(|| panic!("{stderr}")) + marker.len()..];
            rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
                .parse()
                .unwrap()
        };
        event_ids.push(number_after("event #"));
        crl_numbers.push(number_after("published CRL #"));
    }
    event_ids.sort_unstable();
    crl_numbers.sort_unstable();
    assert_eq!(event_ids, (3..=22).collect::<Vec<u64>>());
    assert_eq!(crl_numbers, (4..=23).collect::<Vec<u64>>());
    // 2 (base) + 20 registrations, one chain, tables matching it.
    assert_eq!(s.events(), 22);
    let list = s.ok(&["partner", "list"]);
    assert_eq!(list.lines().count(), 21, "{list}");
    let max_id = s.sql("SELECT MAX(id), COUNT(*) FROM events");
    assert_eq!(max_id.trim(), "22|22");
    let published: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.state.join("published/partners.json")).unwrap())
            .unwrap();
    // Every change published a CRL; the last one written carries the largest number.
    assert_eq!(published["crl_number"], 23);
}

fn a_renewed_certificate_overlaps_the_old_one_and_offboarding_retires_everything(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);
    s.onboard("initech");
    let (first, _) = s.issue("initech", "first");

    let (csr, _) = s.csr("second", "URI:spiffe://partners.example.com/initech");
    let second = s.env.path("second.pem");
    s.ok(&[
        "partner",
        "renew",
        "initech",
        "--csr",
        path(&csr),
        "--out",
        path(&second),
        "--actor",
        "carol",
    ]);
    // Both are valid until the old one expires.
    assert!(s.openssl_verify(&first).status.success());
    assert!(s.openssl_verify(&second).status.success());
    let show = s.ok(&["partner", "show", "initech"]);
    assert_eq!(show.matches(" valid not_after").count(), 2, "{show}");

    let (csr, _) = s.csr("third", "URI:spiffe://partners.example.com/initech");
    let third = s.env.path("third.pem");
    s.ok(&[
        "partner",
        "renew",
        "initech",
        "--csr",
        path(&csr),
        "--out",
        path(&third),
        "--revoke-old",
        "--actor",
        "carol",
    ]);
    for old in [&first, &second] {
        let out = s.openssl_verify(old);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("revoked")
                || String::from_utf8_lossy(&out.stderr).contains("revoked")
        );
    }
    assert!(s.openssl_verify(&third).status.success());
    let crl = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        path(&s.state.join("published/crl.der")),
        "-noout",
        "-text",
    ]);
    assert!(crl.contains("Superseded"), "{crl}");

    s.ok(&[
        "partner",
        "offboard",
        "initech",
        "--reason",
        "contract ended",
        "--actor",
        "dave",
    ]);
    assert!(!s.openssl_verify(&third).status.success());
    let show = s.ok(&["partner", "show", "initech"]);
    assert!(show.contains("status:    offboarded"), "{show}");
    assert!(show.contains("scopes:    -"), "{show}");
    assert!(!show.contains(" valid not_after"), "{show}");
    // Out of the partner table; only its revocation time stays, for the time-to-revoke metric.
    let published = std::fs::read_to_string(s.state.join("published/partners.json")).unwrap();
    let table: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(table["partners"], serde_json::json!([]), "{published}");
    assert_eq!(table["revocations"][0]["partner"], "initech", "{published}");

    let reuse = s.refused(&[
        "partner",
        "register",
        "initech",
        "--owner",
        "ops@example.com",
        "--scopes",
        "orders:read",
        "--spiffe",
        "spiffe://partners.example.com/initech",
        "--actor",
        "alice",
    ]);
    assert!(
        reuse.contains("already taken (status offboarded)"),
        "{reuse}"
    );
}

/// The number `openssl crl` reads from the published CRL's CRLNumber extension.
fn crl_number_on_disk(s: &Setup) -> u64 {
    let text = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        path(&s.state.join("published/crl.der")),
        "-noout",
        "-text",
    ]);
    let mut lines = text.lines();
    lines.find(|l| l.contains("X509v3 CRL Number"));
    let number = lines.next().unwrap_or_default().trim();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no CRL number in {text}"))
}

fn a_revocation_is_in_force_even_when_the_partner_table_cannot_be_written(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);
    s.onboard("initech");
    let (cert, _) = s.issue("initech", "initech");
    assert!(s.openssl_verify(&cert).status.success());
    let before = crl_number_on_disk(&s);

    // A directory where the partner table goes: its rename fails, the CRL's does not.
    let table = s.state.join("published/partners.json");
    std::fs::remove_file(&table).unwrap();
    std::fs::create_dir_all(table.join("blocker")).unwrap();
    let out = s.run(&[
        "partner",
        "revoke",
        "initech",
        "--reason",
        "keyCompromise",
        "--actor",
        "carol",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("publishing it failed"), "{stderr}");
    let number = crl_number_on_disk(&s);
    assert_eq!(number, before + 1);
    assert!(
        stderr.contains(&format!(
            "CRL #{number} is published, but the partner table is not"
        )),
        "{stderr}"
    );
    // The CRL on disk revokes the certificate: openssl refuses it, naming the revocation.
    let verify = s.openssl_verify(&cert);
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("revoked")
            || String::from_utf8_lossy(&verify.stderr).contains("revoked")
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.state.join("publish-status.json")).unwrap())
            .unwrap();
    assert_eq!(status["pending"], true, "{status}");
    assert_eq!(status["failures"], 1, "{status}");

    // The failed publication's CRL number stays spent: the retry signs the next one.
    std::fs::remove_dir_all(&table).unwrap();
    let published = s.ok(&["registry", "publish"]);
    assert!(
        published.contains(&format!("published CRL #{} (1 revoked)", number + 1)),
        "{published}"
    );
    assert_eq!(crl_number_on_disk(&s), number + 1);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&table).unwrap()).unwrap();
    assert_eq!(written["crl_number"], number + 1);
    assert_eq!(written["partners"][0]["id"], "initech", "{written}");
    assert_eq!(
        written["partners"][0]["certificates"],
        serde_json::json!([]),
        "{written}"
    );
    assert_eq!(written["revocations"][0]["partner"], "initech", "{written}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.state.join("publish-status.json")).unwrap())
            .unwrap();
    assert_eq!(status["pending"], false, "{status}");
}

fn the_expiring_report_lists_certificates_due_with_their_owners_until_renewed(backend: Backend) {
    let s = setup("127.0.0.1:9".parse().unwrap(), backend);
    s.ok(&["ca", "init"]);
    s.onboard("initech");
    s.onboard("hooli");
    let (csr, _) = s.csr("short", "URI:spiffe://partners.example.com/initech");
    s.ok(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&csr),
        "--days",
        "10",
        "--actor",
        "carol",
    ]);
    s.issue("hooli", "long");

    let report = s.ok(&["partner", "report", "--expiring", "30d"]);
    assert!(report.contains("expiring within 30 days: 1"), "{report}");
    assert!(
        report.contains("initech\towner=ops@example.com"),
        "{report}"
    );
    assert!(
        report.contains("certgate partner renew initech"),
        "{report}"
    );
    assert!(!report.contains("hooli"), "{report}");
    let report = s.ok(&["partner", "report", "--expiring", "5d"]);
    assert!(report.contains("expiring within 5 days: 0"), "{report}");

    // Once a successor outlives the horizon, the old certificate is no longer due.
    let (csr, _) = s.csr("renewed", "URI:spiffe://partners.example.com/initech");
    s.ok(&[
        "partner",
        "renew",
        "initech",
        "--csr",
        path(&csr),
        "--actor",
        "carol",
    ]);
    let report = s.ok(&["partner", "report", "--expiring", "30d"]);
    assert!(report.contains("expiring within 30 days: 0"), "{report}");
}

#[test]
fn a_bad_database_setting_is_named_at_its_place_and_no_password_is_shown() {
    let s = setup("127.0.0.1:9".parse().unwrap(), Backend::Sqlite);
    let yaml = std::fs::read_to_string(&s.config).unwrap();
    let with = |database: &str| {
        let text = yaml.replace(
            "lifecycle:\n  state_dir: state\n",
            &format!("lifecycle:\n  state_dir: state\n  database: \"{database}\"\n"),
        );
        write_file(s.env.dir.path(), "certgate.yaml", &text);
    };
    let line = yaml
        .lines()
        .position(|l| l == "lifecycle:")
        .expect("the lifecycle section")
        + 3;

    with("postgres://certgate:s3cret@[::1/registry");
    let bad = s.refused(&["check"]);
    assert!(
        bad.contains(&format!(
            "certgate.yaml:{line}:13: lifecycle.database: invalid PostgreSQL URL"
        )),
        "{bad}"
    );
    assert!(!bad.contains("s3cret"), "{bad}");

    with("mysql://db.example.com/registry");
    let other = s.refused(&["partner", "list"]);
    assert!(
        other.contains(&format!(
            "certgate.yaml:{line}:13: lifecycle.database: unsupported database `mysql`"
        )),
        "{other}"
    );
    with("sqlite::memory:");
    let memory = s.refused(&["check"]);
    assert!(memory.contains("no in-memory database"), "{memory}");

    // A well-formed URL to a server that refuses it: the error names the database, not the
    // password.
    let db = PgDatabase::create();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some("s3cret")).unwrap();
    url.set_path("certgate_no_such_database");
    with(url.as_str());
    let refused = s.refused(&["partner", "list"]);
    url.set_password(Some("***")).unwrap();
    assert!(
        refused.contains(&format!("cannot open the registry {url}")),
        "{refused}"
    );
    assert!(refused.contains("does not exist"), "{refused}");
    assert!(!refused.contains("s3cret"), "{refused}");

    // An empty database is not a registry until `ca init` made it one.
    with(&db.url);
    let missing = s.refused(&["registry", "verify"]);
    assert!(
        missing.contains(&format!("no registry at {}", db.url)) && missing.contains("ca init"),
        "{missing}"
    );
    s.ok(&["ca", "init"]);
    assert!(!s.state.join("registry.sqlite").exists());
    assert!(s.ok(&["registry", "verify"]).contains("0 events"));
    assert_eq!(db.psql("SELECT crl_number FROM publication").trim(), "1");
}

/// A control-plane writer whose PostgreSQL connection is killed in the middle of an approval —
/// its event already inserted, not yet committed — loses that approval whole: the chain stays
/// valid, a writer queued behind it carries on, and running the approval again records it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_writer_killed_mid_approval_loses_nothing_else_and_duplicates_nothing() {
    use sqlx::{Connection, Executor, Row};

    let s = setup("127.0.0.1:9".parse().unwrap(), Backend::Postgres);
    let db = s.pg.as_ref().unwrap();
    s.ok(&["ca", "init"]);
    for id in ["initech", "hooli"] {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        s.ok(&[
            "partner",
            "register",
            id,
            "--owner",
            "ops@example.com",
            "--scopes",
            "orders:read",
            "--spiffe",
            &spiffe,
            "--actor",
            "alice",
        ]);
    }

    // Hold initech's partner row: the approval inserts its event, then waits to replace the row.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute("SELECT id FROM partners WHERE id = 'initech' FOR UPDATE")
        .await
        .unwrap();
    let approve = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["partner", "approve", id, "--actor", "bob", "--config"])
            .arg(&s.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let victim = approve("initech");
    let waiting = |what: &'static str| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let row = sqlx::query(
                    "SELECT pid, wait_event, query FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = $1",
                )
                .bind(what)
                .fetch_optional(&mut conn)
                .await
                .unwrap();
                if let Some(row) = row {
                    return (row.get::<i32, _>(0), row.get::<String, _>(2));
                }
                assert!(
                    Instant::now() < deadline,
                    "no writer waits on a {what} lock"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (victim_pid, victim_query) = waiting("transactionid").await;
    assert!(
        victim_query.starts_with("DELETE FROM partners"),
        "{victim_query}"
    );
    // The approval has written its event inside its transaction; nobody else can see it.
    assert_eq!(db.psql("SELECT COUNT(*) FROM events").trim(), "2");
    // A second writer queues behind it on the registry's advisory lock.
    let queued = approve("hooli");
    let (queued_pid, _) = waiting("advisory").await;
    assert_ne!(queued_pid, victim_pid);

    let killed: bool = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(victim_pid)
        .fetch_one(&mut blocker)
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let victim = tokio::task::spawn_blocking(move || victim.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        !victim.status.success(),
        "the killed approval reported success"
    );
    let why = String::from_utf8_lossy(&victim.stderr);
    assert!(why.contains("terminating connection"), "{why}");
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();

    let queued = tokio::task::spawn_blocking(move || queued.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    assert_eq!(s.events(), 3, "register ×2 and hooli's approval");
    assert!(s
        .ok(&["partner", "show", "initech"])
        .contains("status:    pending"));

    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);
    assert_eq!(s.events(), 4);
    assert_eq!(
        db.psql("SELECT partner, action FROM events ORDER BY id"),
        "initech|register\nhooli|register\nhooli|approve\ninitech|approve\n"
    );
    let published: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.state.join("published/partners.json")).unwrap())
            .unwrap();
    assert_eq!(published["partners"].as_array().unwrap().len(), 2);
}
