//! Request smuggling and differential-parsing payloads, written as raw bytes over real TLS to the
//! gateway in front of a real upstream that records what reaches it. Each payload hides a second
//! request to `/v1/orders/smuggled`; the upstream must never see it.
//!
//! Every payload is sent as a connection's first request (forwarded through the pooled client) and
//! as its second and third (forwarded over the connection's own upstream connection, certgate's
//! HTTP/1.1 client), after plain requests that must each get their own answer.
//!
//! Most payloads are refused outright (400 or a closed connection, nothing forwarded). The two
//! where both `Content-Length` and `Transfer-Encoding: chunked` are present are resolved by hyper
//! as RFC 9112 §6.3 requires: the transfer coding wins, `Content-Length` is discarded and the
//! connection is closed after the response. The conflicting header never reaches certgate's
//! service, so it cannot refuse the request; it forwards one unambiguous chunked request and never
//! reads what follows. The test pins that behaviour.
//!
//! Bare LF line endings in a request head are accepted by hyper's parser (httparse has no strict
//! mode for requests). Such a head is parsed exactly once, by hyper, and the upstream receives
//! certgate's re-encoding of it with CRLF: a header that a CRLF-only parser would have folded into
//! the previous line reaches the upstream as the header hyper saw, and the body it framed stays a
//! body. The `ParsedOnce` payloads pin that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Sends `raw` as the first request on a fresh mTLS connection (see [`send_raw_after`]).
async fn send_raw(env: &Env, gw: &certgate::runtime::Gateway, raw: &str) -> String {
    send_raw_after(env, gw, 0, "first", raw).await
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
    /// Forwarded once, as hyper parsed it: the hidden request stays the body hyper framed.
    ParsedOnce,
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
            "TE identity, chunked",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE gzip, chunked",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE chunked on two lines",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE chunked, chunked",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "duplicate Host",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nHost: api.example.com\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "duplicate Host, same value",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "no Host",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "Host with obs-text",
            Refused,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: local\u{ff}host\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "bare LF before Content-Length",
            ParsedOnce,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nX-Pad: a\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "bare LF everywhere",
            ParsedOnce,
            format!("POST /v1/orders/a HTTP/1.1\nHost: localhost\nContent-Length: {}\n\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "bare LF ending the head",
            ParsedOnce,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "bare LF hiding Transfer-Encoding",
            Reframed,
            format!("POST /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nX-Pad: a\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLED}", 5 + SMUGGLED.len()),
        ),
        (
            "h2c upgrade",
            Refused,
            "GET /v1/orders/a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_owned(),
        ),
    ]
}

/// Where in its connection a payload is sent: after this many plain requests.
const POSITIONS: [usize; 3] = [0, 1, 2];

#[tokio::test]
async fn no_smuggling_payload_reaches_the_upstream() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    // Each payload at each position on a connection of its own, all at once; every one names its
    // own path, so what the upstream saw is told apart by path.
    let cases: Vec<(&str, Expect, usize, String, String)> = payloads()
        .into_iter()
        .enumerate()
        .flat_map(|(i, (name, expect, raw))| {
            POSITIONS.map(|before| {
                let tag = format!("{i}-{before}");
                let raw = raw.replacen("/v1/orders/a ", &format!("/v1/orders/a-{tag} "), 1);
                assert_ne!(raw, "", "{name}");
                (name, expect, before, tag, raw)
            })
        })
        .collect();
    let answers = futures_util::future::join_all(
        cases
            .iter()
            .map(|(_, _, before, tag, raw)| send_raw_after(&env, &gw, *before, tag, raw)),
    )
    .await;
    let all: Vec<Seen> = up.seen.lock().unwrap().clone();
    assert!(
        !all.iter().any(|s| s.path_and_query.contains("smuggled")),
        "a smuggled request reached the upstream: {:?}",
        all.iter().map(|s| &s.path_and_query).collect::<Vec<_>>()
    );
    let mut report = Vec::new();
    for ((name, expect, before, tag, _), answer) in cases.iter().zip(answers) {
        let name = format!("{name} (after {before} requests)");
        let status = answer.lines().next().unwrap_or("(closed)").to_owned();
        let target = format!("/v1/orders/a-{tag}");
        let seen: Vec<&Seen> = all.iter().filter(|s| s.path_and_query == target).collect();
        report.push(format!(
            "{name}: {status}; upstream saw it {} times",
            seen.len()
        ));
        match expect {
            Expect::Refused => {
                assert!(
                    seen.is_empty(),
                    "{name}: must be refused, not forwarded ({status}; upstream saw {seen:?})"
                );
                assert!(
                    status.is_empty() || status.starts_with("HTTP/1.1 400") || status == "(closed)",
                    "{name}: expected 400 or a closed connection, got {status:?}"
                );
            }
            Expect::Reframed => {
                assert_eq!(seen.len(), 1, "{name}");
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
            Expect::ParsedOnce => {
                assert_eq!(seen.len(), 1, "{name}");
                let headers = &seen[0].headers;
                assert_eq!(
                    headers.get_all("content-length").iter().collect::<Vec<_>>(),
                    [SMUGGLED.len().to_string().as_str()],
                    "{name}: {headers:?}"
                );
                assert_eq!(headers.get_all("host").iter().count(), 1, "{name}");
                assert_eq!(
                    answer.matches("HTTP/1.1 ").count(),
                    1,
                    "{name}: one response: {answer}"
                );
                assert!(status.starts_with("HTTP/1.1 200"), "{name}: {answer}");
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

#[tokio::test]
async fn a_request_naming_no_host_or_two_hosts_is_400_bad_host_and_closes() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let cases = [
        "GET /v1/orders/h HTTP/1.1\r\nHost: localhost\r\nHost: api.example.com\r\n\r\n",
        "GET /v1/orders/h HTTP/1.1\r\nHost: api.example.com\r\nHost: localhost\r\n\r\n",
        "GET /v1/orders/h HTTP/1.1\r\n\r\n",
        "GET https://localhost/v1/orders/h HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",
        "GET https://user@localhost/v1/orders/h HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for (i, raw) in cases.into_iter().enumerate() {
        for before in [0, 1] {
            let answer = send_raw_after(&env, &gw, before, &format!("{i}"), raw).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
            assert!(
                answer.contains(r#"{"error":"bad_host""#),
                "{raw:?}: {answer}"
            );
            assert!(answer.contains("connection: close"), "{raw:?}: {answer}");
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.path_and_query.contains("/plain-")),
        "{seen:?}"
    );
    // HTTP/1.0 has no Host requirement: the SNI names the host.
    let answer = send_raw(&env, &gw, "GET /v1/orders/old HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
        "{answer}"
    );
    assert_eq!(up.last().path_and_query, "/v1/orders/old");
}

#[tokio::test]
async fn an_absolute_form_target_is_the_host_checked_routed_and_forwarded() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    for before in [0, 1, 2] {
        // The target names the connection's host; the Host beside it names another and is
        // replaced, not forwarded.
        let path = format!("/v1/orders/abs-{before}");
        let raw = format!("GET https://localhost{path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
        let answer = send_raw_after(&env, &gw, before, &format!("ok{before}"), &raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = up.last();
        assert_eq!(seen.path_and_query, path);
        assert_eq!(
            seen.headers.get_all("host").iter().collect::<Vec<_>>(),
            ["localhost"]
        );

        // The target names another host than the connection's: refused, whatever Host says.
        let raw = "GET https://api.example.com/v1/orders/abs HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let answer = send_raw_after(&env, &gw, before, &format!("no{before}"), raw).await;
        assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
        assert!(answer.contains(r#"{"error":"host_mismatch""#), "{answer}");
        let forwarded = up
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path_and_query == "/v1/orders/abs")
            .count();
        assert_eq!(forwarded, 0, "nothing forwarded");
    }
}

#[tokio::test]
async fn connect_is_refused_unless_a_route_lists_it() {
    let env = Env::new();
    let up = Upstream::start().await;
    let any = "  - name: any-method\n    path_prefix: /v1/any\n    scope: orders:read\n    upstream: orders\n";
    let gw = env.start(&env.config(up.addr, any)).await;
    let cases = [
        "CONNECT /v1/any/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "CONNECT /v1/orders/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for (i, raw) in cases.into_iter().enumerate() {
        for before in [0, 1] {
            let answer = send_raw_after(&env, &gw, before, &format!("{i}"), raw).await;
            assert!(answer.starts_with("HTTP/1.1 405"), "{raw:?}: {answer}");
            assert!(
                answer.contains(r#"{"error":"method_not_allowed""#),
                "{raw:?}: {answer}"
            );
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.path_and_query.contains("/plain-")),
        "{seen:?}"
    );
    // Every other method still reaches a route without a method list.
    let answer = send_raw(
        &env,
        &gw,
        "DELETE /v1/any/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().method, "DELETE");
}
