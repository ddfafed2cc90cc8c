//! Revocation through the real gateway: `Gateway::start` from YAML, real TLS clients, a real
//! upstream that counts what reaches it, and the `openssl` CLI as CRL authority and OCSP responder.
//! Every assertion is about behaviour (status, alert, upstream count); the only clocks are
//! generous deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certgate::config::model::BundleId;
use certgate::revocation::{issuer_and_serial, Registry, Verdict};
use certgate::runtime::{self, Gateway, StartError};
use common::openssl::{replace_by_rename, CrlServer, OcspResponder, OpenSslCa};
use common::*;
use http_body_util::BodyExt;
use rustls::HandshakeKind;
use rustls_pki_types::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// === helpers ===

/// The `partner-ca` bundle reading its CRL from `file` (relative to the config).
fn crl_file(file: &str) -> String {
    format!("        crl:\n          - path: {file}\n")
}

fn ocsp(mode: &str, responder: &str) -> String {
    format!("        ocsp:\n          mode: {mode}\n          responder: {responder}\n          timeout: 1s\n")
}

/// The gateway's current CRL verdict for `leaf` (what the next handshake will be told).
fn crl_verdict(gw: &Gateway, leaf: &Leaf) -> Verdict {
    let (issuer, serial) = issuer_and_serial(&leaf.der).unwrap();
    gw.snapshot()
        .revocation
        .crl()
        .check(BundleId(0), issuer, serial, UnixTime::now())
}

/// What the tests that revoke while serving start from, in this order: the environment, an
/// upstream, an `openssl` CA for the partners, the partner `acme`, the CA's CRL file (empty so far)
/// and a gateway config whose `partner-ca` bundle reads that file.
async fn with_crl_file() -> (Env, Upstream, OpenSslCa, Leaf, PathBuf, String) {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    let crl = env.path("partner-ca.crl");
    std::fs::write(&crl, ca.crl(&[])).unwrap();
    let config = env.config_with_bundle(up.addr, &crl_file("partner-ca.crl"), "");
    (env, up, ca, acme, crl, config)
}

/// A gateway started on a CRL file that already lists globex; acme is good.
async fn with_globex_revoked_from_the_start() -> (Env, Upstream, Gateway, Leaf, Leaf) {
    let (env, up, ca, acme, crl, config) = with_crl_file().await;
    let globex = env.globex();
    ca.revoke(&globex);
    std::fs::write(&crl, ca.crl(&[])).unwrap();
    let gw = env.start(&config).await;
    (env, up, gw, acme, globex)
}

/// Revokes `leaf` in the CRL file the gateway reads, and waits until the gateway uses the new CRL.
/// Returns when the file was replaced.
async fn revoke_in_crl_file(gw: &Gateway, ca: &OpenSslCa, crl: &Path, leaf: &Leaf) -> Instant {
    ca.revoke(leaf);
    replace_by_rename(crl, &ca.crl(&[]));
    let replaced = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || crl_verdict(gw, leaf)
            == Verdict::Revoked)
        .await,
        "the poller picks up the renamed CRL"
    );
    replaced
}

/// `task`'s output; the test fails with `why` (and the task is stopped) if it takes longer.
async fn finished_within<T>(deadline: Duration, task: tokio::task::JoinHandle<T>, why: &str) -> T {
    let abort = task.abort_handle();
    match tokio::time::timeout(deadline, task).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            abort.abort();
            panic!("{why}");
        }
    }
}

#[track_caller]
fn assert_ok(result: &Result<Answer, String>) {
    match result {
        Ok(a) => assert_eq!(a.status, 200, "{}", a.body),
        Err(e) => panic!("expected 200, got a connection failure: {e}"),
    }
}

#[track_caller]
fn assert_refused(result: &Result<Answer, String>, status: u16, reason: &str) {
    match result {
        Ok(a) => {
            assert_eq!(a.status, status, "{}", a.body);
            assert_eq!(a.reason(), reason);
        }
        Err(e) => panic!("expected {status} {reason}, got a connection failure: {e}"),
    }
}

/// Connects presenting `leaf` and asserts the gateway ends the handshake with `alert`. With TLS 1.3
/// the client finishes its side first and learns of the refusal on its first read, so read.
async fn assert_handshake_refused(gw: &Gateway, env: &Env, leaf: &Leaf, alert: &str) {
    let attempt = async {
        let mut tls = connect(gw.local_addr(), "localhost", env.tls_config_for(leaf)).await?;
        tls.read(&mut [0u8; 1]).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Err(e)) => assert!(e.to_string().contains(alert), "expected {alert}: {e}"),
        Ok(Ok(n)) => panic!("expected the handshake to fail with {alert}; read {n} bytes"),
        Err(_) => panic!("expected the handshake to fail with {alert}; it was accepted"),
    }
}

// === CRL from a file ===

#[tokio::test]
async fn a_certificate_revoked_by_the_crl_file_is_refused_in_the_handshake_and_a_good_one_passes() {
    let (env, up, gw, acme, globex) = with_globex_revoked_from_the_start().await;

    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;
    assert_eq!(
        up.count(),
        0,
        "nothing from a revoked certificate reaches the upstream"
    );

    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().headers["x-partner-id"], "acme");
    gw.shutdown().await;
}

/// In TLS 1.3 a client sends its first bytes right after its Finished, before the server has
/// judged its certificate (curl sends its HTTP/2 preface and request), and goes on sending. The
/// gateway never reads those bytes. Had it closed over them, the kernel would reset the
/// connection, the client's next send would fail, and the client (curl: "Send failure:
/// Connection reset by peer") would never read the alert that says why it was refused.
#[tokio::test]
async fn a_client_that_keeps_sending_is_not_reset_before_it_reads_why_it_was_refused() {
    let (env, up, gw, _acme, globex) = with_globex_revoked_from_the_start().await;

    let mut tls = connect(gw.local_addr(), "localhost", env.tls_config_for(&globex))
        .await
        .unwrap();
    tls.write_all(&[0u8; 1024]).await.unwrap();
    // Long enough for the gateway to refuse and close; on a slower machine the second write may
    // come before that, and the test then proves less, but never fails wrongly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = async {
        tls.write_all(&[0u8; 1024]).await?;
        tls.flush().await
    };
    sent.await
        .expect("a refused client is not reset while it is still sending");
    let refused = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut [0u8; 1]))
        .await
        .expect("the refusal arrives");
    match refused {
        Err(e) => assert!(
            e.to_string().contains("CertificateRevoked"),
            "expected the CertificateRevoked alert: {e}"
        ),
        Ok(n) => panic!("expected the CertificateRevoked alert; read {n} bytes"),
    }
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

/// What the keep-alive client saw for one request.
#[derive(Debug)]
struct Outcome {
    /// The gateway's CRL already revoked the certificate when the request was sent.
    revoked_before_send: bool,
    /// Status and body, or the connection-level failure.
    result: Result<(u16, String), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_replaced_while_serving_refuses_new_handshakes_and_cuts_the_open_connection() {
    let (env, up, ca, acme, crl, config) = with_crl_file().await;
    let gw = env.start(&config).await;

    // A keep-alive client calling in a loop until its connection ends.
    let tls = env.tls_as(&gw, &acme).await;
    let mut sender = handshake_http(tls).await.unwrap();
    let snapshot = gw.snapshot();
    let (issuer, serial) = issuer_and_serial(&acme.der).unwrap();
    let (issuer, serial) = (issuer.to_vec(), serial.to_vec());
    let client = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        loop {
            let revoked_before_send =
                snapshot
                    .revocation
                    .crl()
                    .check(BundleId(0), &issuer, &serial, UnixTime::now())
                    == Verdict::Revoked;
            let result = match sender.send(get("/v1/orders/1")).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.into_body().collect().await {
                        Ok(body) => Ok((
                            status,
                            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                        )),
                        Err(e) => Err(format!("body cut: {e}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let ended = result.is_err();
            outcomes.push(Outcome {
                revoked_before_send,
                result,
            });
            if ended {
                return outcomes;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || up.count() >= 3).await,
        "the keep-alive client is being served"
    );

    let replaced = revoke_in_crl_file(&gw, &ca, &crl, &acme).await;
    let picked_up = replaced.elapsed();
    let outcomes = finished_within(
        Duration::from_secs(5),
        client,
        "the open keep-alive connection was not cut within 5 s of the CRL change",
    )
    .await;
    eprintln!(
        "CRL picked up {picked_up:?} after the rename; connection ended {:?} after it; {} requests",
        replaced.elapsed(),
        outcomes.len()
    );

    let served = outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok((200, _))))
        .count();
    assert!(served >= 3, "{outcomes:?}");
    let first_refusal = outcomes
        .iter()
        .position(|o| !matches!(o.result, Ok((200, _))))
        .unwrap();
    for o in &outcomes[first_refusal..] {
        match &o.result {
            Ok((200, _)) => panic!("a 200 after the cut: {outcomes:?}"),
            Ok((status, body)) => {
                assert_eq!(*status, 403, "{body}");
                assert!(body.contains("certificate_revoked"), "{body}");
            }
            Err(e) => assert!(!e.starts_with("body cut"), "a response was torn: {e}"),
        }
    }
    assert!(
        outcomes.last().unwrap().result.is_err(),
        "the connection is closed"
    );
    assert!(
        !outcomes
            .iter()
            .any(|o| o.revoked_before_send && matches!(o.result, Ok((200, _)))),
        "a request sent after the CRL was in force was served: {outcomes:?}"
    );
    // Everything the upstream saw was answered with a 200, bar at most one request in flight
    // when the connection closed.
    let seen = up.count();
    assert!(
        served <= seen && seen <= served + 1,
        "{served} 200s, upstream saw {seen}"
    );

    assert_handshake_refused(&gw, &env, &acme, "CertificateRevoked").await;
    assert_eq!(up.count(), seen);
    gw.shutdown().await;
}

/// An open connection is drained gracefully when its certificate is revoked, but not for ever: a
/// request still waiting on the upstream when the grace period ends is cut with the connection.
#[tokio::test]
async fn a_request_still_running_when_its_certificate_is_revoked_is_cut_after_the_grace_period() {
    let (env, up, ca, acme, crl, config) = with_crl_file().await;
    // The upstream answers the request below after 30 s, and the gateway would wait for it: only
    // the grace period can end it sooner.
    let yaml = config.replace("request_timeout: 2s", "request_timeout: 60s");
    let gw = env.start(&yaml).await;
    let tls = env.tls_as(&gw, &acme).await;
    let mut sender = handshake_http(tls).await.unwrap();
    let slow = tokio::spawn(async move {
        match sender.send(get("/v1/orders/delay/30000")).await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || up.count() >= 1).await,
        "the slow request reached the upstream"
    );

    revoke_in_crl_file(&gw, &ca, &crl, &acme).await;
    let outcome = finished_within(
        Duration::from_secs(10),
        slow,
        "the revoked connection kept its in-flight request past the grace period",
    )
    .await;
    assert!(
        outcome.is_err(),
        "the request was cut with its connection, not answered: {outcome:?}"
    );
    gw.shutdown().await;
}

// === CRL from a URL ===

#[tokio::test]
async fn a_crl_from_a_url_is_refreshed_and_a_new_revocation_refuses_the_next_handshake() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    let server = CrlServer::start(ca.crl(&[])).await;
    let bundle = format!(
        "        crl:\n          - url: {}\n            refresh: 1s\n",
        server.url
    );
    let gw = env
        .start(&env.config_with_bundle(up.addr, &bundle, ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    let fetches = server.requests();
    assert!(fetches >= 1);

    ca.revoke(&acme);
    server.set(ca.crl(&[]));
    assert!(
        eventually(Duration::from_secs(8), || crl_verdict(&gw, &acme)
            == Verdict::Revoked)
        .await,
        "the refreshed CRL is in force within a few refresh periods ({} fetches)",
        server.requests()
    );
    assert!(server.requests() > fetches);
    assert_handshake_refused(&gw, &env, &acme, "CertificateRevoked").await;
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// === expired CRL ===

#[tokio::test]
async fn an_expired_crl_refuses_under_reject_and_serves_under_allow_with_warning() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let (acme, globex) = (env.acme(), env.globex());
    ca.revoke(&globex);
    std::fs::write(env.path("partner-ca.crl"), ca.expired_crl()).unwrap();

    let strict = format!(
        "{}        crl_expired: reject\n",
        crl_file("partner-ca.crl")
    );
    let gw = env
        .start(&env.config_with_bundle(up.addr, &strict, ""))
        .await;
    // Unknown revocation status: rustls sends unknown_ca, as OpenSSL does.
    assert_handshake_refused(&gw, &env, &acme, "UnknownCA").await;
    assert_handshake_refused(&gw, &env, &globex, "UnknownCA").await;
    assert_eq!(up.count(), 0);
    // A bundle that refuses everyone is not ready to serve.
    let (status, _, body) = admin(gw.admin_addr(), "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("trust bundle partner-ca"), "{body}");
    assert!(body.contains("nextUpdate"), "{body}");
    gw.shutdown().await;

    let lenient = format!(
        "{}        crl_expired: allow_with_warning\n",
        crl_file("partner-ca.crl")
    );
    let gw = env
        .start(&env.config_with_bundle(up.addr, &lenient, ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;
    assert_eq!(up.count(), 1);
    let (status, _, body) = admin(gw.admin_addr(), "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let status = gw.snapshot().revocation.crl().status();
    assert!(status[0].crls[0].expired);
    assert!(status[0].expired_crl_uses >= 2);
    gw.shutdown().await;
}

// === CRL with a bad signature ===

#[tokio::test]
async fn a_crl_signed_by_an_impostor_ca_is_reported_at_start_and_ignored_at_runtime() {
    let env = Env::new();
    let up = Upstream::start().await;
    let acme = env.acme();
    // Same name as the partner root, different key.
    let impostor = OpenSslCa::new(&Ca::root("partner root CA"));
    impostor.revoke(&acme);
    let forged = impostor.crl(&[]);
    let crl = env.path("partner-ca.crl");
    let yaml = env.config_with_bundle(up.addr, &crl_file("partner-ca.crl"), "");
    let config_path = write_file(env.dir.path(), "certgate.yaml", &yaml);

    // At start: `runtime::prepare` (what `serve` and `check` run) names the file.
    std::fs::write(&crl, &forged).unwrap();
    let config = certgate::config::load(&config_path).unwrap();
    match runtime::prepare(config, Registry::new()).await {
        Err(StartError::Revocation(errors)) => {
            assert_eq!(errors.len(), 1);
            let chain = certgate::error_chain(&errors[0]);
            assert!(chain.contains(&crl.display().to_string()), "{chain}");
            assert!(chain.contains("invalid CRL"), "{chain}");
        }
        other => panic!("expected a CRL error, got {other:?}"),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&crl.display().to_string()), "{stderr}");
    assert!(stderr.contains("CRL"), "{stderr}");

    // At runtime: swapped in over a good CRL, it is refused and the good one stays in force.
    let real = OpenSslCa::new(&env.root);
    std::fs::write(&crl, real.crl(&[])).unwrap();
    let gw = env.start(&yaml).await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    replace_by_rename(&crl, &forged);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .snapshot()
            .revocation
            .crl()
            .status()[0]
            .last_error
            .is_some())
        .await,
        "the poller reads the forged CRL"
    );
    let status = &gw.snapshot().revocation.crl().status()[0];
    assert!(status.loaded, "the good CRL is kept");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("invalid CRL"),
        "{status:?}"
    );
    assert_eq!(crl_verdict(&gw, &acme), Verdict::Good);
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

// === OCSP ===

#[tokio::test]
async fn ocsp_good_is_served_and_a_cached_answer_avoids_a_second_query() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    ca.valid(&acme);
    let responder = OcspResponder::start(&ca).await;
    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("hard_fail", &responder.url), ""))
        .await;

    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(responder.requests(), 1);
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(
        responder.requests(),
        1,
        "the second connection used the cache"
    );
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn ocsp_revoked_is_refused_before_forwarding_and_then_in_the_handshake_from_the_cache() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    ca.revoke(&acme);
    let responder = OcspResponder::start(&ca).await;
    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("soft_fail", &responder.url), ""))
        .await;

    // First connection: nothing cached at handshake time, so the connection asks the responder
    // before serving and answers every request with the refusal.
    let first = env.call_as(&gw, &acme, get("/v1/orders/1")).await;
    assert_refused(&first, 403, "certificate_revoked");
    assert_eq!(up.count(), 0);
    assert_eq!(responder.requests(), 1);

    // Second connection: the cached `revoked` ends the handshake.
    assert_handshake_refused(&gw, &env, &acme, "CertificateRevoked").await;
    assert_eq!(responder.requests(), 1, "answered from the cache");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn ocsp_unknown_is_refused_under_hard_fail_and_served_under_soft_fail() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme(); // never entered in the CA database: the responder says `unknown`
    let responder = OcspResponder::start(&ca).await;

    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("hard_fail", &responder.url), ""))
        .await;
    assert_refused(
        &env.call_as(&gw, &acme, get("/v1/orders/1")).await,
        403,
        "revocation_unknown",
    );
    assert_eq!(up.count(), 0);
    gw.shutdown().await;

    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("soft_fail", &responder.url), ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 1);
    assert_eq!(responder.requests(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn ocsp_responder_down_refuses_under_hard_fail_and_serves_under_soft_fail() {
    let env = Env::new();
    let up = Upstream::start().await;
    let acme = env.acme();
    let down = dead_url("ocsp");

    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("hard_fail", &down), ""))
        .await;
    assert_refused(
        &env.call_as(&gw, &acme, get("/v1/orders/1")).await,
        403,
        "revocation_unknown",
    );
    assert_eq!(up.count(), 0);
    gw.shutdown().await;

    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("soft_fail", &down), ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// === session resumption ===

#[tokio::test]
async fn a_resumed_session_is_refused_once_its_certificate_is_revoked() {
    let (env, up, ca, acme, crl, config) = with_crl_file().await;
    let gw = env.start(&config).await;
    // One client configuration, so one session cache, for every connection below.
    let client = env.tls_config_for(&acme);

    let request = |expect_kind: HandshakeKind| {
        let client = client.clone();
        let addr = gw.local_addr();
        async move {
            let tls = connect(addr, "localhost", client).await.unwrap();
            assert_eq!(tls.get_ref().1.handshake_kind(), Some(expect_kind));
            let mut sender = handshake_http(tls).await.unwrap();
            read(sender.send(get("/v1/orders/1")).await.unwrap()).await
        }
    };
    assert_eq!(request(HandshakeKind::Full).await.status, 200);
    // The server's tickets work: the next connection resumes and is served.
    assert_eq!(request(HandshakeKind::Resumed).await.status, 200);
    assert_eq!(up.count(), 2);

    revoke_in_crl_file(&gw, &ca, &crl, &acme).await;
    // Resuming skips the certificate verifier; the connection's own re-check refuses it.
    let answer = request(HandshakeKind::Resumed).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.reason(), "certificate_revoked");
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

// === certgate inspect ===

fn inspect(cert: &Path, config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("inspect")
        .arg(cert)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // 0 accepted, 1 refused; 2 would mean nothing could be judged.
    let judged = match out.status.code() {
        Some(0) => stdout.starts_with("ACCEPTED"),
        Some(1) => stdout.starts_with("REFUSED"),
        _ => false,
    };
    assert!(
        judged,
        "{:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn revocation_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("revocation:"))
        .unwrap_or_else(|| panic!("no revocation line in:\n{stdout}"))
}

#[tokio::test]
async fn inspect_shows_the_revocation_status_from_the_configured_sources() {
    let env = Env::new();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ca = OpenSslCa::new(&env.root);
    let (acme, globex) = (env.acme(), env.globex());
    let (acme_pem, _) = acme.write(env.dir.path(), "acme");
    let (globex_pem, _) = globex.write(env.dir.path(), "globex");
    ca.valid(&acme);
    ca.revoke(&globex);
    let crl = env.path("partner-ca.crl");
    std::fs::write(&crl, ca.crl(&[])).unwrap();

    let with_crl = write_file(
        env.dir.path(),
        "crl.yaml",
        &env.config_with_bundle(up, &crl_file("partner-ca.crl"), ""),
    );
    let out = inspect(&globex_pem, &with_crl);
    assert_eq!(
        revocation_line(&out),
        format!("revocation:   revoked (CRL {})", crl.display())
    );
    assert!(out.starts_with("REFUSED: revoked — "), "{out}");
    let out = inspect(&acme_pem, &with_crl);
    assert_eq!(
        revocation_line(&out),
        format!("revocation:   good (CRL {})", crl.display())
    );

    let plain = write_file(env.dir.path(), "plain.yaml", &env.config(up, ""));
    let out = inspect(&acme_pem, &plain);
    assert!(
        revocation_line(&out).starts_with("revocation:   not checked"),
        "{out}"
    );

    let responder = OcspResponder::start(&ca).await;
    let with_ocsp = write_file(
        env.dir.path(),
        "ocsp.yaml",
        &env.config_with_bundle(up, &ocsp("hard_fail", &responder.url), ""),
    );
    // The binary blocks; run it off the runtime so the responder (on this runtime) can answer.
    let (acme_out, globex_out) = tokio::task::spawn_blocking(move || {
        (
            inspect(&acme_pem, &with_ocsp),
            inspect(&globex_pem, &with_ocsp),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        revocation_line(&acme_out),
        format!("revocation:   good (OCSP {})", responder.url)
    );
    assert_eq!(
        revocation_line(&globex_out),
        format!("revocation:   revoked (OCSP {})", responder.url)
    );
    assert!(
        globex_out.starts_with("REFUSED: certificate_revoked — "),
        "{globex_out}"
    );
    assert!(
        acme_out.starts_with("ACCEPTED as partner acme"),
        "{acme_out}"
    );
    assert_eq!(responder.requests(), 2, "OCSP is queried once per inspect");
}

// === coverage: every certificate below the anchor needs a source ===

/// The `partner-ca` bundle (the root only) with the root's CRL from a file, and `scope` (YAML
/// under the bundle, may be empty) appended.
fn root_crl_with(scope: &str) -> String {
    format!("{}{scope}", crl_file("partner-ca.crl"))
}

#[tokio::test]
async fn a_leaf_whose_issuing_ca_has_no_configured_crl_is_refused_unless_unknown_issuer_allows_it()
{
    let env = Env::new();
    let up = Upstream::start().await;
    let root = OpenSslCa::new(&env.root);
    std::fs::write(env.path("partner-ca.crl"), root.crl(&[])).unwrap();
    // The issuing CA chains to the root, which has a CRL; its own CRL is configured nowhere.
    let issuing = env.root.intermediate("partner issuing CA");
    let via_issuing = acme_identity(&issuing).issue();
    let from_root = env.acme();

    let gw = env
        .start(&env.config_with_bundle(up.addr, &root_crl_with(""), ""))
        .await;
    // A missing source is no more lenient than a stale one: unknown status, the unknown_ca alert.
    assert_handshake_refused(&gw, &env, &via_issuing, "UnknownCA").await;
    scrape_until(
        gw.admin_addr(),
        &[r#"certgate_tls_handshakes_total{result="revocation_unknown"} 1"#],
    )
    .await;
    // A leaf the root's CRL covers is served as before.
    assert_ok(&env.call_as(&gw, &from_root, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;

    // Explicitly opting out of coverage for unknown issuers restores the lenient behaviour.
    let lenient = root_crl_with("        revocation:\n          unknown_issuer: allow\n");
    let gw = env
        .start(&env.config_with_bundle(up.addr, &lenient, ""))
        .await;
    assert_ok(&env.call_as(&gw, &via_issuing, get("/v1/orders/1")).await);
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn leaf_only_coverage_accepts_an_ocsp_checked_leaf_under_an_intermediate_without_a_crl() {
    let env = Env::new();
    let up = Upstream::start().await;
    let issuing = env.root.intermediate("partner issuing CA");
    let issuing_ca = OpenSslCa::from_pem(&issuing.pem, &issuing.key_pem);
    let leaf = acme_identity(&issuing).issue();
    issuing_ca.valid(&leaf);
    let responder = OcspResponder::start(&issuing_ca).await;
    let with_ocsp = ocsp("hard_fail", &responder.url);

    // OCSP answers for the leaf, but nothing covers the issuing CA itself under full_chain.
    let gw = env
        .start(&env.config_with_bundle(up.addr, &with_ocsp, ""))
        .await;
    assert_handshake_refused(&gw, &env, &leaf, "UnknownCA").await;
    gw.shutdown().await;

    let leaf_only = format!("{with_ocsp}        revocation:\n          coverage: leaf_only\n");
    let gw = env
        .start(&env.config_with_bundle(up.addr, &leaf_only, ""))
        .await;
    assert_ok(&env.call_as(&gw, &leaf, get("/v1/orders/1")).await);
    assert_eq!(responder.requests(), 1);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn check_warns_about_a_ca_without_a_revocation_source() {
    let env = Env::new();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let root = OpenSslCa::new(&env.root);
    let other = Ca::root("other partner root");
    std::fs::write(env.path("ca.pem"), format!("{}{}", env.root.pem, other.pem)).unwrap();
    std::fs::write(env.path("partner-ca.crl"), root.crl(&[])).unwrap();
    let check = |yaml: &str| {
        let path = write_file(env.dir.path(), "certgate.yaml", yaml);
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };

    let stderr = check(&env.config_with_bundle(up, &root_crl_with(""), ""));
    // Only the revocation warnings: the test server certificate also warns that it expires soon.
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:") && l.contains("revocation source"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("other partner root"), "{stderr}");
    assert!(warnings[0].contains("revocation_unknown"), "{stderr}");

    let lenient = root_crl_with("        revocation:\n          unknown_issuer: allow\n");
    let stderr = check(&env.config_with_bundle(up, &lenient, ""));
    assert!(!stderr.contains("revocation source"), "{stderr}");
}

// === revocation state outlives a reload ===

/// Asks the admin API for a reload and asserts it was applied.
async fn reload_via_admin(gw: &Gateway) {
    let (status, _, body) = admin(gw.admin_addr(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("applied"), "{body}");
}

#[tokio::test]
async fn a_reload_while_the_crl_server_is_down_keeps_the_last_good_crl() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let (acme, globex) = (env.acme(), env.globex());
    ca.revoke(&globex);
    let server = CrlServer::start(ca.crl(&[])).await;
    let url = server.url.clone();
    let bundle = |refresh: &str| {
        format!("        crl:\n          - url: {url}\n            refresh: {refresh}\n")
    };
    let gw = env
        .start(&env.config_with_bundle(up.addr, &bundle("1s"), ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;

    // The CRL server goes away (its listener is dropped) and the refresh notices.
    drop(server);
    assert!(
        eventually(Duration::from_secs(10), || gw
            .snapshot()
            .revocation
            .crl()
            .status()[0]
            .last_error
            .is_some())
        .await,
        "a refresh against the stopped server fails"
    );

    // The same definition: the reload shares the bundle's state.
    reload_via_admin(&gw).await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/2")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;
    let (status, _, body) = admin(gw.admin_addr(), "GET", "/readyz").await;
    assert_eq!(status, 200, "the last good CRL is still usable: {body}");

    // A changed definition (another refresh period) starts from what the old one had in force.
    std::fs::write(
        env.path("certgate.yaml"),
        env.config_with_bundle(up.addr, &bundle("2s"), ""),
    )
    .unwrap();
    reload_via_admin(&gw).await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/3")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_while_the_ocsp_responder_is_down_keeps_the_cached_answers() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let (acme, globex) = (env.acme(), env.globex());
    ca.valid(&acme);
    ca.revoke(&globex);
    let responder = OcspResponder::start(&ca).await;
    let gw = env
        .start(&env.config_with_bundle(up.addr, &ocsp("hard_fail", &responder.url), ""))
        .await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    assert_refused(
        &env.call_as(&gw, &globex, get("/v1/orders/1")).await,
        403,
        "certificate_revoked",
    );
    assert_eq!(responder.requests(), 2);

    // The responder goes away; under hard_fail only a cached answer can let acme in.
    let url = responder.url.clone();
    drop(responder);
    reload_via_admin(&gw).await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/2")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;

    // Another OCSP timeout, same responder: the new cache starts from the old one's answers.
    let changed = ocsp("hard_fail", &url).replace("timeout: 1s", "timeout: 2s");
    std::fs::write(
        env.path("certgate.yaml"),
        env.config_with_bundle(up.addr, &changed, ""),
    )
    .unwrap();
    reload_via_admin(&gw).await;
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/3")).await);
    assert_handshake_refused(&gw, &env, &globex, "CertificateRevoked").await;
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

// === source health in metrics ===

/// The value of the first sample in `text` whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn source_failures_are_counted_and_each_crl_source_exports_its_age_and_next_update() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    let server = CrlServer::start(ca.crl(&[])).await;
    let url = server.url.clone();
    let bundle = format!(
        "        crl:\n          - url: {url}\n            refresh: 1s\n{}",
        ocsp("soft_fail", &dead_url("ocsp"))
    );
    let gw = env
        .start(&env.config_with_bundle(up.addr, &bundle, ""))
        .await;
    let labels = format!(r#"{{bundle="partner-ca",kind="crl",source="{url}"}}"#);
    let text = scrape(gw.admin_addr()).await;
    let next_update = sample(
        &text,
        &format!("certgate_revocation_source_next_update_timestamp_seconds{labels}"),
    );
    assert!(next_update.is_some_and(|t| t > 0.0), "{text}");
    let age = sample(
        &text,
        &format!("certgate_revocation_source_age_seconds{labels}"),
    );
    assert!(age.is_some_and(|a| a >= 0.0), "{text}");

    // The CRL server fails; the OCSP responder is unreachable (soft_fail still serves).
    server.answer(500, Vec::new());
    assert_ok(&env.call_as(&gw, &acme, get("/v1/orders/1")).await);
    let counted = |kind: &'static str| {
        let addr = gw.admin_addr();
        async move {
            let prefix = format!(
                r#"certgate_revocation_source_failures_total{{bundle="partner-ca",kind="{kind}"}}"#
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let n = sample(&scrape(addr).await, &prefix).unwrap_or(0.0);
                if n >= 1.0 || Instant::now() > deadline {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(counted("crl").await >= 1.0, "a failed CRL fetch is counted");
    assert!(
        counted("ocsp").await >= 1.0,
        "a failed OCSP query is counted"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_crl_source_no_generation_uses_any_more_stops_being_fetched() {
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let server = CrlServer::start(ca.crl(&[])).await;
    let bundle = format!(
        "        crl:\n          - url: {}\n            refresh: 1s\n",
        server.url
    );
    let gw = env
        .start(&env.config_with_bundle(up.addr, &bundle, ""))
        .await;
    let first = server.requests();
    assert!(
        eventually(Duration::from_secs(10), || server.requests() >= first + 2).await,
        "the source is refreshed every second"
    );

    std::fs::write(env.path("certgate.yaml"), env.config(up.addr, "")).unwrap();
    reload_via_admin(&gw).await;
    assert_ok(&env.call_as(&gw, &env.acme(), get("/v1/orders/1")).await);
    // A fetch already under way may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = server.requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        server.requests(),
        after,
        "the removed source's task stopped"
    );
    gw.shutdown().await;
}
