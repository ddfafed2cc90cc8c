//! Request smuggling and differential-parsing payloads, written as raw bytes over real TLS to the
//! gateway in front of a real upstream that records what reaches it. Each payload hides a second
//! request to `/v1/orders/smuggled`; the upstream must never see it.
//!
//! Most payloads are refused outright (400 or a closed connection, nothing forwarded). The two
//! where both `Content-Length` and `Transfer-Encoding: chunked` are present are resolved by hyper
//! as RFC 9112 §6.3 requires: the transfer coding wins, `Content-Length` is discarded and the
//! connection is closed after the response. The conflicting header never reaches certgate's
//! service, so it cannot refuse the request; it forwards one unambiguous chunked request and never
//! reads what follows. The test pins that behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on a fresh mTLS connection and returns whatever the gateway answers before it
/// closes the connection or goes quiet.
async fn send_raw(env: &Env, gw: &certgate::runtime::Gateway, raw: &str) -> String {
    let mut tls = env.acme_tls(gw).await;
    tls.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const SMUGGLED: &str = "GET /v1/orders/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// What the gateway must do with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 400 or a closed connection; nothing reaches the upstream.
    Refused,
    /// Forwarded once as a plain chunked request without `Content-Length`; the connection closes
    /// after the one response, so the hidden request is never parsed.
    Reframed,
}

fn payloads() -> Vec<(&'static str, Expect, String)> {
    use Expect::*;
    vec![
        (
            "CL.TE",
            Reframed,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}", 5 + SMUGGLED.len()),
        ),
        (
            "TE.CL",
            Reframed,
            format!(
                "POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
        ),
        (
            "TE.TE obfuscated value",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE.TE space before colon",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE.TE chunked not last",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "duplicate Content-Length",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "obs-fold",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF in chunk line",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "0x chunk size",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "+ chunk size",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "_ chunk size",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0_3\r\nabc\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "negative Content-Length",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Content-Length with plus sign",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +{}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "h2c upgrade",
            Refused,
            "GET /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_owned(),
        ),
    ]
}

#[tokio::test]
async fn no_smuggling_payload_reaches_the_upstream() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let mut report = Vec::new();
    for (name, expect, raw) in payloads() {
        let before = up.count();
        let answer = send_raw(&env, &gw, &raw).await;
        let status = answer.lines().next().unwrap_or("(closed)").to_owned();
        let seen: Vec<Seen> = up.seen.lock().unwrap()[before..].to_vec();
        let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
        report.push(format!("{name}: {status}; upstream saw {paths:?}"));
        assert!(
            !paths.iter().any(|p| p.contains("smuggled")),
            "{name}: the smuggled request reached the upstream: {paths:?}"
        );
        match expect {
            Expect::Refused => {
                assert!(
                    paths.is_empty(),
                    "{name}: must be refused, not forwarded ({status}; upstream saw {paths:?})"
                );
                assert!(
                    status.is_empty() || status.starts_with("HTTP/1.1 400") || status == "(closed)",
                    "{name}: expected 400 or a closed connection, got {status:?}"
                );
            }
            Expect::Reframed => {
                assert_eq!(paths, ["/v1/orders/a"], "{name}");
                assert!(
                    seen[0].headers.get("content-length").is_none(),
                    "{name}: {:?}",
                    seen[0].headers
                );
                assert_eq!(
                    answer.matches("HTTP/1.1 ").count(),
                    1,
                    "{name}: one response, then close: {answer}"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    // The gateway still serves a well-behaved partner afterwards.
    env.still_serves(&gw).await;
}

#[tokio::test]
async fn a_plain_chunked_body_is_forwarded_exactly_once() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let raw = "POST /v1/orders/count-body HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let answer = send_raw(&env, &gw, raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("{\"bytes\":5}"), "{answer}");
    assert_eq!(up.count(), 1);
}
