//! An idle HTTP/1.1 partner connection is parked: its HTTP connection (and the buffers it holds)
//! is taken apart and only the TLS stream waits for the partner's next bytes. Parked, it still
//! serves its next request on the same connection, still closes at the header read timeout as an
//! idle keep-alive connection does, and still ends on revocation and drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::openssl::{replace_by_rename, OpenSslCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PARKED: &str = "certgate_connections_parked 1";
const NONE_PARKED: &str = "certgate_connections_parked 0";

/// `limits` lines (four-space indent) under `server.limits`.
fn with_limits(yaml: &str, limits: &str) -> String {
    yaml.replace(
        "  client_auth:",
        &format!("  limits:\n{limits}  client_auth:"),
    )
}

/// One GET on `tls`, answered 200.
async fn get(tls: &mut TlsStream<TcpStream>, path: &str) {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_response(tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Waits until the gateway has parked one connection (parking follows 1-2 s of quiet; the scrape
/// helper waits up to 5 s).
async fn parked(gw: &certgate::runtime::Gateway) {
    scrape_until(gw.admin_addr(), &[PARKED]).await;
}

/// Reads until the gateway closes `tls`; `None` if it is still open after `within`.
async fn closed_within(tls: &mut TlsStream<TcpStream>, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_request_on_the_same_connection() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&with_limits(
            &env.config(up.addr, ""),
            "    idle_timeout: 60s\n    header_read_timeout: 30s\n",
        ))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    let client = tls.get_ref().0.local_addr().unwrap();
    get(&mut tls, "/v1/orders/before-parking").await;
    parked(&gw).await;

    get(&mut tls, "/v1/orders/after-parking").await;
    scrape_until(gw.admin_addr(), &[NONE_PARKED]).await;
    // Parked again once quiet, and served again.
    parked(&gw).await;
    get(&mut tls, "/v1/orders/after-parking-again").await;

    let lines = audit()
        .wait(3, |v| {
            v["event"] == "request" && v["client.addr"] == client.to_string().as_str()
        })
        .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["conn.id"] == lines[0]["conn.id"]),
        "one connection served all three: {lines:?}"
    );
    assert!(lines.iter().all(|l| l["http.status"] == 200), "{lines:?}");
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_across_parking_is_served() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&with_limits(
            &env.config(up.addr, ""),
            "    idle_timeout: 60s\n    header_read_timeout: 30s\n",
        ))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    get(&mut tls, "/v1/orders/first").await;
    parked(&gw).await;
    // The next head arrives in pieces: the first wakes the connection, the rest follows.
    tls.write_all(b"GET /v1/orders/split HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.write_all(b"Host: localhost\r\n\r\n").await.unwrap();
    let answer = read_response(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_the_header_read_timeout_unrefused() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&with_limits(
            &env.config(up.addr, ""),
            "    idle_timeout: 60s\n    header_read_timeout: 4s\n",
        ))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    let client = tls.get_ref().0.local_addr().unwrap();
    get(&mut tls, "/v1/orders/then-quiet").await;
    let answered = Instant::now();
    parked(&gw).await;
    let closed = closed_within(&mut tls, Duration::from_secs(15)).await;
    assert_eq!(
        closed.as_deref(),
        Some(&b""[..]),
        "closed quietly within 15 s"
    );
    // Idle time is dated by the checks that see it, so never early.
    assert!(
        answered.elapsed() >= Duration::from_millis(3900),
        "closed after {:?}, before the header read timeout",
        answered.elapsed()
    );
    scrape_until(
        gw.admin_addr(),
        &[NONE_PARKED, "certgate_connections_active 0"],
    )
    .await;
    let refused = audit()
        .all()
        .into_iter()
        .filter(|v| v["event"] == "connection_refused" && v["client.addr"] == client.to_string())
        .count();
    assert_eq!(refused, 0, "the end of an idle connection is no refusal");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_cut_within_a_second_of_its_certificates_revocation() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    let crl = env.path("partner-ca.crl");
    std::fs::write(&crl, ca.crl(&[])).unwrap();
    let bundle = "        crl:\n          - path: partner-ca.crl\n";
    let gw = env
        .start(&with_limits(
            &env.config_with_bundle(up.addr, bundle, ""),
            "    idle_timeout: 60s\n    header_read_timeout: 30s\n",
        ))
        .await;
    let mut tls = env.tls_as(&gw, &acme).await;
    let client = tls.get_ref().0.local_addr().unwrap();
    get(&mut tls, "/v1/orders/before-revocation").await;
    parked(&gw).await;

    ca.revoke(&acme);
    replace_by_rename(&crl, &ca.crl(&[]));
    // The CRL is picked up within a few seconds and the cut is due within 1 s of that: 8 s in
    // all leaves room for a loaded machine.
    assert!(
        closed_within(&mut tls, Duration::from_secs(8))
            .await
            .is_some(),
        "the revoked partner's parked connection is still open"
    );
    assert_eq!(audit().of("connection_revoked", client).await.len(), 1);
    scrape_until(gw.admin_addr(), &[NONE_PARKED]).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_a_parked_connection_at_once_and_finishes_clean() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&with_limits(
            &env.config(up.addr, ""),
            "    idle_timeout: 60s\n    header_read_timeout: 30s\n",
        ))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    get(&mut tls, "/v1/orders/before-drain").await;
    parked(&gw).await;

    let drained = tokio::spawn(gw.drain());
    assert!(
        closed_within(&mut tls, Duration::from_secs(5))
            .await
            .is_some(),
        "the parked connection outlived the drain"
    );
    let drained = tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain waits for nothing once the parked connection closed")
        .unwrap();
    assert_eq!(drained, certgate::runtime::Drained::Clean);
}
