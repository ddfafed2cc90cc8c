//! Every connection limit, crossed on purpose: the offender gets a clean refusal or close, the
//! refusal is counted and audited, and the gateway keeps serving a well-behaved partner meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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

/// Which connection an audit line is about. Tests in this binary run side by side against their
/// own gateways, and connections to different gateways may share a client port, so a line is
/// matched by the client's address and its (fresh, per connection) certificate.
#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    sha256: String,
}

impl Peer {
    fn of(tls: &TlsStream<TcpStream>, leaf: &Leaf) -> Peer {
        Peer {
            addr: tls.get_ref().0.local_addr().unwrap(),
            sha256: leaf.fingerprint_hex(),
        }
    }

    fn is(&self, line: &serde_json::Value) -> bool {
        line["client.addr"] == self.addr.to_string().as_str()
            && line["cert.sha256"] == self.sha256.as_str()
    }

    /// The one `connection_refused` audit line of this connection, checked to carry `reason`
    /// and the fields every such line has.
    async fn refused_line(&self, reason: &str) -> serde_json::Value {
        let lines = audit()
            .wait(1, |v| v["event"] == "connection_refused" && self.is(v))
            .await;
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

    /// Asserts that this connection was not audited as refused.
    fn not_refused(&self) {
        let lines: Vec<_> = audit()
            .all()
            .into_iter()
            .filter(|v| v["event"] == "connection_refused" && self.is(v))
            .collect();
        assert!(lines.is_empty(), "{lines:?}");
    }
}

/// A fresh `acme` connection (its own certificate) with `alpn`.
async fn acme_conn(
    env: &Env,
    gw: &certgate::runtime::Gateway,
    alpn: &[u8],
) -> (TlsStream<TcpStream>, Peer) {
    let leaf = env.acme();
    let tls = connect(
        gw.local_addr(),
        "localhost",
        env.client(Some(&leaf), &[alpn]),
    )
    .await
    .unwrap();
    let peer = Peer::of(&tls, &leaf);
    (tls, peer)
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
    let (mut tls, slowloris) = acme_conn(&env, &gw, b"http/1.1").await;
    // A keep-alive connection that sends nothing after its first request also meets hyper's
    // header read timeout: it is closed, but that is the end of an idle connection, no refusal.
    let (mut idle, idle_peer) = acme_conn(&env, &gw, b"http/1.1").await;
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
    slowloris.refused_line("header_timeout").await;
    idle_peer.not_refused();
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
    let (mut tls, peer) = acme_conn(&env, &gw, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("a half-sent head on an h2 connection was held open");
    assert!(!String::from_utf8_lossy(&answer).contains("200"));
    peer.refused_line("header_timeout").await;
    assert_eq!(up.count(), 0);
    env.still_serves(&gw).await;
}

/// The request head limit covers the request line: a URI alone over `max_header_bytes` is the
/// same 431 as any oversized head. (hyper decides this before certgate sees the request: the head
/// never completes inside its buffer, so it cannot tell a long URI from long header fields. Its own
/// 414 applies only to a URI over 65534 bytes inside a head that fits a larger limit.)
#[tokio::test]
async fn a_uri_alone_over_the_head_limit_is_refused_with_431() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    max_header_bytes: 16384\n"))
        .await;
    let (mut tls, peer) = acme_conn(&env, &gw, b"http/1.1").await;
    let req = format!(
        "GET /v1/orders/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = tls.write_all(req.as_bytes()).await;
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("still open after 5s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    peer.refused_line("header_too_large").await;
    assert_eq!(up.count(), 0);
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
        let (mut tls, peer) = acme_conn(&env, &gw, b"http/1.1").await;
        let req = format!("GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
        let _ = tls.write_all(req.as_bytes()).await;
        let answer = closed_within(&mut tls, Duration::from_secs(5))
            .await
            .expect("still open after 5s");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{name}: {text}");
        peer.refused_line("header_too_large").await;
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
        let (mut tls, peer) = acme_conn(&env, &gw, b"http/1.1").await;
        let _ = tls.write_all(head.as_bytes()).await;
        let answer = closed_within(&mut tls, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: still open after 5s"));
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{name}: {text}"
        );
        peer.refused_line("bad_request").await;
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
    let (mut tls, peer) = acme_conn(&env, &gw, b"http/1.1").await;
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
    peer.not_refused();
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
    let client = tls.get_ref().0.local_addr().unwrap();
    let _ = tls
        .write_all(b"GET /v1/orders/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let err = tls.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    client
}

fn chain_bytes(leaf: &Leaf) -> usize {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .map(|c| c.unwrap().len())
        .sum()
}

#[tokio::test]
async fn a_chain_longer_or_larger_than_allowed_is_refused_in_the_handshake() {
    let audit = audit();
    let env = Env::new();
    let up = Upstream::start().await;
    fn acme(ca: &Ca) -> common::pki::LeafBuilder<'_> {
        ca.leaf("acme-billing")
            .spiffe("spiffe://partners.example.com/acme")
    }
    // Two intermediates are within both limits.
    let ok = acme(&env.root.intermediate("a").intermediate("b")).issue();
    let max_bytes = chain_bytes(&ok) + 300;
    let gw = env
        .start(&limits(
            &env,
            &up,
            &format!("    max_chain_depth: 2\n    max_chain_bytes: {max_bytes}\n"),
        ))
        .await;
    let mut ca = env.root.intermediate("issuing 1");
    for i in 2..=3 {
        ca = ca.intermediate(&format!("issuing {i}"));
    }
    let deep = acme(&ca).issue();
    // No intermediate at all, but a leaf swollen with names.
    let mut big = acme(&env.root);
    for i in 0..100 {
        big = big.dns(&format!("name-{i:03}.partners.example.com"));
    }
    let big = big.issue();
    assert!(chain_bytes(&big) > max_bytes);

    let mut refused = Vec::new();
    for leaf in [&deep, &big] {
        refused.push(refused_handshake(&env, &gw, leaf).await);
    }
    assert_eq!(up.count(), 0);
    let a = call(
        gw.local_addr(),
        env.client(Some(&ok), &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    env.still_serves(&gw).await;
    settled(
        &gw,
        &[
            r#"certgate_tls_handshakes_total{result="chain_too_long"} 2"#,
            r#"certgate_tls_handshakes_total{result="ok"} 2"#,
        ],
    )
    .await;
    for client in refused {
        let lines = audit
            .wait(1, |v| {
                v["event"] == "handshake_refused"
                    && v["reason"] == "chain_too_long"
                    && v["client.addr"] == client.to_string().as_str()
            })
            .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["decision"], "deny");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_cut_after_the_idle_timeout() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(&env, &up, "    idle_timeout: 500ms\n"))
        .await;
    let (mut tls, peer) = acme_conn(&env, &gw, b"http/1.1").await;
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
    peer.refused_line("stalled").await;
}

// === HTTP/2 ===

/// HTTP/2 error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A hand-written HTTP/2 client over mTLS, for the frames a well-behaved library will not send.
struct RawH2 {
    tls: TlsStream<TcpStream>,
    peer: Peer,
    read: Vec<u8>,
}

impl RawH2 {
    /// Connects as `acme` with ALPN `h2`, sends the preface and an empty SETTINGS, and
    /// acknowledges the gateway's SETTINGS (which is when its stream limit takes effect).
    async fn open(env: &Env, gw: &certgate::runtime::Gateway) -> RawH2 {
        let (tls, peer) = acme_conn(env, gw, b"h2").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = RawH2 {
            tls,
            peer,
            read: Vec::new(),
        };
        h2.tls
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        h2.send(SETTINGS, 0, 0, &[]).await.unwrap();
        loop {
            let f = h2.next().await.expect("closed before its SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        h2.send(SETTINGS, ACK, 0, &[]).await.unwrap();
        h2
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    async fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.tls
            .write_all(&Self::frame(kind, flags, stream, payload))
            .await
    }

    /// The next frame, or `None` once the gateway has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let len = usize::try_from(u32::from_be_bytes([
                    0,
                    self.read[0],
                    self.read[1],
                    self.read[2],
                ]))
                .unwrap();
                if self.read.len() >= 9 + len {
                    let head: Vec<u8> = self.read.drain(..9).collect();
                    let payload = self.read.drain(..len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        payload,
                    });
                }
            }
            let mut buf = [0u8; 16 * 1024];
            let n = match tokio::time::timeout(Duration::from_secs(10), self.tls.read(&mut buf))
                .await
                .expect("no frame and no close within 10s")
            {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            self.read.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads to the end of the connection; returns its GOAWAY and every RST_STREAM before it.
    async fn until_closed(&mut self) -> (Option<Frame>, Vec<Frame>) {
        let (mut goaway, mut resets) = (None, Vec::new());
        while let Some(f) = self.next().await {
            match f.kind {
                GOAWAY => goaway = Some(f),
                RST_STREAM => resets.push(f),
                _ => {}
            }
        }
        (goaway, resets)
    }
}

/// Complete `GET {path}` requests, one HEADERS frame each, on the client streams numbered by
/// `streams` (stream id `1 + 2 * n`).
fn get_requests(streams: std::ops::Range<u32>, path: &str) -> Vec<u8> {
    let block = get_block(path);
    streams
        .flat_map(|n| RawH2::frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * n, &block))
        .collect()
}

/// An HPACK block for `GET https://localhost{path}` from the static table and literals only.
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    for (index, value) in [(0x04, path), (0x01, "localhost")] {
        // Literal without indexing, name from the static table (:path, :authority).
        block.push(index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// After one HTTP/2 connection was sent away for `reason`: partners on other connections, over
/// HTTP/1.1 and HTTP/2, are still answered, and the refusal was counted once and audited.
async fn sent_away_while_others_are_served(
    env: &Env,
    gw: &certgate::runtime::Gateway,
    peer: &Peer,
    reason: &str,
) {
    env.still_serves(gw).await;
    globex_still_served_over_h2(env, gw).await;
    let line = format!(r#"certgate_connection_refusals_total{{reason="{reason}"}} 1"#);
    settled(gw, &[line.as_str()]).await;
    peer.refused_line(reason).await;
}

/// A partner on another connection, over HTTP/2, is still answered.
async fn globex_still_served_over_h2(env: &Env, gw: &certgate::runtime::Gateway) {
    let a = call(
        gw.local_addr(),
        env.client(Some(&env.globex()), &[b"h2"]),
        get("/v1/orders/other-partner"),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_is_sent_away_with_enhance_your_calm() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let (tls, peer) = acme_conn(&env, &gw, b"h2").await;
    let (mut sender, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    // CVE-2023-44487: open a stream and cancel it at once, over and over, so the server starts
    // work for each while the client's concurrency stays near zero. Sent in batches, so the
    // client hears the gateway's answer between them.
    const STREAMS: usize = 1000;
    const BATCH: usize = 50;
    let mut opened = 0;
    let mut stopped_by = None;
    'flood: for _ in 0..STREAMS / BATCH {
        for _ in 0..BATCH {
            sender = match sender.ready().await {
                Ok(s) => s,
                Err(e) => {
                    stopped_by = Some(e);
                    break 'flood;
                }
            };
            let req = http::Request::get("https://localhost/v1/orders/reset")
                .body(())
                .unwrap();
            match sender.send_request(req, true) {
                Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(e) => {
                    stopped_by = Some(e);
                    break 'flood;
                }
            }
            opened += 1;
        }
        // Lets the connection task write the batch and read what came back.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened < STREAMS, "the gateway took all {STREAMS} streams");
    assert!(opened > 20, "only {opened} streams were sent");
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the flooding connection was still open after 10s")
        .unwrap();
    let err = stopped_by
        .or(ended.err())
        .expect("the flood stopped without an error");
    // A client still writing when the gateway closes the socket sees a broken pipe instead of
    // the GOAWAY; the gateway's own count below says why it closed either way.
    assert!(
        (err.is_go_away()
            && err.is_remote()
            && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
            || err.is_io(),
        "{err:?}"
    );
    // Streams reset before hyper accepted them never reached the service; a few accepted
    // between reads may have, none beyond the concurrency limit.
    assert!(
        up.count() <= 100,
        "{} requests reached the upstream",
        up.count()
    );

    sent_away_while_others_are_served(&env, &gw, &peer, "http2_flood").await;
}

#[tokio::test]
async fn an_http2_continuation_flood_is_cut_before_the_header_block_ends() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let mut h2 = RawH2::open(&env, &gw).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames of
    // one small header field each, up to a bound, stopping when the gateway stops reading.
    h2.send(HEADERS, END_STREAM, 1, &get_block("/v1/orders/flood"))
        .await
        .unwrap();
    let field = [0x00, 0x01, b'x', 0x01, b'y']; // literal `x: y`, new name, not indexed
    for _ in 0..10_000 {
        if h2.send(CONTINUATION, 0, 1, &field).await.is_err() {
            break;
        }
    }
    let (goaway, _) = h2.until_closed().await;
    let goaway = goaway.expect("closed without GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert_eq!(up.count(), 0);

    sent_away_while_others_are_served(&env, &gw, &h2.peer, "http2_flood").await;
}

/// A gateway with these `limits` lines, and one raw HTTP/2 connection to it as `acme`.
async fn raw_h2_with_limits(extra: &str) -> (Env, Upstream, certgate::runtime::Gateway, RawH2) {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&limits(&env, &up, extra)).await;
    let h2 = RawH2::open(&env, &gw).await;
    (env, up, gw, h2)
}

#[tokio::test]
async fn http2_streams_over_the_concurrency_limit_are_refused_and_a_client_ignoring_it_sent_away() {
    let (env, up, gw, mut h2) = raw_h2_with_limits("    h2_max_concurrent_streams: 4\n").await;
    // Ten requests at once that each hold their stream for a second: four fit.
    let burst = get_requests(0..10, "/v1/orders/delay/1000");
    h2.tls.write_all(&burst).await.unwrap();
    let (mut refused, mut answered) = (0, 0);
    while refused + answered < 10 {
        let f = h2.next().await.expect("closed while streams were open");
        match f.kind {
            RST_STREAM => {
                assert_eq!(f.error_code(), REFUSED_STREAM, "{f:?}");
                refused += 1;
            }
            HEADERS if f.flags & END_STREAM != 0 => answered += 1,
            DATA if f.flags & END_STREAM != 0 => answered += 1,
            GOAWAY => panic!("GOAWAY within the limit: {f:?}"),
            _ => {}
        }
    }
    assert_eq!((answered, refused), (4, 6));
    assert_eq!(up.count(), 4);

    // A client that keeps opening streams past the limit is refused stream by stream until h2's
    // bound on refusals (64 per connection) sends it away.
    let flood = get_requests(10..210, "/v1/orders/delay/1000");
    let _ = h2.tls.write_all(&flood).await;
    let (goaway, resets) = h2.until_closed().await;
    let goaway = goaway.expect("closed without GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(resets.iter().all(|r| r.error_code() == REFUSED_STREAM));
    assert!(
        up.count() <= 8,
        "{} requests reached the upstream",
        up.count()
    );

    sent_away_while_others_are_served(&env, &gw, &h2.peer, "http2_flood").await;
}

/// As over HTTP/1.1: an HTTP/2 connection on which no byte moves for `idle_timeout` while a
/// request waits for its upstream is cut as stalled. The gateway sends no PINGs of its own, which
/// would keep such a connection looking busy (and cost a clock read per frame on every other).
#[tokio::test]
async fn an_http2_connection_silent_while_its_request_waits_is_cut_after_the_idle_timeout() {
    let (_env, _up, gw, mut h2) = raw_h2_with_limits("    idle_timeout: 500ms\n").await;
    // The upstream answers after 4 s, well inside its 30 s request timeout: a connection cut as
    // stalled (within 1.5 x idle_timeout) never sees that response.
    h2.tls
        .write_all(&get_requests(0..1, "/v1/orders/delay/4000"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(f) = h2.next().await {
        kinds.push(f.kind);
    }
    assert!(!kinds.contains(&PING), "the gateway pinged: {kinds:?}");
    assert!(!kinds.contains(&HEADERS), "the response arrived: {kinds:?}");
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="stalled"} 1"#],
    )
    .await;
    h2.peer.refused_line("stalled").await;
}

#[tokio::test]
async fn an_http2_protocol_error_gets_goaway_and_is_counted() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let mut h2 = RawH2::open(&env, &gw).await;
    // Streams a client opens have odd ids; an even one is a connection error.
    h2.send(
        HEADERS,
        END_STREAM | END_HEADERS,
        2,
        &get_block("/v1/orders/even"),
    )
    .await
    .unwrap();
    let (goaway, _) = h2.until_closed().await;
    let goaway = goaway.expect("closed without GOAWAY");
    assert_eq!(goaway.error_code(), PROTOCOL_ERROR);
    assert_eq!(up.count(), 0);

    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_connection_refusals_total{reason="http2_protocol_error"} 1"#],
    )
    .await;
    h2.peer.refused_line("http2_protocol_error").await;
}

// === Request bodies ===

/// The standard configuration with a server-wide body limit of 1024 bytes, which the
/// `payments-write` route raises to 100 000.
fn body_limits(env: &Env, up: &Upstream) -> String {
    let yaml = limits(env, up, "    max_body_bytes: 1024\n");
    let route = "    scope: payments:write\n    upstream: orders\n";
    assert!(yaml.contains(route));
    yaml.replace(route, &format!("{route}    max_body_bytes: 100000\n"))
}

/// The `request` audit line of the one request to `path`, checked as a refusal for its size.
async fn body_too_large_line(path: &str) {
    let lines = audit().lines("http.path", path, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["event"], "request");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["reason"], "body_too_large");
    assert_eq!(line["http.status"], 413);
    assert_eq!(line["route"], "orders-read");
    assert_eq!(line["partner"], "acme");
}

fn post(path: &str, body: Vec<u8>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(path)
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_with_413_before_the_upstream_is_asked() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&body_limits(&env, &up)).await;

    // HTTP/1.1: only the head, announcing more than the limit.
    let (mut tls, _) = acme_conn(&env, &gw, b"http/1.1").await;
    tls.write_all(
        b"POST /v1/orders/count-body/declared HTTP/1.1\r\nHost: localhost\r\n\
          Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("still open after 5s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains(r#"{"error":"body_too_large""#), "{text}");

    // HTTP/2: the body sent along, its length in content-length.
    let a = call(
        gw.local_addr(),
        env.client(Some(&env.acme()), &[b"h2"]),
        post("/v1/orders/count-body/declared-h2", vec![b'a'; 5000]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 413);
    assert_eq!(a.reason(), "body_too_large");

    assert_eq!(up.count(), 0, "the upstream was asked");
    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_policy_denials_total{partner="acme",reason="body_too_large"} 2"#],
    )
    .await;
    body_too_large_line("/v1/orders/count-body/declared").await;
    body_too_large_line("/v1/orders/count-body/declared-h2").await;
}

#[tokio::test]
async fn a_streamed_body_growing_past_the_limit_is_cut_and_the_upstream_never_sees_it_whole() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&body_limits(&env, &up)).await;
    let (mut tls, _) = acme_conn(&env, &gw, b"http/1.1").await;
    let chunk = format!("258\r\n{}\r\n", "a".repeat(600)); // 0x258 = 600 bytes
    tls.write_all(
        format!(
            "POST /v1/orders/count-body/streamed HTTP/1.1\r\nHost: localhost\r\n\
             Transfer-Encoding: chunked\r\n\r\n{chunk}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The first 600 bytes are within the limit and on their way upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(Instant::now() < deadline, "the upstream was never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 600 more cross 1024.
    tls.write_all(chunk.as_bytes()).await.unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("still open after 5s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#"{"error":"body_too_large""#), "{text}");
    let bodies = up.bodies(1).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(
        bodies[0].is_err(),
        "the upstream saw a complete body: {bodies:?}"
    );

    env.still_serves(&gw).await;
    settled(
        &gw,
        &[r#"certgate_policy_denials_total{partner="acme",reason="body_too_large"} 1"#],
    )
    .await;
    body_too_large_line("/v1/orders/count-body/streamed").await;
}

#[tokio::test]
async fn a_request_body_that_breaks_mid_stream_is_counted_as_a_client_body_upstream_error() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&body_limits(&env, &up)).await;
    let (mut tls, _) = acme_conn(&env, &gw, b"http/1.1").await;
    tls.write_all(
        b"POST /v1/orders/count-body/broken HTTP/1.1\r\nHost: localhost\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // The first chunk is on its way upstream before the framing breaks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(Instant::now() < deadline, "the upstream was never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls.write_all(b"zz\r\nnot a chunk size\r\n").await.unwrap();
    closed_within(&mut tls, Duration::from_secs(5))
        .await
        .expect("still open after 5s");
    let bodies = up.bodies(1).await;
    assert!(
        bodies[0].is_err(),
        "the upstream saw a complete body: {bodies:?}"
    );

    env.still_serves(&gw).await;
    // The client broke its own body: the endpoint's health is not at stake, but the failed
    // exchange is counted under its own kind.
    settled(
        &gw,
        &[
            r#"certgate_upstream_errors_total{kind="client_body",upstream="orders"} 1"#,
            r#"certgate_upstream_errors_total{kind="exchange",upstream="orders"} 0"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn bodies_within_the_limit_arrive_intact_and_a_route_may_raise_it() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&body_limits(&env, &up)).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let a = call(
            gw.local_addr(),
            env.client(Some(&env.acme()), &[alpn]),
            post("/v1/orders/count-body/small", vec![b'a'; 1024]),
        )
        .await
        .unwrap();
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, r#"{"bytes":1024}"#)
        );
    }
    // payments-write accepts 100 000 bytes; globex holds its scope.
    let a = call(
        gw.local_addr(),
        env.client(Some(&env.globex()), &[b"h2"]),
        post("/v1/payments/count-body", vec![b'p'; 50_000]),
    )
    .await
    .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (200, r#"{"bytes":50000}"#)
    );
    assert_eq!(up.bodies(3).await, vec![Ok(1024), Ok(1024), Ok(50_000)]);
}

// === Upstream timeouts ===

/// A listener whose accept queue is full and never drained: the kernel drops further SYNs, so a
/// connect to it hangs until the connector's timeout. Returns it (keep it alive) and its address.
async fn blackhole() -> (tokio::net::TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => queued.push(s),
            _ => return (listener, queued, addr),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn upstream_connect_and_response_timeouts_are_answered_counted_and_audited() {
    let audit = audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let (_listener, _queued, hole) = blackhole().await;
    let yaml = env
        .config(up.addr, "")
        .replace("http://127.0.0.1:1", &format!("http://{hole}"));
    let gw = env.start(&yaml).await;
    let client = env.client(Some(&env.acme()), &[b"http/1.1"]);

    // The `orders` upstream answers after 3s; its request_timeout is 2s.
    let a = call(
        gw.local_addr(),
        client.clone(),
        get("/v1/orders/delay/3000"),
    )
    .await
    .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (504, "upstream_timeout")
    );
    // The `dead` upstream never completes a TCP handshake; its connect_timeout is 1s.
    let a = call(gw.local_addr(), client, get("/v1/broken/hole"))
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (502, "upstream_unavailable")
    );
    env.still_serves(&gw).await;

    let text = settled(
        &gw,
        &[
            r#"certgate_upstream_errors_total{kind="timeout",upstream="orders"} 1"#,
            r#"certgate_upstream_errors_total{kind="connect",upstream="dead"} 1"#,
            r#"certgate_requests_total{partner="acme",route="orders-read",status_class="5xx"} 1"#,
            r#"certgate_requests_total{partner="acme",route="broken",status_class="5xx"} 1"#,
        ],
    )
    .await;
    // Upstream failures come after policy allowed the request: not denials.
    assert!(!text.contains("certgate_policy_denials_total{"), "{text}");
    for (path, reason, upstream) in [
        ("/v1/orders/delay/3000", "upstream_timeout", "orders"),
        ("/v1/broken/hole", "upstream_unavailable", "dead"),
    ] {
        let lines = audit
            .wait(1, |v| {
                v["http.path"] == path && v["upstream"] == upstream && v["reason"] == reason
            })
            .await;
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(
            lines[0]["http.status"],
            if reason == "upstream_timeout" {
                504
            } else {
                502
            }
        );
    }
}

/// The handshake budget with one slot. A client that connects and sends nothing takes no slot; one
/// that sent its ClientHello and stalls gives its slot back once it has kept the handshake
/// waiting for a moment. A partner connecting meanwhile is served both times, long before the
/// stalled client's handshake timeout.
#[tokio::test]
async fn a_silent_or_stalled_handshake_holds_no_slot() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&limits(
            &env,
            &up,
            "    max_concurrent_handshakes: 1\n    handshake_timeout: 60s\n",
        ))
        .await;
    let admin = gw.admin_addr();
    let served_soon = || async {
        tokio::time::timeout(Duration::from_secs(20), env.still_serves(&gw))
            .await
            .expect("the partner waited for a slot a silent or stalled client held");
    };

    let _silent = TcpStream::connect(gw.local_addr()).await.unwrap();
    served_soon().await;

    let mut hello = Vec::new();
    let mut client = rustls::ClientConnection::new(
        env.client(Some(&env.acme()), &[b"http/1.1"]),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    client.write_tls(&mut hello).unwrap();
    let mut stalled = TcpStream::connect(gw.local_addr()).await.unwrap();
    stalled.write_all(&hello).await.unwrap();
    // The server's flight arrives: the stalled client's handshake had its slot and worked.
    let mut flight = [0u8; 5];
    stalled.read_exact(&mut flight).await.unwrap();
    assert_eq!(flight[0], 0x16, "a TLS handshake record");
    served_soon().await;

    let scraped = scrape_until(admin, &["certgate_tls_handshakes_queued 0"]).await;
    let steps = scraped
        .lines()
        .find_map(|l| l.strip_prefix("certgate_tls_handshake_queue_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(steps >= 3, "a slot for each of three handshakes: {steps}");
    // Neither handshake was refused or timed out: the stalled one is still in progress.
    assert!(
        scraped.contains("certgate_tls_handshakes_total{result=\"timeout\"} 0\n"),
        "{scraped}"
    );
}
