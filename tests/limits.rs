//! Every connection limit, crossed on purpose: the offender gets a clean refusal or close, and the
//! gateway keeps serving a well-behaved partner meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
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
}

#[tokio::test]
async fn slowloris_headers_hit_the_header_read_timeout() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    header_read_timeout: 400ms\n"))
        .await;
    let mut tls = env.acme_tls(&gw).await;
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
    assert_eq!(
        up.count(),
        1,
        "only the well-behaved request reached the upstream"
    );
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_refused_with_431() {
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
    }
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
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
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("never served")
        .unwrap();
    assert!(third.is_ok());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
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
}

#[tokio::test]
async fn a_chain_longer_than_allowed_is_refused_in_the_handshake() {
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
    let err = call(
        gw.local_addr(),
        env.client(Some(&deep), &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await
    .unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    assert_eq!(up.count(), 0);
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
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_cut_after_the_idle_timeout() {
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
}
