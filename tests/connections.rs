//! A partner connection's whole life under its supervisor: an upgraded WebSocket tunnel through
//! the real gateway to a real upstream is cut on revocation, closed on drain and when idle, holds
//! its connection permit and is audited when it ends; a `certgate serve` process whose drain
//! timeout cuts a request exits non-zero and audits that request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certgate::config::model::BundleId;
use certgate::revocation::{issuer_and_serial, Verdict};
use certgate::runtime::{Drained, Gateway};
use common::openssl::{replace_by_rename, OpenSslCa};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::UnixTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

// === helpers ===

/// `extra` lines under `server:` (two-space indent), e.g. `"  drain_timeout: 1s\n"`.
fn with_server(yaml: &str, extra: &str) -> String {
    yaml.replacen("\nserver:\n", &format!("\nserver:\n{extra}"), 1)
}

/// A WebSocket through `gw` as `leaf`, with one message echoed to prove the tunnel carries data.
/// Also returns the client's address, which names the connection in the audit log.
async fn websocket(env: &Env, gw: &Gateway, leaf: &Leaf) -> (Ws, SocketAddr) {
    let tls = env.tls_as(gw, leaf).await;
    let client = tls.get_ref().0.local_addr().unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/v1/orders/live", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send("hello".into()).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "echo: hello");
    (ws, client)
}

/// Waits up to `deadline` for the gateway to end the tunnel: the stream ends, fails, or brings a
/// close frame. Panics if the tunnel is still open then.
async fn closed_within(ws: &mut Ws, deadline: Duration, why: &str) {
    let ended = tokio::time::timeout(deadline, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "{why}");
}

/// The `tunnel_closed` audit line of the connection from `client`.
async fn tunnel_closed(client: SocketAddr) -> serde_json::Value {
    let lines = audit().of("tunnel_closed", client).await;
    assert_eq!(lines.len(), 1, "one tunnel_closed line: {lines:?}");
    lines[0].clone()
}

fn crl_verdict(gw: &Gateway, leaf: &Leaf) -> Verdict {
    let (issuer, serial) = issuer_and_serial(&leaf.der).unwrap();
    gw.snapshot()
        .revocation
        .crl()
        .check(BundleId(0), issuer, serial, UnixTime::now())
}

// === tunnels ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partners_open_websocket_is_cut_within_a_second() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let ca = OpenSslCa::new(&env.root);
    let acme = env.acme();
    let crl = env.path("partner-ca.crl");
    std::fs::write(&crl, ca.crl(&[])).unwrap();
    let bundle = "        crl:\n          - path: partner-ca.crl\n";
    let gw = env
        .start(&env.config_with_bundle(up.addr, bundle, ""))
        .await;
    let (mut ws, client) = websocket(&env, &gw, &acme).await;

    ca.revoke(&acme);
    replace_by_rename(&crl, &ca.crl(&[]));
    assert!(
        eventually(Duration::from_secs(5), || crl_verdict(&gw, &acme)
            == Verdict::Revoked)
        .await,
        "the gateway picks up the new CRL"
    );
    // The cut is due within 1 s of the gateway using the new CRL; 2 s leaves room for a loaded
    // machine.
    closed_within(
        &mut ws,
        Duration::from_secs(2),
        "the revoked partner's WebSocket is still open",
    )
    .await;
    let line = tunnel_closed(client).await;
    assert_eq!(line["reason"], "certificate_revoked", "{line}");
    assert_eq!(audit().of("connection_revoked", client).await.len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_an_open_websocket_and_finishes_clean() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(&with_server(
            &env.config(up.addr, ""),
            "  drain_timeout: 10s\n",
        ))
        .await;
    let (mut ws, client) = websocket(&env, &gw, &env.acme()).await;

    let drained = tokio::spawn(gw.drain());
    closed_within(
        &mut ws,
        Duration::from_secs(5),
        "the WebSocket outlived the drain",
    )
    .await;
    let drained = tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain waits for the tunnel, not for drain_timeout")
        .unwrap();
    assert_eq!(drained, Drained::Clean);
    let line = tunnel_closed(client).await;
    assert_eq!(line["reason"], "drain", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_count_against_max_connections() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = with_server(
        &env.config(up.addr, ""),
        "  limits:\n    max_connections: 2\n",
    );
    let gw = env.start(&yaml).await;
    let acme = env.acme();
    let (first, _) = websocket(&env, &gw, &acme).await;
    let (_second, _) = websocket(&env, &gw, &acme).await;

    // The third waits in the backlog: its handshake gets no answer while both tunnels are open.
    let third = tokio::spawn({
        let (addr, tls) = (gw.local_addr(), env.tls_config_for(&acme));
        async move { connect(addr, "localhost", tls).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two tunnels held both permits"
    );

    // Closing one tunnel frees its permit for the waiting connection.
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiting connection is served once a tunnel closes")
        .unwrap();
    assert!(served.is_ok(), "{:?}", served.err());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = with_server(
        &env.config(up.addr, ""),
        "  limits:\n    idle_timeout: 1s\n",
    );
    let gw = env.start(&yaml).await;
    let acme = env.acme();

    // Traffic every 300 ms keeps a tunnel open well past the idle timeout.
    let (mut busy, busy_client) = websocket(&env, &gw, &acme).await;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.send("ping".into()).await.unwrap();
        let echoed = busy.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), "echo: ping");
    }
    let busy_client = busy_client.to_string();
    assert!(
        audit()
            .all()
            .iter()
            .all(|l| !(l["event"] == "tunnel_closed" && l["client.addr"] == busy_client.as_str())),
        "the busy tunnel was closed"
    );
    drop(busy);

    // A quiet one is closed within 1.5 × idle_timeout (plus room for a loaded machine).
    let (mut idle, idle_client) = websocket(&env, &gw, &acme).await;
    let quiet_since = Instant::now();
    closed_within(
        &mut idle,
        Duration::from_secs(5),
        "the idle WebSocket is still open",
    )
    .await;
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(900),
        "closed before the idle timeout: {:?}",
        quiet_since.elapsed()
    );
    let line = tunnel_closed(idle_client).await;
    assert_eq!(line["reason"], "idle_timeout", "{line}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_tunnel_is_audited_with_bytes_each_way_duration_and_reason() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let (mut ws, client) = websocket(&env, &gw, &env.acme()).await;
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The partner closes its TLS connection cleanly (close_notify, then FIN) without a WebSocket
    // close frame, so the bytes moved are exactly the one message each way.
    ws.get_mut().shutdown().await.unwrap();
    closed_within(&mut ws, Duration::from_secs(5), "the tunnel did not end").await;
    let line = tunnel_closed(client).await;
    assert_eq!(line["reason"], "client_closed", "{line}");
    // "hello" from the client: 2 header bytes, a 4-byte mask, 5 payload bytes.
    assert_eq!(line["bytes.in"], 11, "{line}");
    // "echo: hello" from the upstream, unmasked: 2 header bytes, 11 payload bytes.
    assert_eq!(line["bytes.out"], 13, "{line}");
    let duration = line["duration_ms"].as_f64().unwrap();
    assert!(
        duration >= 200.0 && duration <= opened.elapsed().as_secs_f64() * 1e3 + 5_000.0,
        "{line}"
    );
    assert_eq!(line["partner"], "acme", "{line}");
    assert_eq!(line["route"], "orders-read", "{line}");
    assert_eq!(line["upstream"], "orders", "{line}");
    gw.shutdown().await;
}

// === shutdown ===

/// `certgate serve` with a request in flight when `drain_timeout` passes: the process cuts it,
/// audits it with what really happened to it, and exits with the documented non-zero status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_cuts_the_request_audits_it_and_exits_3() {
    let env = Env::new();
    let up = Upstream::start().await;
    let port = free_port();
    let yaml = with_server(&env.config(up.addr, ""), "  drain_timeout: 500ms\n").replacen(
        "  listen: \"127.0.0.1:0\"",
        &format!("  listen: \"127.0.0.1:{port}\""),
        1,
    );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let log = env.path("certgate.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect(
            addr
        )
        .is_ok())
        .await,
        "certgate did not start listening on {addr}"
    );

    // The upstream answers after 1.8 s: under the 2 s request timeout, past the drain timeout.
    // One request over HTTP/1.1, one over HTTP/2 (whose handlers run on tasks of their own).
    let acme = env.acme();
    let in_flight = [
        (
            env.client(Some(&acme), &[b"http/1.1"]),
            "/v1/orders/delay/1800",
        ),
        (env.client(Some(&acme), &[b"h2"]), "/v1/orders/delay/1801"),
    ]
    .map(|(client, path)| tokio::spawn(call(addr, client, get(path))));
    assert!(
        eventually(Duration::from_secs(10), || up.count() == 2).await,
        "both requests reached the upstream"
    );
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(signalled.success());

    let exited = eventually(Duration::from_secs(15), || {
        child.try_wait().unwrap().is_some()
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "certgate did not exit after SIGTERM");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(i32::from(certgate::cli::EXIT_DRAIN_CUT)),
        "{status}"
    );
    for request in in_flight {
        let answer = request.await.unwrap();
        assert!(answer.is_err(), "a cut request got no answer: {answer:?}");
    }

    let lines = read_log(&log);
    let cut = lines
        .iter()
        .find(|l| l["event"] == "drain_timeout")
        .unwrap_or_else(|| panic!("no drain_timeout line in {lines:?}"));
    assert_eq!(cut["connections"], 2, "{cut}");
    for path in ["/v1/orders/delay/1800", "/v1/orders/delay/1801"] {
        let request = lines
            .iter()
            .find(|l| l["event"] == "request" && l["http.path"] == path)
            .unwrap_or_else(|| panic!("no audit line for the cut request {path} in {lines:?}"));
        assert_eq!(request["reason"], "drain_timeout", "{request}");
        assert_eq!(request["http.status"], 0, "{request}");
        assert_eq!(request["body.complete"], false, "{request}");
        assert_eq!(request["route"], "orders-read", "{request}");
        assert_eq!(request["partner"], "acme", "{request}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
