//! Every connection limit, crossed on purpose: the offender gets a clean refusal or close, the
//! refusal is counted and audited, and the gateway keeps serving a well-behaved partner meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(env: &Env, up: &Upstream, limits: &str) -> String {
    env.config(up.addr, "").replace(
        "  client_auth:",
        &format!("  limits:\n{limits}  client_auth:"),
    )
}

/// Reads until the peer closes; returns what arrived, or `None` if it stays open past `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// The scrape once every connection's task has ended (so each refusal has been counted), checked
/// to hold every line of `expected`.
async fn settled(gw: &certgate::runtime::Gateway, expected: &[&str]) -> String {
    let mut lines = vec!["certgate_connections_active 0"];
    lines.extend_from_slice(expected);
    scrape_until(gw.admin_addr(), &lines).await
}

/// The one `connection_refused` audit line of the connection from `client`, checked to carry
/// `reason` and the fields every such line has.
async fn refused_line(client: SocketAddr, reason: &str) -> serde_json::Value {
    let lines = audit().of("connection_refused", client).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines.into_iter().next().unwrap();
    assert_eq!(line["reason"], reason, "{line}");
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["partner"], "acme", "{line}");
    for field in ["timestamp", "conn.id", "cert.serial"] {
        assert!(!line[field].is_null(), "no {field}: {line}");
    }
    line
}

/// Asserts that the connection from `client` was not audited as refused.
fn not_refused(client: SocketAddr) {
    let client = client.to_string();
    let lines: Vec<_> = audit()
        .all()
        .into_iter()
        .filter(|v| v["event"] == "connection_refused" && v["client.addr"] == client.as_str())
        .collect();
    assert!(lines.is_empty(), "{lines:?}");
}

fn local_addr(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> SocketAddr {
    tls.get_ref().0.local_addr().unwrap()
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let audit = audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    handshake_timeout: 300ms\n"))
        .await;
    let mut tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello, then silence
    env.still_serves(&gw).await;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5))
            .await
            .is_some(),
        "still open after 5s"
    );
    settled(
        &gw,
        &[
            r#"certgate_tls_handshakes_total{result="timeout"} 1"#,
            r#"certgate_tls_handshakes_total{result="ok"} 1"#,
        ],
    )
    .await;
    let lines = audit
        .of("handshake_refused", tcp.local_addr().unwrap())
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "timeout");
    assert_eq!(lines[0]["decision"], "deny");
}

#[tokio::test]
async fn slowloris_headers_hit_the_header_read_timeout() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    header_read_timeout: 400ms\n"))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    let slowloris = local_addr(&tls);
    // A keep-alive connection that sends nothing after its first request also meets hyper's
    // header read timeout: it is closed, but that is the end of an idle connection, no refusal.
    let mut idle = env.acme_tls(&gw).await;
    let idle_addr = local_addr(&idle);
    idle.write_all(b"GET /v1/orders/idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let slow = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tls
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::join!(slow, env.still_serves(&gw));
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("still open after 5s");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let idle_answer = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("idle connection still open after 5s");
    assert!(String::from_utf8_lossy(&idle_answer).starts_with("HTTP/1.1 200"));
    assert_eq!(
        up.count(),
        2,
        "only the well-behaved requests reached the upstream"
    );
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="header_timeout"} 1"#],
    )
    .await;
    refused_line(slowloris, "header_timeout").await;
    not_refused(idle_addr);
}

#[tokio::test]
async fn http1_spoken_on_an_h2_connection_meets_the_same_header_read_timeout() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    header_read_timeout: 400ms\n"))
        .await;
    // hyper picks the protocol from the client's first bytes, whatever ALPN said.
    let client = env.client(Some(&env.acme()), &[b"h2"]);
    let mut tls = connect(gw.local_addr(), "localhost", client).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("a half-sent head on an h2 connection was held open");
    assert!(!String::from_utf8_lossy(&answer).contains("200"));
    refused_line(local_addr(&tls), "header_timeout").await;
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_refused_with_431() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(
            &env,
            &up,
            "    max_header_bytes: 16384\n    max_headers: 20\n",
        ))
        .await;
    for (name, extra) in [
        ("too large", format!("X-Big: {}\r\n", "a".repeat(40_000))),
        (
            "too many",
            (0..40)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>(),
        ),
    ] {
        let mut tls = env.acme_tls(&gw).await;
        let req = format!("GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
        let _ = tls.write_all(req.as_bytes()).await;
        let answer = closed_within(&mut tls, Duration::from_secs(5))
            .await
            .expect("still open after 5s");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{name}: {text}");
        refused_line(local_addr(&tls), "header_too_large").await;
    }
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="header_too_large"} 2"#],
    )
    .await;
}

#[tokio::test]
async fn a_malformed_request_head_is_refused_with_400() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    for (name, head) in [
        (
            "header line without a colon",
            "GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\nX-No-Colon\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            "POST /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
    ] {
        let mut tls = env.acme_tls(&gw).await;
        let _ = tls.write_all(head.as_bytes()).await;
        let answer = closed_within(&mut tls, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: still open after 5s"));
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{name}: {text}"
        );
        refused_line(local_addr(&tls), "bad_request").await;
    }
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="bad_request"} 2"#],
    )
    .await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let audit = audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    max_connections: 2\n"))
        .await;
    let client = env.client(Some(&env.acme()), &[b"http/1.1"]);
    let first = connect(gw.local_addr(), "localhost", client.clone())
        .await
        .unwrap();
    let _second = connect(gw.local_addr(), "localhost", client.clone())
        .await
        .unwrap();
    // The third sits in the kernel's backlog: no permit, so certgate does not accept it.
    let third = tokio::spawn(connect(gw.local_addr(), "localhost", client));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections: 2"
    );
    // Reaching the limit is counted and audited; the clients waiting in the backlog are not
    // accepted, so certgate cannot name them.
    scrape_until(
        gw.admin_addr(),
        &[
            "certgate_connection_limit_reached_total 1",
            "certgate_connections_active 2",
        ],
    )
    .await;
    let reached = audit.lines("event", "connection_limit_reached", 1).await;
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(reached[0]["decision"], "wait");
    assert_eq!(reached[0]["limit"], 2);
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("never served")
        .unwrap();
    let mut third = handshake_http(third.unwrap()).await.unwrap();
    let answer = read(third.send(get("/v1/orders/1")).await.unwrap()).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_without_counting_a_refusal() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    idle_timeout: 500ms\n"))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    tls.write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("idle connection still open after 5s");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // Closing an idle connection is the ordinary end of keep-alive, not a refusal.
    let text = settled(&gw, &[]).await;
    let refusals: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("certgate_connection_refusals_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
    not_refused(local_addr(&tls));
    env.still_serves(&gw).await;
}

/// Presents `leaf` and asserts the handshake is refused; returns the client's address.
async fn refused_handshake(env: &Env, gw: &certgate::runtime::Gateway, leaf: &Leaf) -> SocketAddr {
    // With TLS 1.3 the client learns of the refusal on its first read.
    let mut tls = connect(
        gw.local_addr(),
        "localhost",
        env.client(Some(leaf), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let client = local_addr(&tls);
    let _ = tls
        .write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let err = tls.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    client
}

async fn chain_too_long_line(client: SocketAddr) {
    let lines = audit().of("handshake_refused", client).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "chain_too_long");
    assert_eq!(lines[0]["decision"], "deny");
}

fn chain_bytes(leaf: &Leaf) -> usize {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .map(|c| c.unwrap().len())
        .sum()
}

#[tokio::test]
async fn a_chain_larger_than_allowed_is_refused_in_the_handshake() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    // Room for a leaf issued by the root, not for one that brings an intermediate along.
    let max = chain_bytes(&env.acme()) + 200;
    let gw = env
        .start(&limits(&env, &up, &format!("    max_chain_bytes: {max}\n")))
        .await;
    let big = env
        .root
        .intermediate("issuing")
        .leaf("acme-billing")
        .spiffe("spiffe://partners.example.com/acme")
        .issue();
    assert!(chain_bytes(&big) > max);
    let client = refused_handshake(&env, &gw, &big).await;
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_tls_handshakes_total{result="chain_too_long"} 1"#],
    )
    .await;
    chain_too_long_line(client).await;
}

#[tokio::test]
async fn a_chain_longer_than_allowed_is_refused_in_the_handshake() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    max_chain_depth: 2\n"))
        .await;
    let mut ca = env.root.intermediate("issuing 1");
    for i in 2..=3 {
        ca = ca.intermediate(&format!("issuing {i}"));
    }
    let deep = ca
        .leaf("acme-billing")
        .spiffe("spiffe://partners.example.com/acme")
        .issue();
    let client = refused_handshake(&env, &gw, &deep).await;
    assert_eq!(up.count(), 0);
    chain_too_long_line(client).await;
    // Two intermediates are within the limit.
    let ok = env
        .root
        .intermediate("a")
        .intermediate("b")
        .leaf("acme-billing")
        .spiffe("spiffe://partners.example.com/acme")
        .issue();
    let a = call(
        gw.local_addr(),
        env.client(Some(&ok), &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    settled(
        &gw,
        &[
            r#"certgate_tls_handshakes_total{result="chain_too_long"} 1"#,
            r#"certgate_tls_handshakes_total{result="ok"} 1"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_cut_after_the_idle_timeout() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    idle_timeout: 500ms\n"))
        .await;
    let mut tls = env.acme_tls(&gw).await;
    const SIZE: usize = 64 * 1024 * 1024;
    tls.write_all(
        format!("GET /v1/orders/download/{SIZE} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // Read nothing while the gateway's socket buffers fill and it stalls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.still_serves(&gw).await;
    let received = closed_within(&mut tls, Duration::from_secs(10))
        .await
        .expect("a stalled response was held open");
    assert!(
        received.len() < SIZE,
        "the whole body arrived: the reader was not cut"
    );
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="stalled"} 1"#],
    )
    .await;
    refused_line(local_addr(&tls), "stalled").await;
}
