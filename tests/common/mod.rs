//! Shared test harness: a real PKI, a real hyper upstream that records what it receives, the
//! gateway started from YAML through the same loader `serve` uses, and a real TLS client.
//! The lints allowed here are allowed in `openssl` and `pki` too: each test uses only some helpers.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod cli;
pub mod feed;
pub mod openssl;
pub mod pki;
pub mod postgres;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

pub use pki::{Ca, Leaf};

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A real hyper upstream (HTTP/1.1 and h2c prior knowledge) on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// How each body sent to a `…/count-body…` path ended: its size when it arrived whole, the
    /// error when it broke off.
    pub bodies: Arc<Mutex<Vec<Result<u64, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// An upstream on a given address (e.g. one that was down a moment ago).
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let bodies: Arc<Mutex<Vec<Result<u64, String>>>> = Arc::default();
        let record = Record {
            seen: seen.clone(),
            bodies: bodies.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let record = record.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| upstream_handle(record.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            bodies,
            task,
        }
    }

    /// How the bodies sent to `…/count-body…` paths ended, waiting up to 5 s for `n` of them.
    pub async fn bodies(&self, n: usize) -> Vec<Result<u64, String>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let bodies = self.bodies.lock().unwrap().clone();
            if bodies.len() >= n || Instant::now() > deadline {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(text: impl Into<Bytes>) -> UpBody {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[derive(Clone)]
struct Record {
    seen: Arc<Mutex<Vec<Seen>>>,
    bodies: Arc<Mutex<Vec<Result<u64, String>>>>,
}

async fn upstream_handle(
    record: Record,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    record.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    if req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|u| u == "websocket")
    {
        let key = req.headers().get("sec-websocket-key").cloned().unwrap();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let upgraded = on_upgrade.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() {
                    let text = format!("echo: {}", msg.into_text().unwrap());
                    ws.send(text.into()).await.unwrap();
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    if path.contains("/count-body") || path.starts_with("/v1/upload") {
        // Count a streamed body without keeping it.
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                    }
                }
                Err(e) => {
                    record.bodies.lock().unwrap().push(Err(e.to_string()));
                    let broken = Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(full("broken body"))
                        .unwrap();
                    return Ok(broken);
                }
            }
        }
        record.bodies.lock().unwrap().push(Ok(total));
        return Ok(Response::new(full(format!("{{\"bytes\":{total}}}"))));
    }
    if let Some(n) = path.strip_prefix("/v1/orders/download/") {
        let n: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter((0..n.div_ceil(chunk.len())).map(move |i| {
            let len = chunk.len().min(n - i * chunk.len());
            Ok::<_, BoxError>(hyper::body::Frame::data(chunk.slice(..len)))
        }));
        return Ok(Response::new(
            http_body_util::StreamBody::new(stream).boxed(),
        ));
    }
    if let Some(ms) = path.strip_prefix("/v1/orders/delay/") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path.starts_with("/v1/orders/truncated") {
        // Promise 1000 bytes, send 10, then fail the body: the connection breaks mid-response.
        use futures_util::StreamExt;
        let stream = futures_util::stream::iter([
            Ok(hyper::body::Frame::data(Bytes::from_static(b"0123456789"))),
            Err(BoxError::from("upstream died mid-body")),
        ])
        .then(|item| async move {
            // Let the head and the first bytes reach the gateway before the failure.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            item
        });
        return Ok(Response::builder()
            .header("content-length", "1000")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
            .unwrap());
    }
    if path.starts_with("/v1/orders/slow") {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .header("x-upstream", "test")
        .body(full(format!("upstream saw {path}")))
        .unwrap())
}

/// A temporary folder with a root CA, a server certificate and the files a config points at.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: Ca,
    pub server: Leaf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("partner root CA");
        let server = root.server();
        std::fs::write(dir.path().join("ca.pem"), &root.pem).unwrap();
        server.write(dir.path(), "server");
        Env { dir, root, server }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The standard test configuration: partners `acme` (spiffe, orders:read) and `globex`
    /// (subject CN, orders:read + payments:write), routes for both scopes plus a host-bound one.
    /// `extra` is appended under the top level (e.g. a `forward:` block).
    pub fn config(&self, upstream: SocketAddr, extra: &str) -> String {
        self.config_with_bundle(upstream, "", extra)
    }

    /// [`Env::config`] with `bundle` added to the `partner-ca` trust bundle: YAML keys indented by
    /// eight spaces, e.g. `"        crl:\n          - path: partner-ca.crl\n"`.
    pub fn config_with_bundle(&self, upstream: SocketAddr, bundle: &str, extra: &str) -> String {
        format!(
            r#"
server:
  listen: "127.0.0.1:0"
  tls:
    certificates:
      - cert: server.pem
        key: server-key.pem
  client_auth:
    trust_bundles:
      - name: partner-ca
        ca: ca.pem
{bundle}admin:
  listen: "127.0.0.1:0"
upstreams:
  orders:
    endpoints: ["http://{upstream}"]
    connect_timeout: 1s
    request_timeout: 2s
  dead:
    endpoints: ["http://127.0.0.1:1"]
    connect_timeout: 1s
partners:
  - id: acme
    owner: payments-team@example.com
    trust_bundle: partner-ca
    identities:
      - spiffe: spiffe://partners.example.com/acme
    scopes: [orders:read]
  - id: globex
    owner: logistics@example.com
    trust_bundle: partner-ca
    identities:
      - subject_cn: globex-sync
    scopes: [orders:read, payments:write]
routes:
  - name: orders-read
    path_prefix: /v1/orders
    methods: [GET, HEAD, POST]
    scope: orders:read
    upstream: orders
  - name: payments-write
    path_prefix: /v1/payments
    methods: [POST]
    scope: payments:write
    upstream: orders
  - name: hosted
    host: api.example.com
    path: /v1/hosted
    scope: orders:read
    upstream: orders
  - name: broken
    path_prefix: /v1/broken
    scope: orders:read
    upstream: dead
{extra}
"#
        )
    }

    /// Writes the config and starts the gateway through the same loader `certgate serve` uses.
    pub async fn start(&self, yaml: &str) -> certgate::runtime::Gateway {
        self.start_with(yaml, false).await
    }

    /// [`Env::start`], optionally watching the config's files for changes as `serve` does.
    pub async fn start_with(&self, yaml: &str, watch_files: bool) -> certgate::runtime::Gateway {
        let path = self.path("certgate.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = match certgate::config::load(&path) {
            Ok(c) => c,
            Err(problems) => panic!("test config rejected: {problems}"),
        };
        let options = certgate::runtime::Options {
            source: Some(path),
            watch_files,
            ..Default::default()
        };
        certgate::runtime::Gateway::start_with(config, options)
            .await
            .unwrap()
    }

    /// An HTTP/1.1 client that trusts the test root and presents `leaf`.
    pub fn tls_config_for(&self, leaf: &Leaf) -> Arc<rustls::ClientConfig> {
        self.client(Some(leaf), &[b"http/1.1"])
    }

    /// An open HTTP/1.1 mTLS connection to `gw` presenting `leaf`.
    pub async fn tls_as(
        &self,
        gw: &certgate::runtime::Gateway,
        leaf: &Leaf,
    ) -> TlsStream<TcpStream> {
        connect(gw.local_addr(), "localhost", self.tls_config_for(leaf))
            .await
            .unwrap()
    }

    /// One request to `gw` on a fresh HTTP/1.1 connection presenting `leaf` (see [`call`]).
    pub async fn call_as(
        &self,
        gw: &certgate::runtime::Gateway,
        leaf: &Leaf,
        req: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        call(gw.local_addr(), self.tls_config_for(leaf), req).await
    }

    /// An open HTTP/1.1 mTLS connection to `gw` as `acme`.
    pub async fn acme_tls(&self, gw: &certgate::runtime::Gateway) -> TlsStream<TcpStream> {
        self.tls_as(gw, &self.acme()).await
    }

    /// Asserts that a well-behaved partner is still served (while or after something hostile).
    pub async fn still_serves(&self, gw: &certgate::runtime::Gateway) {
        let a = self
            .call_as(gw, &self.acme(), get("/v1/orders/ok"))
            .await
            .unwrap();
        assert_eq!(
            a.status, 200,
            "a well-behaved partner was not served: {}",
            a.body
        );
    }

    pub fn acme(&self) -> Leaf {
        acme_identity(&self.root).issue()
    }

    pub fn globex(&self) -> Leaf {
        self.root.leaf("globex-sync").issue()
    }

    /// A client that trusts the test root and presents `leaf` (or no certificate).
    pub fn client(&self, leaf: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(&self.root.pem, leaf, alpn)
    }
}

/// A leaf from `ca` carrying acme's identity (CN acme-billing and acme's SPIFFE ID), to issue as
/// it is or with a knob turned first (expired, serverAuth only, …).
pub fn acme_identity(ca: &Ca) -> pki::LeafBuilder<'_> {
    ca.leaf("acme-billing")
        .spiffe("spiffe://partners.example.com/acme")
}

pub fn client_config(
    ca_pem: &str,
    leaf: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    client_config_with(ca_pem, leaf, alpn, rustls::DEFAULT_VERSIONS)
}

pub fn client_config_with(
    ca_pem: &str,
    leaf: Option<&Leaf>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match leaf {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes the TLS handshake (with TLS 1.3 the client learns of a rejected
/// certificate only on its first read, which `send` surfaces as an error).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/1.1 or HTTP/2 sender over one TLS connection, chosen by the negotiated ALPN.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub async fn handshake_http(tls: TlsStream<TcpStream>) -> Result<Sender, hyper::Error> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(Sender::H1(sender))
    }
}

impl Sender {
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn reason(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

pub async fn read(resp: Response<Incoming>) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One request on a fresh connection; `Err` carries the connection-level failure as text.
pub async fn call(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let sni = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        .unwrap_or_else(|| "localhost".to_owned());
    let tls = connect(addr, &sni, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut sender = handshake_http(tls).await.map_err(|e| format!("{e:?}"))?;
    let resp = sender.send(req).await.map_err(|e| format!("{e:?}"))?;
    Ok(read(resp).await)
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// An `http://127.0.0.1:PORT/{path}` URL where nothing listens: the port was bound and released.
pub fn dead_url(path: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/{path}")
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn eventually(deadline: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let give_up = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < give_up {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cond()
}

/// One plain-HTTP request to the admin API.
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// The admin API's `/metrics`, checked to be the Prometheus text format.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = admin(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    body
}

/// Scrapes until every line in `expected` is present: request metrics are recorded when the
/// response body ends, and connection metrics when the connection's task ends, which can be a
/// moment after the client has seen the answer or the close.
pub async fn scrape_until(addr: SocketAddr, expected: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(addr).await;
        let missing: Vec<_> = expected
            .iter()
            .filter(|l| !text.lines().any(|line| line == **l))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} in the scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The audit lines (target `certgate::audit`, JSON) of every gateway in this test binary.
///
/// [`audit`] installs the capturing subscriber as the global default the first time it is
/// called, so a test calls it before it provokes what it wants to read. Tests of one binary run
/// side by side and share the capture: pick lines by something only your test produced (the
/// client's address for a connection, a unique request path).
#[derive(Clone, Default)]
pub struct AuditLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for AuditLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AuditLog {
    type Writer = AuditLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The capture every test in this binary shares (see [`AuditLog`]).
pub fn audit() -> &'static AuditLog {
    static LOG: OnceLock<AuditLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = AuditLog::default();
        // As `serve` installs it: request lines go straight to the writer.
        let installed = certgate::audit::install(
            certgate::audit::LogFormat::Json,
            tracing_subscriber::EnvFilter::new("certgate::audit=info"),
            log.clone(),
            false,
        );
        assert!(installed, "no other global subscriber in this test binary");
        log
    })
}

impl AuditLog {
    /// Every line captured so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    }

    /// The lines whose `field` is `value`, waiting up to 5 s for at least `n`.
    pub async fn lines(&self, field: &str, value: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait(n, |v| v[field] == value).await
    }

    /// The `event` lines about the connection from `client` (the client's local address),
    /// waiting up to 5 s for at least one.
    pub async fn of(&self, event: &str, client: SocketAddr) -> Vec<serde_json::Value> {
        let client = client.to_string();
        self.wait(1, |v| {
            v["event"] == event && v["client.addr"] == client.as_str()
        })
        .await
    }

    /// The lines matching `keep`, waiting up to 5 s for at least `n`.
    pub async fn wait(
        &self,
        n: usize,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<_> = self.all().into_iter().filter(|v| keep(v)).collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// === Raw HTTP/1.1 over mTLS ===

/// Reads one complete response with a `content-length` body (what the test upstream sends).
pub async fn read_response(tls: &mut TlsStream<TcpStream>) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + length {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
}

/// Sends `raw` on a fresh mTLS connection after `before` plain requests (each answered 200 before
/// the next is written) and returns whatever the gateway answers to `raw` before it closes the
/// connection or goes quiet.
pub async fn send_raw_after(
    env: &Env,
    gw: &certgate::runtime::Gateway,
    before: usize,
    tag: &str,
    raw: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = env.acme_tls(gw).await;
    for i in 0..before {
        let plain = format!("GET /v1/orders/plain-{tag}-{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        tls.write_all(plain.as_bytes()).await.unwrap();
        let answer = read_response(&mut tls).await;
        assert!(
            answer.starts_with("HTTP/1.1 200")
                && answer.ends_with(&format!("/v1/orders/plain-{tag}-{i}")),
            "{tag}: plain request {i} got {answer}"
        );
    }
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
