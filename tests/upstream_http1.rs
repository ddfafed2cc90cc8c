//! How the gateway forwards HTTP/1.1 exchanges to an HTTP/1.1 upstream, end to end over real
//! sockets: response framing (chunked, Content-Length, close-delimited, HTTP/1.0, bodiless
//! answers, interim responses), request bodies, and broken upstream responses.
//!
//! An HTTP/1.1 partner connection's first request goes through the pooled client; from its second
//! on it uses the partner connection's own ("dedicated") upstream connection
//! (`src/upstream/dedicated.rs`). That second path is what these tests pin: every partner connection
//! first sends a plain warm-up GET (served by the pool), so the requests under test take the
//! dedicated path. Where the partner connection survives the case, the case request is sent twice
//! and an ordinary request follows on the same partner connection, checked to get its own answer,
//! and the upstream's record says over which upstream connection each request came; where it
//! does not survive (a broken or refused exchange), a new partner connection is checked instead.
//!
//! The upstream is a scripted raw HTTP/1.1 server: it parses each request (decoding chunked
//! bodies), records it with the number of the connection it came on, and answers with the bytes
//! scripted for its path (writes, pauses, a close), or `saw {target}` for any other path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Env;
use http::{HeaderMap, Request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// The bound on every wait: a regression fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

// === The scripted upstream ===

/// One request as the upstream parsed it.
#[derive(Debug, Clone)]
struct Seen {
    /// The number of the connection it came on, counting accepted connections from 0.
    conn: usize,
    method: String,
    target: String,
    /// Names lower-cased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, name: &str) -> &str {
        match self.all(name)[..] {
            [value] => value,
            ref values => panic!("{name}: {values:?} in {:?}", self.headers),
        }
    }
}

#[derive(Clone)]
enum Step {
    Write(Bytes),
    Pause(u64),
    /// Shuts the sending side, drains what the gateway still sends (a lingering close, so
    /// unread request bytes do not turn the close into a reset), then drops the connection.
    Close,
    /// Drops the connection with a reset (`SO_LINGER` 0), as a crashing upstream's kernel would.
    Reset,
}

/// How the upstream answers one path.
#[derive(Clone)]
struct Reply {
    /// Whether the request body is read before answering (else only the head is).
    read_body: bool,
    steps: Vec<Step>,
}

impl Reply {
    fn raw(bytes: impl Into<Bytes>) -> Reply {
        Reply::steps(vec![Step::Write(bytes.into())])
    }

    fn steps(steps: Vec<Step>) -> Reply {
        Reply {
            read_body: true,
            steps,
        }
    }
}

fn write(bytes: impl Into<Bytes>) -> Step {
    Step::Write(bytes.into())
}

/// A complete `200 OK` with a `content-length` body.
fn ok_with(body: &[u8]) -> Vec<u8> {
    let mut raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body);
    raw
}

struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Vec<(&str, Reply)>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<HashMap<String, Reply>> = Arc::new(
            script
                .into_iter()
                .map(|(path, reply)| (path.to_owned(), reply))
                .collect(),
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (acc, record) = (accepted.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Owned by the accept task, so aborting it closes every connection too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let conn = acc.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(tcp, conn, script.clone(), record.clone()));
            }
        });
        Scripted {
            addr,
            accepted,
            seen,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection each request came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.seen().iter().map(|s| s.conn).collect()
    }

    /// The requests to `target`.
    fn to(&self, target: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target == target)
            .collect()
    }
}

async fn serve(
    mut tcp: TcpStream,
    conn: usize,
    script: Arc<HashMap<String, Reply>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(line_end) = fill_until(&mut tcp, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 4);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let path = target.split('?').next().unwrap_or_default();
        let reply = script
            .get(path)
            .cloned()
            .unwrap_or_else(|| Reply::raw(ok_with(format!("saw {target}").as_bytes())));
        let body = if reply.read_body {
            match read_body(&mut tcp, &mut buf, &headers).await {
                Some(body) => body,
                None => return,
            }
        } else {
            Vec::new()
        };
        seen.lock().unwrap().push(Seen {
            conn,
            method,
            target,
            headers,
            body,
        });
        for step in reply.steps {
            match step {
                Step::Write(bytes) => {
                    if tcp.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Close => {
                    let _ = tcp.shutdown().await;
                    let mut sink = vec![0u8; 64 * 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                    return;
                }
                Step::Reset => {
                    let _ = tcp.set_zero_linger();
                    return;
                }
            }
        }
    }
}

/// Reads until `buf` holds `needle`; its position, or `None` when the connection ends first.
async fn fill_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i);
        }
        read_more(tcp, buf).await?;
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill_to(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    while buf.len() < n {
        read_more(tcp, buf).await?;
    }
    Some(())
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// The request body, framed by `content-length` or decoded from `transfer-encoding: chunked`.
async fn read_body(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    headers: &[(String, String)],
) -> Option<Vec<u8>> {
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        fill_to(tcp, buf, length).await?;
        return Some(buf.drain(..length).collect());
    }
    let mut body = Vec::new();
    loop {
        let end = fill_until(tcp, buf, b"\r\n").await?;
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 2);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                let end = fill_until(tcp, buf, b"\r\n").await?;
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        fill_to(tcp, buf, size + 2).await?;
        assert_eq!(&buf[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

// === The partner side ===

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// An HTTP/1.1 mTLS connection to the gateway as `acme`.
struct Partner(SendRequest<Body>);

/// A response read to its end, or to where its body broke.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Got {
    fn text(&self) -> String {
        let body = self.body.as_ref().expect("the response body broke");
        String::from_utf8_lossy(body).into_owned()
    }
}

async fn partner(env: &Env, gw: &certgate::runtime::Gateway) -> Partner {
    let tls = within("TLS handshake", env.acme_tls(gw)).await;
    let (sender, conn) = within(
        "HTTP handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    Partner(sender)
}

/// A partner connection whose first request, which the pool serves, is behind it: what it sends
/// next goes over its dedicated upstream connection.
async fn dedicated(env: &Env, gw: &certgate::runtime::Gateway) -> Partner {
    let mut p = partner(env, gw).await;
    p.expect_own("/v1/orders/warm-up").await;
    p
}

/// The scripted upstream and a gateway in front of it (the standard test configuration).
async fn setup(script: Vec<(&str, Reply)>) -> (Env, Scripted, certgate::runtime::Gateway) {
    let up = Scripted::start(script).await;
    let env = Env::new();
    let gw = within("gateway start", env.start(&env.config(up.addr, ""))).await;
    (env, up, gw)
}

fn request(method: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(body)
        .unwrap()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

impl Partner {
    /// Sends `req` and reads the answer; `Err` when no response head came back.
    async fn try_send(&mut self, req: Request<Body>) -> Result<Got, String> {
        within("connection ready", self.0.ready())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let resp = within("response head", self.0.send_request(req))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = within("response body", body.collect())
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Ok(Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    async fn send(&mut self, req: Request<Body>) -> Got {
        self.try_send(req).await.unwrap()
    }

    async fn get(&mut self, path: &str) -> Got {
        self.send(request("GET", path, empty())).await
    }

    /// Asserts that a plain GET gets the upstream's own answer for it.
    async fn expect_own(&mut self, path: &str) {
        let got = self.get(path).await;
        assert_eq!((got.status, got.text()), (200, format!("saw {path}")));
    }
}

/// A partner writing HTTP/1.1 by hand on its mTLS connection, for what hyper's client would hide:
/// it keeps a connection after an HTTP/1.0 answer, and reports a failed body write instead of an
/// answer that arrived while it was still sending.
struct Raw {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(env: &Env, gw: &certgate::runtime::Gateway) -> Raw {
        Raw {
            tls: within("TLS handshake", env.acme_tls(gw)).await,
            buf: Vec::new(),
        }
    }

    /// Sends a GET and reads its answer, framed by its `content-length`: (head, body).
    async fn get(&mut self, path: &str) -> (String, String) {
        let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        within("request write", self.tls.write_all(req.as_bytes()))
            .await
            .unwrap();
        let head_end = within("response head", self.fill_until(b"\r\n\r\n")).await;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        within("response body", async {
            while self.buf.len() < length {
                self.read_more().await;
            }
        })
        .await;
        let body = String::from_utf8_lossy(&self.buf[..length]).into_owned();
        self.buf.drain(..length);
        (head, body)
    }

    async fn fill_until(&mut self, needle: &[u8]) -> usize {
        loop {
            if let Some(i) = self.buf.windows(needle.len()).position(|w| w == needle) {
                return i;
            }
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the partner connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// === Response framing ===

#[tokio::test]
async fn a_chunked_response_with_a_chunk_extension_arrives_whole_and_the_connection_is_reused() {
    let raw = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
               5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\n\r\n";
    let (env, up, gw) = setup(vec![("/v1/orders/chunked", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/chunked").await;
        assert_eq!((got.status, got.text()), (200, "hello, world".to_owned()));
    }
    p.expect_own("/v1/orders/after").await;
    // The warm-up on the pooled connection, the rest on one dedicated connection.
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

#[tokio::test]
async fn a_chunked_response_with_trailer_fields_arrives_whole_and_the_connection_is_reused() {
    let raw = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
               4\r\nwith\r\n9\r\n trailers\r\n0\r\nx-checksum: abc123\r\nx-other: 1\r\n\r\n";
    let (env, up, gw) = setup(vec![("/v1/orders/trailers", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/trailers").await;
        assert_eq!((got.status, got.text()), (200, "with trailers".to_owned()));
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 1, 1]);
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn a_content_length_body_written_in_pieces_arrives_whole() {
    let reply = Reply::steps(vec![
        write("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n01234"),
        Step::Pause(20),
        write("56789"),
        Step::Pause(20),
        write("abcde"),
    ]);
    let (env, up, gw) = setup(vec![("/v1/orders/pieces", reply)]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/pieces").await;
        assert_eq!(
            (got.status, got.text()),
            (200, "0123456789abcde".to_owned())
        );
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

#[tokio::test]
async fn a_head_answer_has_no_body_keeps_its_content_length_and_does_not_desync() {
    let raw = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ncontent-type: text/plain\r\n\r\n";
    let (env, up, gw) = setup(vec![("/v1/orders/head", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.send(request("HEAD", "/v1/orders/head", empty())).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "");
        assert_eq!(got.headers["content-length"], "10");
    }
    // Had the gateway waited for 10 body bytes, this answer would be taken for them.
    p.expect_own("/v1/orders/after-head").await;
    assert_eq!(up.conns(), [0, 1, 1, 1]);
    assert!(up.to("/v1/orders/head").iter().all(|s| s.method == "HEAD"));
}

#[tokio::test]
async fn no_content_and_not_modified_answers_pass_without_a_body_and_keep_the_connection() {
    let (env, up, gw) = setup(vec![
        (
            "/v1/orders/no-content",
            Reply::raw("HTTP/1.1 204 No Content\r\nx-case: 204\r\n\r\n"),
        ),
        (
            "/v1/orders/not-modified",
            Reply::raw("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        ),
    ])
    .await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/no-content").await;
        assert_eq!((got.status, got.text()), (204, String::new()));
        assert_eq!(got.headers["x-case"], "204");
        let got = p.get("/v1/orders/not-modified").await;
        assert_eq!((got.status, got.text()), (304, String::new()));
        assert_eq!(got.headers["etag"], "\"v1\"");
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 1, 1, 1, 1]);
}

#[tokio::test]
async fn a_close_delimited_body_arrives_whole_and_the_next_request_opens_a_new_connection() {
    let body = noise(100_000, 6);
    let reply = Reply::steps(vec![
        write("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n"),
        write(body[..50_000].to_vec()),
        Step::Pause(20),
        write(body[50_000..].to_vec()),
        Step::Close,
    ]);
    let (env, up, gw) = setup(vec![("/v1/orders/until-close", reply)]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/until-close").await;
        assert_eq!(got.status, 200);
        assert_eq!(sha256(got.body.as_ref().unwrap()), sha256(&body));
    }
    p.expect_own("/v1/orders/after").await;
    // Each close-delimited answer used up its connection.
    assert_eq!(up.conns(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn an_http10_answer_without_keep_alive_is_delivered_and_its_connection_not_reused() {
    // The upstream closes only a moment after the answer: a gateway that kept the connection
    // would send the next request into it and get no answer.
    let reply = Reply::steps(vec![
        write("HTTP/1.0 200 OK\r\ncontent-length: 11\r\n\r\nhello 1.0!!"),
        Step::Pause(300),
        Step::Close,
    ]);
    let (env, up, gw) = setup(vec![("/v1/orders/http10", reply)]).await;
    // By hand, to see the status line: the version is hop-by-hop, so the partner gets the
    // gateway's own HTTP/1.1 (an `HTTP/1.0` status line without keep-alive would tell the partner
    // its connection is done), on the pooled first request as on the dedicated ones.
    let mut p = Raw::connect(&env, &gw).await;
    for _ in 0..3 {
        let (head, body) = p.get("/v1/orders/http10").await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, "hello 1.0!!");
    }
    let (_, after) = p.get("/v1/orders/after").await;
    assert_eq!(after, "saw /v1/orders/after");
    assert_eq!(up.conns(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn interim_100_and_103_answers_are_skipped_for_the_final_answer() {
    let reply = Reply::steps(vec![
        write("HTTP/1.1 100 Continue\r\n\r\n"),
        Step::Pause(10),
        write("HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n"),
        Step::Pause(10),
        write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nfinal"),
    ]);
    let (env, up, gw) = setup(vec![("/v1/orders/interim", reply)]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/interim").await;
        assert_eq!((got.status, got.text()), (200, "final".to_owned()));
        assert_eq!(got.headers["x-final"], "yes");
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

#[tokio::test]
async fn a_large_content_length_response_arrives_byte_for_byte() {
    let body = noise(8 << 20, 13);
    let (env, up, gw) = setup(vec![("/v1/orders/large", Reply::raw(ok_with(&body)))]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/large").await;
        assert_eq!(got.status, 200);
        let received = got.body.as_ref().unwrap();
        assert_eq!(received.len(), body.len());
        assert_eq!(sha256(received), sha256(&body));
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

// === Request bodies and heads ===

#[tokio::test]
async fn a_content_length_request_body_reaches_the_upstream_byte_for_byte() {
    let (env, up, gw) = setup(vec![]).await;
    let mut p = dedicated(&env, &gw).await;
    let body = noise(1 << 20, 9);
    for _ in 0..2 {
        let got = p
            .send(request("POST", "/v1/orders/upload", full(body.clone())))
            .await;
        assert_eq!(
            (got.status, got.text()),
            (200, "saw /v1/orders/upload".to_owned())
        );
    }
    p.expect_own("/v1/orders/after").await;
    let seen = up.to("/v1/orders/upload");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.one("content-length"), "1048576");
        assert_eq!(s.body.len(), body.len());
        assert_eq!(sha256(&s.body), sha256(&body));
    }
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

#[tokio::test]
async fn a_streamed_request_body_of_unknown_length_reaches_the_upstream_chunked_and_whole() {
    let (env, up, gw) = setup(vec![]).await;
    let mut p = dedicated(&env, &gw).await;
    let sizes = [1, 7, 1000, 16_384, 70_000, 3];
    let mut expected = Vec::new();
    for round in 0..2u64 {
        let pieces: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| noise(*n, round * 100 + i as u64))
            .collect();
        expected.push(pieces.concat());
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for piece in pieces {
                if tx.send(piece.into()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(data)), rx))
        });
        let body = StreamBody::new(frames).boxed();
        let got = p.send(request("POST", "/v1/orders/stream", body)).await;
        assert_eq!(
            (got.status, got.text()),
            (200, "saw /v1/orders/stream".to_owned())
        );
    }
    p.expect_own("/v1/orders/after").await;
    let seen = up.to("/v1/orders/stream");
    assert_eq!(seen.len(), 2);
    for (s, expected) in seen.iter().zip(&expected) {
        assert_eq!(s.one("transfer-encoding"), "chunked");
        assert!(s.all("content-length").is_empty(), "{:?}", s.headers);
        assert_eq!(s.body.len(), expected.len());
        assert_eq!(sha256(&s.body), sha256(expected));
    }
    assert_eq!(up.conns(), [0, 1, 1, 1]);
}

#[tokio::test]
async fn an_early_413_to_a_large_upload_reaches_the_partner_while_it_is_still_sending() {
    let reply = Reply {
        read_body: false,
        steps: vec![
            write(
                "HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\n\
                 content-length: 9\r\n\r\ntoo large",
            ),
            Step::Close,
        ],
    };
    let (env, up, gw) = setup(vec![("/v1/orders/refused-upload", reply)]).await;
    // By hand, reading while still writing: the gateway answers 413 and closes the partner
    // connection without reading the rest of the body, and hyper's client then reports its
    // failed body write (broken pipe) instead of the answer.
    let mut p = Raw::connect(&env, &gw).await;
    let (_, warm_up) = p.get("/v1/orders/warm-up").await;
    assert_eq!(warm_up, "saw /v1/orders/warm-up");
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(p.tls);
    let upload = tokio::spawn(async move {
        let head = "POST /v1/orders/refused-upload HTTP/1.1\r\nhost: localhost\r\n\
                    content-length: 8388608\r\n\r\n";
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&noise(8 << 20, 10)).await
    });
    let mut answer = Vec::new();
    let read = within("the 413", rd.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer:?} ({read:?})");
    assert!(answer.ends_with("\r\n\r\ntoo large"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Whether the rest of the body got through does not matter, only that the upload ended.
    let _ = within("the upload", upload).await;
    assert_eq!(up.to("/v1/orders/refused-upload").len(), 1);
    // A new partner connection is served, on both paths.
    dedicated(&env, &gw)
        .await
        .expect_own("/v1/orders/after")
        .await;
}

#[tokio::test]
async fn the_upstream_sees_the_request_head_unchanged_without_hop_by_hop_headers() {
    let (env, up, gw) = setup(vec![]).await;
    let mut p = dedicated(&env, &gw).await;
    let target = "/v1/orders/head-check?a=1&b=two%20words";
    for _ in 0..2 {
        let req = Request::get(target)
            .header("host", "localhost")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "named by connection")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "example/1")
            .header("proxy-connection", "keep-alive")
            .header("x-custom", "kept")
            .body(empty())
            .unwrap();
        let got = p.send(req).await;
        assert_eq!((got.status, got.text()), (200, format!("saw {target}")));
    }
    let seen = up.to(target);
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.one("host"), "localhost");
        assert_eq!(s.one("x-custom"), "kept");
        for hop in ["keep-alive", "te", "upgrade", "proxy-connection", "x-hop"] {
            assert!(
                s.all(hop).is_empty(),
                "{hop} reached the upstream: {:?}",
                s.headers
            );
        }
        // The gateway may speak for its own hop, but nothing of the partner's Connection passes.
        for connection in s.all("connection") {
            assert!(
                connection.eq_ignore_ascii_case("keep-alive"),
                "{connection}"
            );
        }
        assert_eq!(s.one("x-partner-id"), "acme");
        assert_eq!(s.one("x-forwarded-for"), "127.0.0.1");
        assert_eq!(s.one("x-forwarded-proto"), "https");
        assert_eq!(s.one("forwarded"), "for=127.0.0.1;proto=https");
        assert!(s.one("client-cert").starts_with(':'), "{:?}", s.headers);
    }
    assert_eq!(up.conns(), [0, 1, 1]);
}

// === Broken responses ===

/// Asserts that `path` is answered 502 `upstream_error`, twice, then that an ordinary request on
/// the same partner connection is served.
async fn expect_bad_gateway(p: &mut Partner, path: &str) {
    for _ in 0..2 {
        let got = p.get(path).await;
        assert_eq!(got.status, 502, "{:?}", got.body);
        let json: serde_json::Value = serde_json::from_str(&got.text()).unwrap();
        assert_eq!(json["error"], "upstream_error");
    }
    p.expect_own("/v1/orders/after").await;
}

#[tokio::test]
async fn a_status_line_that_is_not_http_is_a_bad_gateway() {
    let (env, up, gw) = setup(vec![("/v1/orders/garbage", Reply::raw("garbage\r\n\r\n"))]).await;
    let mut p = dedicated(&env, &gw).await;
    expect_bad_gateway(&mut p, "/v1/orders/garbage").await;
    // The upstream kept each connection open; the gateway did not use one again.
    assert_eq!(up.conns(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn a_kept_connection_that_fails_before_answering_is_retried_for_idempotent_requests_only() {
    // The upstream reads the request and closes without a word, as when its idle timeout races
    // the request. Safe to send again only if sending twice means the same as once.
    let vanish = || Reply::steps(vec![Step::Close]);
    let (env, up, gw) = setup(vec![
        ("/v1/orders/vanish-get", vanish()),
        // The same race seen as a reset instead of a close.
        ("/v1/orders/reset-get", Reply::steps(vec![Step::Reset])),
        ("/v1/orders/vanish-post", vanish()),
    ])
    .await;
    for path in ["/v1/orders/vanish-get", "/v1/orders/reset-get"] {
        let mut p = dedicated(&env, &gw).await;
        // Opens the partner connection's own upstream connection, which the next request reuses.
        p.expect_own("/v1/orders/first").await;
        let kept = up.to("/v1/orders/first").last().unwrap().conn;
        assert_eq!(p.get(path).await.status, 502);
        let conns: Vec<usize> = up.to(path).iter().map(|s| s.conn).collect();
        assert_eq!(conns.len(), 2, "{path}: sent {conns:?}");
        assert_eq!(conns[0], kept, "{path}: first on the kept connection");
        assert_ne!(conns[1], kept, "{path}: then once on a new one");
    }

    let mut p = dedicated(&env, &gw).await;
    p.expect_own("/v1/orders/first").await;
    let post = p
        .send(request("POST", "/v1/orders/vanish-post", empty()))
        .await;
    assert_eq!(post.status, 502);
    assert_eq!(
        up.to("/v1/orders/vanish-post").len(),
        1,
        "a POST is never sent twice"
    );
}

#[tokio::test]
async fn two_different_content_lengths_are_a_bad_gateway() {
    let raw = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello";
    let (env, up, gw) = setup(vec![("/v1/orders/two-lengths", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    expect_bad_gateway(&mut p, "/v1/orders/two-lengths").await;
    assert_eq!(up.conns(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn a_response_head_over_the_size_limit_is_a_bad_gateway() {
    // 1 MiB in 50 fields (under the 100-field limit, so it is the size that counts; the limit on
    // the dedicated path is 64 KiB, on the pooled one hyper's read buffer, about 400 KiB).
    let mut raw = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..50 {
        raw.push_str(&format!("x-big-{i}: {}\r\n", "h".repeat(20 * 1024)));
    }
    raw.push_str("content-length: 2\r\n\r\nok");
    let (env, _up, gw) = setup(vec![("/v1/orders/huge-head", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    expect_bad_gateway(&mut p, "/v1/orders/huge-head").await;
}

#[tokio::test]
async fn bytes_after_a_content_length_body_are_never_taken_for_the_next_answer() {
    let raw = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
               HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!";
    let (env, up, gw) = setup(vec![("/v1/orders/extra-bytes", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    for i in 0..3 {
        let got = p.get("/v1/orders/extra-bytes").await;
        assert_eq!(
            (got.status, got.text()),
            (200, "ok".to_owned()),
            "round {i}"
        );
        p.expect_own(&format!("/v1/orders/after/{i}")).await;
    }
    // A connection that sent bytes nobody asked for is not trusted again: each next request
    // went over a new one.
    assert_eq!(up.conns(), [0, 1, 2, 2, 3, 3, 4]);
}

#[tokio::test]
async fn an_answer_with_both_transfer_encoding_and_content_length_is_read_as_chunked_and_ends_reuse(
) {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the message may be an attempt
    // at response splitting, so the connection is not trusted with another exchange.
    let raw = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 50\r\n\r\n\
               5\r\nhello\r\n0\r\n\r\n";
    let (env, up, gw) = setup(vec![("/v1/orders/te-and-cl", Reply::raw(raw))]).await;
    let mut p = dedicated(&env, &gw).await;
    for _ in 0..2 {
        let got = p.get("/v1/orders/te-and-cl").await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.body.as_ref().unwrap()[..], b"hello");
        // The upstream's length would have framed the partner's copy wrongly: it is gone.
        assert_ne!(
            got.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"50"[..])
        );
    }
    p.expect_own("/v1/orders/after").await;
    assert_eq!(up.conns(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn an_upstream_closing_mid_body_breaks_the_partner_response() {
    let audit = common::audit();
    let reply = Reply::steps(vec![
        write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234"),
        Step::Pause(50),
        Step::Close,
    ]);
    let (env, _up, gw) = setup(vec![("/v1/orders/cut-short", reply)]).await;
    for _ in 0..2 {
        // The partner connection does not survive a broken response: a new one each round.
        let mut p = dedicated(&env, &gw).await;
        let got = p.get("/v1/orders/cut-short").await;
        assert_eq!(got.status, 200, "the head had already been forwarded");
        match &got.body {
            Err(_) => {}
            Ok(body) => assert!(
                body.len() < 10,
                "a truncated body looked complete: {body:?}"
            ),
        }
    }
    let lines = audit.lines("http.path", "/v1/orders/cut-short", 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["body.complete"], false, "{line}");
    }
    dedicated(&env, &gw)
        .await
        .expect_own("/v1/orders/after")
        .await;
}
