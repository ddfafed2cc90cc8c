//! How partner connections map onto upstream connections: an HTTP/1.1 partner connection keeps
//! one upstream connection of its own across requests, an HTTP/2 one one per stream in flight (up
//! to a cap), and both recover when the upstream closes one, times out or fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{connect, eventually, get, handshake_http, read, Env, Sender};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the upstream treats a connection after answering a request.
#[derive(Clone, Copy)]
enum After {
    /// Keep-alive: wait for the next request.
    KeepOpen,
    /// `Connection: close`, then close.
    AnnounceClose,
    /// Close without saying so, a moment after answering (an upstream's idle timeout).
    SilentClose,
}

/// A minimal HTTP/1.1 upstream on a real socket that counts the connections it accepted and the
/// requests it answered (`ok` bodies; `/v1/orders/delay/MS` waits first).
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingUpstream {
    async fn start(after: After) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, ans, opn) = (accepted.clone(), answered.clone(), open.clone());
        let task = tokio::spawn(async move {
            // Owned by the accept task, so aborting it closes every connection too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                acc.fetch_add(1, Ordering::SeqCst);
                opn.fetch_add(1, Ordering::SeqCst);
                let (ans, opn) = (ans.clone(), opn.clone());
                connections.spawn(async move {
                    serve(tcp, after, ans).await;
                    opn.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            answered,
            open,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Connections the gateway has not closed yet.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn serve(mut tcp: TcpStream, after: After, answered: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // Requests in these tests carry no body: the head ends the request.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if let Some(ms) = path.strip_prefix("/v1/orders/delay/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if let Some(ms) = path.strip_prefix("/v1/orders/pause/") {
            // Half the body, a pause, the other half: a response still streaming.
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            if tcp.write_all(b"ok").await.is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let close = matches!(after, After::AnnounceClose);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
            if close { "connection: close\r\n" } else { "" }
        );
        if tcp.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
        match after {
            After::KeepOpen => {}
            After::AnnounceClose => return,
            After::SilentClose => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }
}

async fn partner(env: &Env, gw: &certgate::runtime::Gateway) -> Sender {
    handshake_http(env.acme_tls(gw).await).await.unwrap()
}

async fn ok(sender: &mut Sender, path: &str) -> bool {
    let answer = read(sender.send(get(path)).await.unwrap()).await;
    answer.status == 200 && answer.body == "ok"
}

#[tokio::test]
async fn a_keep_alive_partner_connection_keeps_one_upstream_connection() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    // The first request goes through the shared pool (one upstream connection), the rest over
    // the partner connection's own (a second one), kept across all of them.
    let mut first = partner(&env, &gw).await;
    for i in 0..20 {
        assert!(ok(&mut first, "/v1/orders/x").await, "request {i}");
    }
    assert_eq!(up.accepted(), 2, "20 requests on one partner connection");

    // A second partner connection: its first request reuses the pooled upstream connection; its
    // second gets an upstream connection of its own, not the first partner's.
    let mut second = partner(&env, &gw).await;
    assert!(ok(&mut second, "/v1/orders/y").await);
    assert_eq!(up.accepted(), 2, "the pooled connection was reused");
    assert!(ok(&mut second, "/v1/orders/y").await);
    assert!(ok(&mut first, "/v1/orders/z").await);
    assert_eq!(up.accepted(), 3);
    assert_eq!(up.answered(), 23);
}

#[tokio::test]
async fn one_request_per_partner_connection_costs_no_upstream_connection_each() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;
    for i in 0..10 {
        let mut sender = partner(&env, &gw).await;
        assert!(ok(&mut sender, "/v1/orders/once").await, "connection {i}");
    }
    assert_eq!(
        up.accepted(),
        1,
        "one pooled upstream connection served them all"
    );
}

#[tokio::test]
async fn an_idle_partner_connection_gives_its_upstream_connection_back() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    // Idle checks every 2 s: the first that finds the partner idle for 2 s closes its kept
    // upstream connection, the next one (idle 4 s) the partner connection, 2 s later at the
    // earliest.
    let config = env
        .config(up.addr, "")
        .replace("server:\n", "server:\n  limits:\n    idle_timeout: 4s\n");
    let gw = env.start(&config).await;
    let mut sender = partner(&env, &gw).await;
    assert!(ok(&mut sender, "/v1/orders/x").await);
    assert!(ok(&mut sender, "/v1/orders/x").await);
    assert_eq!(up.accepted(), 2);
    assert_eq!(up.open(), 2);
    assert!(
        eventually(Duration::from_secs(6), || up.open() == 1).await,
        "the kept upstream connection was not closed"
    );
    // The partner connection itself is still open and served.
    assert!(ok(&mut sender, "/v1/orders/x").await);

    // A response that pauses past the idle timeout is streaming, not idle: its upstream
    // connection is not taken away under it (the idle checks come and go during the pause; the
    // idle close lets the response finish).
    assert!(ok(&mut sender, "/v1/orders/x").await);
    let paused = read(sender.send(get("/v1/orders/pause/5000")).await.unwrap()).await;
    assert_eq!(
        (paused.status.as_u16(), paused.body.as_str()),
        (200, "okok")
    );
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_answer_gets_a_new_connection_per_request() {
    let env = Env::new();
    let up = CountingUpstream::start(After::AnnounceClose).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let mut sender = partner(&env, &gw).await;
    for i in 0..5 {
        assert!(ok(&mut sender, "/v1/orders/x").await, "request {i}");
    }
    assert_eq!(up.accepted(), 5);
    assert_eq!(up.answered(), 5);
}

#[tokio::test]
async fn an_upstream_idle_close_is_recovered_from_on_the_next_request() {
    let env = Env::new();
    let up = CountingUpstream::start(After::SilentClose).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let mut sender = partner(&env, &gw).await;
    for i in 0..3 {
        assert!(ok(&mut sender, "/v1/orders/x").await, "request {i}");
        // Past the upstream's close: the gateway's kept connection is dead by now.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.accepted(), 3);
    assert_eq!(up.answered(), 3);
}

#[tokio::test]
async fn a_timed_out_exchange_does_not_poison_the_partner_connection() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let mut sender = partner(&env, &gw).await;
    assert!(ok(&mut sender, "/v1/orders/x").await);
    // request_timeout is 2 s in the test config.
    let slow = read(sender.send(get("/v1/orders/delay/3000")).await.unwrap()).await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.reason(), "upstream_timeout");
    // The late answer must not be taken for the next request's: a fresh connection serves it
    // (the pooled one served the first request, the partner's own the slow one).
    assert!(ok(&mut sender, "/v1/orders/after").await);
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn an_upstream_that_goes_away_and_comes_back_is_reached_again() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let addr = up.addr;
    let gw = env.start(&env.config(addr, "")).await;

    let mut sender = partner(&env, &gw).await;
    assert!(ok(&mut sender, "/v1/orders/x").await);
    drop(up);
    // The aborted upstream task drops its listener and connections.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = read(sender.send(get("/v1/orders/x")).await.unwrap()).await;
    assert_eq!(down.status, 502, "{}", down.body);

    let listener = TcpListener::bind(addr).await.unwrap();
    let back = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(tcp, After::KeepOpen, Arc::default()).await;
    });
    assert!(ok(&mut sender, "/v1/orders/x").await);
    back.abort();
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_partner(env: &Env, gw: &certgate::runtime::Gateway) -> H2Sender {
    let client = env.client(Some(&env.acme()), &[b"h2"]);
    let tls = connect(gw.local_addr(), "localhost", client).await.unwrap();
    match handshake_http(tls).await.unwrap() {
        Sender::H2(sender) => sender,
        Sender::H1(_) => panic!("h2 was not negotiated"),
    }
}

fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn h2_ok(sender: &H2Sender, path: &str) -> bool {
    let answer = read(sender.clone().send_request(h2_get(path)).await.unwrap()).await;
    answer.status == 200 && answer.body == "ok"
}

/// `n` requests in flight at once on one HTTP/2 connection, each answered after `ms`.
async fn h2_concurrent(sender: &H2Sender, n: usize, ms: u64) {
    let path = format!("/v1/orders/delay/{ms}");
    let answers = futures_util::future::join_all((0..n).map(|_| h2_ok(sender, &path))).await;
    assert!(answers.iter().all(|ok| *ok), "{answers:?}");
}

#[tokio::test]
async fn an_http2_partner_connection_keeps_one_upstream_connection_per_stream_in_flight() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    // The first request goes through the shared pool; the rest, one at a time, over one upstream
    // connection of the partner connection's own.
    let sender = h2_partner(&env, &gw).await;
    for i in 0..20 {
        assert!(h2_ok(&sender, "/v1/orders/x").await, "request {i}");
    }
    assert_eq!(up.accepted(), 2, "20 requests, one stream at a time");

    // Four streams at once need four; four more at once reuse them.
    h2_concurrent(&sender, 4, 300).await;
    assert_eq!(up.accepted(), 5);
    h2_concurrent(&sender, 4, 300).await;
    assert_eq!(
        up.accepted(),
        5,
        "the partner's own connections were reused"
    );
    assert_eq!(up.answered(), 28);

    // They are the partner connection's: closing it closes them, the pooled one stays.
    drop(sender);
    assert!(
        eventually(Duration::from_secs(5), || up.open() == 1).await,
        "{} upstream connections still open",
        up.open()
    );
}

#[tokio::test]
async fn an_http2_partner_connection_owns_at_most_eight_upstream_connections() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let sender = h2_partner(&env, &gw).await;
    assert!(h2_ok(&sender, "/v1/orders/x").await);
    // Twelve streams at once: eight over the partner's own connections, four through the pool.
    h2_concurrent(&sender, 12, 500).await;
    let accepted = up.accepted();
    drop(sender);
    // Closing the partner connection closes its own; the pool's stay open.
    assert!(
        eventually(Duration::from_secs(5), || up.open() == accepted - 8).await,
        "{accepted} accepted, {} still open: the partner owned more or fewer than 8",
        up.open()
    );
}

#[tokio::test]
async fn a_reset_http2_stream_does_not_leave_its_upstream_connection_for_reuse() {
    let env = Env::new();
    let up = CountingUpstream::start(After::KeepOpen).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let sender = h2_partner(&env, &gw).await;
    assert!(h2_ok(&sender, "/v1/orders/x").await);
    assert!(h2_ok(&sender, "/v1/orders/x").await);
    assert_eq!((up.accepted(), up.open()), (2, 2));

    // Half the body, then the partner resets the stream: the rest of that response is still on
    // its way, so the upstream connection is closed, not kept.
    let response = sender
        .clone()
        .send_request(h2_get("/v1/orders/pause/300"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    assert!(
        eventually(Duration::from_secs(5), || up.open() == 1).await,
        "the cut response's upstream connection is still open"
    );
    // The next request gets a new connection and its own answer, not the rest of the last one.
    assert!(h2_ok(&sender, "/v1/orders/x").await);
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn an_upstream_idle_close_is_recovered_from_on_http2_too() {
    let env = Env::new();
    let up = CountingUpstream::start(After::SilentClose).await;
    let gw = env.start(&env.config(up.addr, "")).await;

    let sender = h2_partner(&env, &gw).await;
    for i in 0..3 {
        assert!(h2_ok(&sender, "/v1/orders/x").await, "request {i}");
        // Past the upstream's close: the gateway's kept connection is dead by now.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.accepted(), 3);
    assert_eq!(up.answered(), 3);
}
