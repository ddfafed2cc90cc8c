//! `loadgen`: the load generator of the comparison benchmark (`benches/compare.sh`).
//!
//! A small, single-purpose mTLS client on tokio + tokio-rustls + hyper. It presents a client
//! certificate, never resumes a TLS session (`Resumption::disabled()`, so every new connection is a
//! full handshake), and prints one JSON object on stdout. Modes:
//!
//! * `keepalive`: N connections (HTTP/1.1 or h2), each sending requests back to back. HTTP/1.1
//!   skips hyper's client (see `RawConn`): same bytes on the wire, less of the shared core;
//! * `handshake`: C workers, each opening a new connection per request (full handshake each time);
//! * `idle`: open N connections (one request each, so the peer really proxies on them), hold them,
//!   and report how much the watched processes' memory grew per connection;
//! * `storm`: N keep-alive connections send back to back; after a window without a storm, M new
//!   connections arrive as fast as the load generator can open them (full handshake, one request,
//!   close). Reports the time until all M are served, failures, and the keep-alive latency before
//!   and during the storm;
//! * `gen-crl`: write a CRL with any number of revoked serials (the 1M-entry CRL in seconds).
//!
//! Every load is bounded by `--duration` and `--max-requests`. `--watch-pid` makes the JSON carry
//! the watched processes' CPU time (utime+stime from `/proc/PID/stat`) over exactly the measured
//! window, and their peak RSS, so the gateway's CPU per request needs no outside synchronisation.
//!
//! Latencies go into a plain `Vec<u32>` of microseconds, sorted once at the end: the runs are
//! bounded (tens of millions of samples at most), so exact percentiles cost a few MB and no extra
//! dependency.
//!
//! Run: `cargo bench --bench loadgen -- keepalive --addr 127.0.0.1:8443 ...` or the built binary
//! `target/release/deps/loadgen-*`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::HandshakeKind;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "mTLS load generator for the certgate comparison benchmark"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// N connections, each sending requests back to back.
    Keepalive {
        #[command(flatten)]
        common: Common,
        /// Concurrent connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, value_enum, default_value = "http1")]
        proto: Proto,
        /// h2 only: requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// One request per new connection: a full TLS handshake for every request.
    Handshake {
        #[command(flatten)]
        common: Common,
        /// Concurrent workers (connections being set up at once).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Open N connections with one request each, hold them, report the memory they cost.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How long to hold the connections before measuring.
        #[arg(long, default_value = "2")]
        settle_secs: f64,
    },
    /// Keep-alive connections sending while a storm of new connections arrives.
    ///
    /// `--duration` is the window before the storm (the keep-alive latency to compare with);
    /// the storm itself ends when all `--storm` connections are served or failed, or after
    /// `--storm-limit-secs`.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Keep-alive connections sending throughout.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// New connections in the storm, each a full handshake and one request.
        #[arg(long, default_value_t = 5000)]
        storm: usize,
        /// Storm connections being set up at once.
        #[arg(long, default_value_t = 128)]
        storm_concurrency: usize,
        /// The storm's bound: connections not served by then count as unfinished.
        #[arg(long, default_value = "120")]
        storm_limit_secs: f64,
    },
    /// Write a CRL signed by `--issuer-cert`/`--issuer-key` listing `--count` synthetic serials
    /// plus every `--revoke` serial.
    GenCrl {
        #[arg(long)]
        issuer_cert: PathBuf,
        #[arg(long)]
        issuer_key: PathBuf,
        #[arg(long)]
        count: u64,
        /// Hex serials to list as well (e.g. the revoked partner's).
        #[arg(long)]
        revoke: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Target address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// Plain HTTP instead of mTLS (the upstream-alone ceiling).
    #[arg(long)]
    plain: bool,
    /// CA bundle that verifies the server certificate.
    #[arg(long, required_unless_present = "plain")]
    ca: Option<PathBuf>,
    /// Client certificate chain (leaf first) and key, PEM.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// SNI and Host.
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long, default_value = "/v1/bench")]
    path: String,
    /// Measured window, seconds.
    #[arg(long, default_value = "5")]
    duration: f64,
    /// Unmeasured warm-up before the window, seconds.
    #[arg(long, default_value = "0.5")]
    warmup: f64,
    /// Stop after this many measured requests, whatever the duration.
    #[arg(long, default_value_t = 20_000_000)]
    max_requests: u64,
    /// TLS versions offered.
    #[arg(long, value_enum, default_value = "tls13")]
    tls: TlsVer,
    /// Processes whose CPU and RSS to report (comma separated), e.g. the gateway's workers.
    #[arg(long, value_delimiter = ',')]
    watch_pid: Vec<u32>,
    /// A label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Http1,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsVer {
    Tls13,
    Tls12,
}

/// Shared state of one run.
struct Run {
    common: Common,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    uri: Uri,
    h2_uri: Uri,
    /// The HTTP/1.1 keep-alive request, encoded once: the bytes hyper's client sends for it.
    get: Vec<u8>,
    /// Set once the warm-up is over: only then are latencies recorded.
    measuring: AtomicBool,
    stop: AtomicBool,
    measured: AtomicU64,
    errors: ErrorCounts,
    full_handshakes: AtomicU64,
    resumed_handshakes: AtomicU64,
}

#[derive(Default)]
struct ErrorCounts {
    connect: AtomicU64,
    tls: AtomicU64,
    http: AtomicU64,
    status: AtomicU64,
}

/// A client connection's byte stream: TLS, or plain TCP for the upstream-alone ceiling.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// HTTP/1.1 keep-alive without hyper's client: the load generator shares its core with the
/// upstream, and with a fast gateway that core is the limit. Writing one pre-encoded
/// request and parsing the response head in place leaves the core to the upstream, and puts the
/// same bytes on the wire as hyper's client did.
struct RawConn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl RawConn {
    fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads what is there into `buf`; false on EOF or error.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(4096);
        matches!(self.io.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }
}

/// What a keep-alive client needs of a response head.
struct ResponseHead {
    len: usize,
    status: u16,
    body: usize,
    close: bool,
}

impl ResponseHead {
    /// `Ok(None)`: incomplete. `Err`: malformed, or a body not framed by `Content-Length` (every
    /// peer answers the benchmark's 100-byte body with one).
    fn parse(buf: &[u8]) -> Result<Option<Self>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let mut body = None;
        let mut close = false;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value).map_err(|_| ())?.trim();
                body = Some(n.parse().map_err(|_| ())?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(());
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= h.value.eq_ignore_ascii_case(b"close");
            }
        }
        Ok(Some(Self {
            len,
            status: response.code.ok_or(())?,
            body: body.ok_or(())?,
            close,
        }))
    }
}

type Sender1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

enum Sender {
    H1(Sender1),
    H2(Sender2),
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; drop it so the same arguments work both ways.
    let args = std::env::args().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    if let Mode::GenCrl {
        issuer_cert,
        issuer_key,
        count,
        revoke,
        out,
    } = &cli.mode
    {
        return gen_crl(issuer_cert, issuer_key, *count, revoke, out);
    }
    // One thread: the harness pins loadgen to one core, and one thread keeps its CPU honest.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(run(cli.mode))?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

async fn run(mode: Mode) -> anyhow::Result<Value> {
    match mode {
        Mode::Keepalive {
            common,
            connections,
            proto,
            streams,
        } => {
            let run = Arc::new(Run::new(common, proto)?);
            keepalive(run, connections, proto, streams.max(1)).await
        }
        Mode::Handshake {
            common,
            concurrency,
        } => {
            let run = Arc::new(Run::new(common, Proto::Http1)?);
            handshake(run, concurrency).await
        }
        Mode::Idle {
            common,
            connections,
            concurrency,
            settle_secs,
        } => {
            let run = Arc::new(Run::new(common, Proto::Http1)?);
            idle(run, connections, concurrency, settle_secs).await
        }
        Mode::Storm {
            common,
            connections,
            storm,
            storm_concurrency,
            storm_limit_secs,
        } => {
            let run = Arc::new(Run::new(common, Proto::Http1)?);
            let shape = StormShape {
                connections,
                storm,
                concurrency: storm_concurrency.max(1),
                limit: Duration::from_secs_f64(storm_limit_secs),
            };
            storm_run(run, shape).await
        }
        Mode::GenCrl { .. } => unreachable!("handled in main"),
    }
}

// === impl Run ===

impl Run {
    fn new(common: Common, proto: Proto) -> anyhow::Result<Self> {
        let tls = if common.plain {
            None
        } else {
            Some(TlsConnector::from(Arc::new(client_config(&common, proto)?)))
        };
        let server_name = ServerName::try_from(common.host.clone())?;
        let uri: Uri = common.path.parse()?;
        let h2_uri: Uri = format!("https://{}{}", common.host, common.path).parse()?;
        let get = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\n\r\n",
            common.path, common.host
        )
        .into_bytes();
        Ok(Self {
            common,
            tls,
            server_name,
            uri,
            h2_uri,
            get,
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            measured: AtomicU64::new(0),
            errors: ErrorCounts::default(),
            full_handshakes: AtomicU64::new(0),
            resumed_handshakes: AtomicU64::new(0),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Records one finished request; returns false once the request budget is spent.
    fn record(&self, lat: &mut Vec<u32>, started: Instant) -> bool {
        if self.measuring.load(Ordering::Relaxed) && !self.stopped() {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            lat.push(us);
            let n = self.measured.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.common.max_requests {
                self.stop.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    /// TCP connect, TLS handshake (unless plain) and the HTTP handshake; the connection task is
    /// spawned and ends when the sender is dropped.
    async fn connect(&self, proto: Proto) -> Option<Sender> {
        let io = self.open().await?;
        http_handshake(TokioIo::new(io), proto, &self.errors).await
    }

    /// TCP connect and TLS handshake (unless plain), counting full and resumed handshakes.
    async fn open(&self) -> Option<Box<dyn Io>> {
        let tcp = match TcpStream::connect(self.common.addr).await {
            Ok(t) => t,
            Err(_) => {
                self.errors.connect.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Some(Box::new(tcp)),
            Some(tls) => match tls.connect(self.server_name.clone(), tcp).await {
                Ok(stream) => {
                    match stream.get_ref().1.handshake_kind() {
                        Some(HandshakeKind::Resumed) => &self.resumed_handshakes,
                        _ => &self.full_handshakes,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    Some(Box::new(stream))
                }
                Err(_) => {
                    self.errors.tls.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
        }
    }

    /// One GET, body read to the end. `Err` means the connection is no longer usable.
    async fn request(&self, sender: &mut Sender) -> Result<(), ()> {
        let result = match sender {
            Sender::H1(s) => {
                if s.ready().await.is_err() {
                    self.errors.http.fetch_add(1, Ordering::Relaxed);
                    return Err(());
                }
                let req = Request::get(self.uri.clone())
                    .header(http::header::HOST, self.common.host.as_str())
                    .body(Empty::new())
                    .map_err(|_| ())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                let req = Request::get(self.h2_uri.clone())
                    .body(Empty::new())
                    .map_err(|_| ())?;
                s.send_request(req).await
            }
        };
        let resp = match result {
            Ok(r) => r,
            Err(_) => {
                self.errors.http.fetch_add(1, Ordering::Relaxed);
                return Err(());
            }
        };
        let ok = resp.status() == http::StatusCode::OK;
        if resp.into_body().collect().await.is_err() {
            self.errors.http.fetch_add(1, Ordering::Relaxed);
            return Err(());
        }
        if !ok {
            self.errors.status.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One GET on a raw HTTP/1.1 keep-alive connection: the pre-encoded request, then the response
    /// head parsed with httparse and a `Content-Length` body read to its end. `Err` means the
    /// connection is no longer usable (also after `Connection: close`, as hyper's client would).
    async fn raw_request(&self, conn: &mut RawConn) -> Result<u16, ()> {
        let broken = || {
            self.errors.http.fetch_add(1, Ordering::Relaxed);
            Err(())
        };
        if conn.io.write_all(&self.get).await.is_err() || conn.io.flush().await.is_err() {
            return broken();
        }
        conn.buf.clear();
        let head = loop {
            if !conn.fill().await {
                return broken();
            }
            match ResponseHead::parse(&conn.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(()) => return broken(),
            }
        };
        let end = head.len + head.body;
        while conn.buf.len() < end {
            if !conn.fill().await {
                return broken();
            }
        }
        // One request in flight: anything past this response is a protocol error.
        if conn.buf.len() > end || head.close {
            return broken();
        }
        if head.status != 200 {
            self.errors.status.fetch_add(1, Ordering::Relaxed);
        }
        Ok(head.status)
    }

    fn error_json(&self) -> Value {
        json!({
            "connect": self.errors.connect.load(Ordering::Relaxed),
            "tls": self.errors.tls.load(Ordering::Relaxed),
            "http": self.errors.http.load(Ordering::Relaxed),
            "status": self.errors.status.load(Ordering::Relaxed),
        })
    }
}

async fn http_handshake<T>(io: TokioIo<T>, proto: Proto, errors: &ErrorCounts) -> Option<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let sender = match proto {
        Proto::Http1 => hyper::client::conn::http1::handshake(io)
            .await
            .map(|(s, conn)| {
                tokio::spawn(conn);
                Sender::H1(s)
            }),
        Proto::H2 => hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map(|(s, conn)| {
                tokio::spawn(conn);
                Sender::H2(s)
            }),
    };
    match sender {
        Ok(s) => Some(s),
        Err(_) => {
            errors.http.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn client_config(common: &Common, proto: Proto) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match common.tls {
        TlsVer::Tls13 => &[&rustls::version::TLS13],
        TlsVer::Tls12 => &[&rustls::version::TLS12],
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = common.ca.as_ref().ok_or_else(|| anyhow::anyhow!("--ca"))?;
    for c in read_certs(ca)? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let mut config = match (&common.cert, &common.key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(read_certs(cert)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    // Every connection is a full handshake: the point of the handshake measurement.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = match proto {
        Proto::Http1 => vec![b"http/1.1".to_vec()],
        Proto::H2 => vec![b"h2".to_vec()],
    };
    Ok(config)
}

fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(certs)
}

// === modes ===

async fn keepalive(
    run: Arc<Run>,
    connections: usize,
    proto: Proto,
    streams: usize,
) -> anyhow::Result<Value> {
    // Connect everything first, so the window measures requests, not handshakes.
    let tasks = match proto {
        Proto::Http1 => keepalive_h1(&run, connections).await,
        Proto::H2 => keepalive_h2(&run, connections, streams).await,
    };
    let window = measure_window(&run).await;
    let lat = join_latencies(tasks).await;
    Ok(report(
        &run,
        "keepalive",
        window,
        lat,
        json!({
            "connections": connections, "proto": format!("{proto:?}").to_lowercase(), "streams": streams,
        }),
    ))
}

type Worker = tokio::task::JoinHandle<Vec<u32>>;

/// A keep-alive worker's connection: its own raw HTTP/1.1 one, or a share of an h2 one.
enum KeepAliveConn {
    H1(RawConn),
    H2(Sender),
}

impl Run {
    async fn keepalive_request(&self, conn: &mut KeepAliveConn) -> Result<(), ()> {
        match conn {
            KeepAliveConn::H1(raw) => self.raw_request(raw).await.map(|_| ()),
            KeepAliveConn::H2(sender) => self.request(sender).await,
        }
    }

    /// A fresh connection of the same kind, for a worker whose connection broke.
    async fn keepalive_reconnect(&self, proto: Proto) -> Option<KeepAliveConn> {
        match proto {
            Proto::Http1 => self
                .open()
                .await
                .map(|io| KeepAliveConn::H1(RawConn::new(io))),
            Proto::H2 => self.connect(Proto::H2).await.map(KeepAliveConn::H2),
        }
    }
}

/// Requests back to back on `conn`, replacing it when it breaks, until the run stops.
fn keepalive_worker(run: &Arc<Run>, mut conn: KeepAliveConn, proto: Proto) -> Worker {
    let run = run.clone();
    tokio::spawn(async move {
        let mut lat = Vec::with_capacity(1 << 16);
        while !run.stopped() {
            let started = Instant::now();
            match run.keepalive_request(&mut conn).await {
                Ok(()) => {
                    if !run.record(&mut lat, started) {
                        break;
                    }
                }
                Err(()) => match run.keepalive_reconnect(proto).await {
                    Some(new) => conn = new,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
        // close_notify and FIN, as hyper's client sends when its connection is dropped (an h2
        // sender does the same once its last clone is gone).
        if let KeepAliveConn::H1(raw) = &mut conn {
            let _ = raw.io.shutdown().await;
        }
        lat
    })
}

/// One worker per connection, on a [`RawConn`].
async fn keepalive_h1(run: &Arc<Run>, connections: usize) -> Vec<Worker> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        if let Some(io) = run.open().await {
            conns.push(KeepAliveConn::H1(RawConn::new(io)));
        }
    }
    conns
        .into_iter()
        .map(|conn| keepalive_worker(run, conn, Proto::Http1))
        .collect()
}

/// `streams` workers per connection, sharing its hyper h2 sender.
async fn keepalive_h2(run: &Arc<Run>, connections: usize, streams: usize) -> Vec<Worker> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        if let Some(Sender::H2(s)) = run.connect(Proto::H2).await {
            senders.push(s);
        }
    }
    let mut workers = Vec::with_capacity(senders.len() * streams);
    for sender in senders {
        for _ in 0..streams {
            let conn = KeepAliveConn::H2(Sender::H2(sender.clone()));
            workers.push(keepalive_worker(run, conn, Proto::H2));
        }
    }
    workers
}

async fn handshake(run: Arc<Run>, concurrency: usize) -> anyhow::Result<Value> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            while !run.stopped() {
                let started = Instant::now();
                let Some(mut s) = run.connect(Proto::Http1).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if run.request(&mut s).await.is_ok() && !run.record(&mut lat, started) {
                    break;
                }
                // Dropping the sender closes the connection.
            }
            lat
        }));
    }
    let window = measure_window(&run).await;
    let lat = join_latencies(tasks).await;
    Ok(report(
        &run,
        "handshake",
        window,
        lat,
        json!({ "concurrency": concurrency }),
    ))
}

async fn idle(
    run: Arc<Run>,
    connections: usize,
    concurrency: usize,
    settle_secs: f64,
) -> anyhow::Result<Value> {
    let before = Watch::sample(&run.common.watch_pid);
    let started = Instant::now();
    // `--duration` bounds the opening phase here.
    let deadline = started + Duration::from_secs_f64(run.common.duration);
    let held = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(connections)));
    let remaining = Arc::new(AtomicU64::new(connections as u64));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (run, held, remaining) = (run.clone(), held.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                if let Some(mut s) = run.connect(Proto::Http1).await {
                    if run.request(&mut s).await.is_ok() {
                        held.lock().await.push(s);
                        continue;
                    }
                }
                remaining.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(settle_secs)).await;
    let after = Watch::sample(&run.common.watch_pid);
    let n = held.lock().await.len();
    // Still usable after the hold? Probe a few.
    let mut alive = 0;
    {
        let mut held = held.lock().await;
        for s in held.iter_mut().take(16) {
            if run.request(s).await.is_ok() {
                alive += 1;
            }
        }
    }
    held.lock().await.clear();
    let per_conn = |a: u64, b: u64| {
        if n == 0 {
            0.0
        } else {
            (a.saturating_sub(b)) as f64 * 1024.0 / n as f64
        }
    };
    Ok(json!({
        "mode": "idle",
        "label": run.common.label,
        "addr": run.common.addr.to_string(),
        "connections_requested": connections,
        "connections_held": n,
        "open_secs": open_secs,
        "probe_alive_of_16": alive,
        "rss_kb_before": before.rss_kb,
        "rss_kb_after": after.rss_kb,
        "pss_kb_before": before.pss_kb,
        "pss_kb_after": after.pss_kb,
        "rss_bytes_per_conn": per_conn(after.rss_kb, before.rss_kb),
        "pss_bytes_per_conn": per_conn(after.pss_kb, before.pss_kb),
        "errors": run.error_json(),
        "full_handshakes": run.full_handshakes.load(Ordering::Relaxed),
        "resumed_handshakes": run.resumed_handshakes.load(Ordering::Relaxed),
    }))
}

/// The storm scenario's shape (see `Mode::Storm`).
struct StormShape {
    connections: usize,
    storm: usize,
    concurrency: usize,
    limit: Duration,
}

/// Where the storm scenario is: keep-alive latencies are kept apart by phase.
const WARMING: u8 = 0;
const BEFORE: u8 = 1;
const DURING: u8 = 2;
const AFTER: u8 = 3;

async fn storm_run(run: Arc<Run>, shape: StormShape) -> anyhow::Result<Value> {
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(WARMING));
    let mut conns = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        if let Some(io) = run.open().await {
            conns.push(RawConn::new(io));
        }
    }
    let ka_connections = conns.len();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (run, phase) = (run.clone(), phase.clone());
            tokio::spawn(async move {
                let (mut before, mut during) = (Vec::with_capacity(1 << 16), Vec::new());
                let mut failed = 0u64;
                while !run.stopped() {
                    let started = Instant::now();
                    let ok = matches!(run.raw_request(&mut conn).await, Ok(200));
                    let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                    match (ok, phase.load(Ordering::Relaxed)) {
                        (true, BEFORE) => before.push(us),
                        (true, DURING) => during.push(us),
                        (true, _) => {}
                        (false, _) => {
                            failed += 1;
                            match run.open().await {
                                Some(io) => conn = RawConn::new(io),
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }
                }
                let _ = conn.io.shutdown().await;
                (before, during, failed)
            })
        })
        .collect();
    let pids = run.common.watch_pid.clone();
    tokio::time::sleep(Duration::from_secs_f64(run.common.warmup)).await;

    // The window before the storm.
    phase.store(BEFORE, Ordering::Relaxed);
    let before_window = Span::start(&pids);
    let end = Instant::now() + Duration::from_secs_f64(run.common.duration);
    let mut rss_before = 0;
    while Instant::now() < end {
        rss_before = rss_before.max(Watch::rss_kb(&pids));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_window = before_window.end(&pids);

    // The storm: every opener takes the next connection until all are taken.
    phase.store(DURING, Ordering::Relaxed);
    let storm_window = Span::start(&pids);
    let started = Instant::now();
    let deadline = started + shape.limit;
    let remaining = Arc::new(AtomicU64::new(shape.storm as u64));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_done = Arc::new(tokio::sync::Mutex::new(started));
    let mut openers = Vec::with_capacity(shape.concurrency);
    for _ in 0..shape.concurrency {
        let (run, remaining, served, failed, last_done) = (
            run.clone(),
            remaining.clone(),
            served.clone(),
            failed.clone(),
            last_done.clone(),
        );
        openers.push(tokio::spawn(async move {
            while Instant::now() < deadline
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let ok = match tokio::time::timeout_at(deadline.into(), run.open()).await {
                    Ok(Some(io)) => {
                        let mut conn = RawConn::new(io);
                        let answered =
                            tokio::time::timeout_at(deadline.into(), run.raw_request(&mut conn))
                                .await;
                        let _ = conn.io.shutdown().await;
                        matches!(answered, Ok(Ok(200)))
                    }
                    _ => false,
                };
                (if ok { &served } else { &failed }).fetch_add(1, Ordering::Relaxed);
                *last_done.lock().await = Instant::now();
            }
        }));
    }
    let mut rss_storm = 0;
    let mut sampler = tokio::time::interval(Duration::from_millis(100));
    let mut openers_done = futures_util::future::join_all(openers);
    loop {
        tokio::select! {
            _ = &mut openers_done => break,
            _ = sampler.tick() => rss_storm = rss_storm.max(Watch::rss_kb(&pids)),
        }
    }
    rss_storm = rss_storm.max(Watch::rss_kb(&pids));
    let storm_secs = last_done.lock().await.duration_since(started).as_secs_f64();
    let storm_window = storm_window.end(&pids);
    phase.store(AFTER, Ordering::Relaxed);
    run.stop.store(true, Ordering::Relaxed);

    let (mut before, mut during, mut ka_failed) = (Vec::new(), Vec::new(), 0);
    for w in workers {
        if let Ok(Ok((b, d, f))) = tokio::time::timeout(Duration::from_secs(5), w).await {
            before.extend(b);
            during.extend(d);
            ka_failed += f;
        }
    }
    let served = served.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "storm",
        "label": run.common.label,
        "addr": run.common.addr.to_string(),
        "params": {
            "keepalive_connections": ka_connections,
            "storm": shape.storm,
            "storm_concurrency": shape.concurrency,
            "storm_limit_secs": shape.limit.as_secs_f64(),
        },
        "storm_secs": storm_secs,
        "storm_served": served,
        "storm_failed": failed,
        "storm_unfinished": (shape.storm as u64).saturating_sub(served + failed),
        "storm_per_sec": served as f64 / storm_secs.max(1e-9),
        "keepalive_before": latency_json(before, before_window.secs),
        "keepalive_during": latency_json(during, storm_window.secs),
        "keepalive_failed": ka_failed,
        "watched_rss_kb_peak_before": rss_before,
        "watched_rss_kb_peak": rss_storm,
        "watched_cpu_us_before": before_window.watched_cpu_us,
        "watched_cpu_us_storm": storm_window.watched_cpu_us,
        "loadgen_cpu_util_storm": storm_window.self_cpu_us as f64 / 1e6 / storm_window.secs.max(1e-9),
        "errors": run.error_json(),
        "full_handshakes": run.full_handshakes.load(Ordering::Relaxed),
        "resumed_handshakes": run.resumed_handshakes.load(Ordering::Relaxed),
    }))
}

/// CPU time of this process and the watched ones over a stretch of the run.
struct Span {
    started: Instant,
    self_cpu_us: u64,
    watched_cpu_us: u64,
    secs: f64,
}

impl Span {
    fn start(pids: &[u32]) -> Self {
        Self {
            started: Instant::now(),
            self_cpu_us: cpu_us(None),
            watched_cpu_us: watched_cpu_us(pids).total,
            secs: 0.0,
        }
    }

    fn end(self, pids: &[u32]) -> Self {
        let watched = watched_cpu_us(pids).total;
        Self {
            secs: self.started.elapsed().as_secs_f64(),
            self_cpu_us: cpu_us(None).saturating_sub(self.self_cpu_us),
            watched_cpu_us: watched.saturating_sub(self.watched_cpu_us),
            started: self.started,
        }
    }
}

/// Count, rate and percentiles of a set of request latencies (µs).
fn latency_json(mut lat: Vec<u32>, secs: f64) -> Value {
    lat.sort_unstable();
    let n = lat.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p / 100.0) * n as f64).ceil() as usize;
        f64::from(lat[i.clamp(1, n) - 1]) / 1000.0
    };
    json!({
        "requests": n,
        "secs": secs,
        "rps": n as f64 / secs.max(1e-9),
        "latency_ms": { "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0) },
    })
}

/// What the measured window saw besides latencies.
struct Window {
    secs: f64,
    self_cpu_us: u64,
    /// Each core's busy share of the window, from `/proc/stat`: with the gateway on one core and
    /// this load generator and the upstream on the other, it tells whether the gateway or the
    /// other core was the limit.
    cores_busy: Vec<f64>,
    watched_cpu_us: u64,
    /// The kernel's part of `watched_cpu_us`.
    watched_sys_us: u64,
    watched_rss_kb_peak: u64,
    watched_pss_kb_end: u64,
}

/// Warm-up, then the measured window (until the duration or the request budget runs out),
/// sampling the watched processes' RSS every 100 ms.
async fn measure_window(run: &Run) -> Window {
    tokio::time::sleep(Duration::from_secs_f64(run.common.warmup)).await;
    let pids = &run.common.watch_pid;
    let self_cpu0 = cpu_us(None);
    let cores0 = core_ticks();
    let watched0 = watched_cpu_us(pids);
    let started = Instant::now();
    run.measuring.store(true, Ordering::Relaxed);
    let end = started + Duration::from_secs_f64(run.common.duration);
    let mut peak = 0;
    while Instant::now() < end && !run.stopped() {
        peak = peak.max(Watch::rss_kb(pids));
        tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now().min(end))).await;
    }
    run.stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let watched1 = watched_cpu_us(pids);
    let self_cpu1 = cpu_us(None);
    let cores_busy = core_ticks()
        .iter()
        .zip(&cores0)
        .map(|(end, start)| {
            let total = end.total.saturating_sub(start.total);
            let busy = end.busy.saturating_sub(start.busy);
            if total == 0 {
                0.0
            } else {
                busy as f64 / total as f64
            }
        })
        .collect();
    let end_sample = Watch::sample(pids);
    Window {
        secs,
        self_cpu_us: self_cpu1.saturating_sub(self_cpu0),
        cores_busy,
        watched_cpu_us: watched1.total.saturating_sub(watched0.total),
        watched_sys_us: watched1.sys.saturating_sub(watched0.sys),
        watched_rss_kb_peak: peak.max(end_sample.rss_kb),
        watched_pss_kb_end: end_sample.pss_kb,
    }
}

async fn join_latencies(tasks: Vec<Worker>) -> Vec<u32> {
    let mut all = Vec::new();
    for t in tasks {
        // A worker stuck on a dead peer must not hang the run.
        if let Ok(Ok(lat)) = tokio::time::timeout(Duration::from_secs(5), t).await {
            all.extend(lat);
        }
    }
    all
}

fn report(run: &Run, mode: &str, w: Window, mut lat: Vec<u32>, extra: Value) -> Value {
    lat.sort_unstable();
    let n = lat.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p / 100.0) * n as f64).ceil() as usize;
        f64::from(lat[i.clamp(1, n) - 1]) / 1000.0
    };
    let rate = n as f64 / w.secs.max(1e-9);
    let per_req = |us: u64| {
        if n == 0 {
            0.0
        } else {
            us as f64 / n as f64
        }
    };
    json!({
        "mode": mode,
        "label": run.common.label,
        "addr": run.common.addr.to_string(),
        "plain": run.common.plain,
        "tls": format!("{:?}", run.common.tls).to_lowercase(),
        "params": extra,
        "secs": w.secs,
        "requests": n,
        "rps": rate,
        "latency_ms": { "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0) },
        "errors": run.error_json(),
        "full_handshakes": run.full_handshakes.load(Ordering::Relaxed),
        "resumed_handshakes": run.resumed_handshakes.load(Ordering::Relaxed),
        "loadgen_cpu_us": w.self_cpu_us,
        "loadgen_cpu_util": w.self_cpu_us as f64 / 1e6 / w.secs.max(1e-9),
        "cores_busy": w.cores_busy,
        "watched_pids": run.common.watch_pid,
        "watched_cpu_us": w.watched_cpu_us,
        "watched_cpu_util": w.watched_cpu_us as f64 / 1e6 / w.secs.max(1e-9),
        "watched_cpu_us_per_req": per_req(w.watched_cpu_us),
        "watched_sys_us": w.watched_sys_us,
        "watched_sys_us_per_req": per_req(w.watched_sys_us),
        "watched_rss_kb_peak": w.watched_rss_kb_peak,
        "watched_pss_kb_end": w.watched_pss_kb_end,
    })
}

// === /proc readings ===

/// utime+stime of a process (all its threads), or of this one, in microseconds. The kernel counts
/// in clock ticks (100 Hz on Debian: `getconf CLK_TCK`), so windows should be seconds long.
fn cpu_us(pid: Option<u32>) -> u64 {
    let (user, sys) = cpu_times_us(pid);
    user + sys
}

/// The watched processes' CPU time, summed, in microseconds.
struct WatchedCpu {
    /// utime + stime.
    total: u64,
    /// stime alone: with loopback TCP a gateway's sends also pay for the receiving socket's
    /// processing, so its kernel time is a large, fairly fixed share.
    sys: u64,
}

/// Both sums from one reading of each process's `/proc/PID/stat`, so they describe the same
/// instant.
fn watched_cpu_us(pids: &[u32]) -> WatchedCpu {
    pids.iter().map(|p| cpu_times_us(Some(*p))).fold(
        WatchedCpu { total: 0, sys: 0 },
        |acc, (user, sys)| WatchedCpu {
            total: acc.total + user + sys,
            sys: acc.sys + sys,
        },
    )
}

/// (utime, stime) of a process, or of this one, in microseconds.
fn cpu_times_us(pid: Option<u32>) -> (u64, u64) {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return (0, 0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14, stime field 15 (1-based); `rest` starts at field 3.
    (ticks(11) * 10_000, ticks(12) * 10_000)
}

/// One core's line of `/proc/stat`, in clock ticks.
struct CoreTicks {
    busy: u64,
    total: u64,
}

/// `cpuN user nice system idle iowait irq softirq steal …` for every core, in order. Busy is user,
/// nice, system, irq and softirq; total adds idle, iowait and steal (time the hypervisor gave to
/// someone else, which this core could not use).
fn core_ticks() -> Vec<CoreTicks> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let t: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| t.get(i).copied().unwrap_or(0);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            CoreTicks {
                busy,
                total: busy + at(3) + at(4) + at(7),
            }
        })
        .collect()
}

struct Watch {
    rss_kb: u64,
    pss_kb: u64,
}

impl Watch {
    fn sample(pids: &[u32]) -> Self {
        Self {
            rss_kb: Self::rss_kb(pids),
            pss_kb: pids
                .iter()
                .map(|p| proc_kb(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
                .sum(),
        }
    }

    fn rss_kb(pids: &[u32]) -> u64 {
        pids.iter()
            .map(|p| proc_kb(&format!("/proc/{p}/status"), "VmRSS:"))
            .sum()
    }
}

fn proc_kb(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// === gen-crl ===

fn gen_crl(
    issuer_cert: &std::path::Path,
    issuer_key: &std::path::Path,
    count: u64,
    revoke: &[String],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
        RevokedCertParams, SerialNumber,
    };
    let started = Instant::now();
    let cert_pem = std::fs::read_to_string(issuer_cert)?;
    let key = KeyPair::from_pem(&std::fs::read_to_string(issuer_key)?)?;
    // The CRL's authority key identifier must match the issuer's subject key identifier.
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", issuer_cert.display()))?;
    let ski = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("issuer has no subject key identifier"))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
    let now = time::OffsetDateTime::now_utc();
    let when = now - time::Duration::hours(1);
    let mut revoked = Vec::with_capacity(count as usize + revoke.len());
    for s in revoke {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&hex::decode(s.trim_start_matches("0x"))?),
            revocation_time: when,
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    for i in 0..count {
        // Synthetic 9-byte serials with a fixed high prefix: never a real certificate's.
        let mut serial = [0u8; 9];
        serial[0] = 0x5e;
        serial[1..].copy_from_slice(&i.to_be_bytes());
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: when,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::PreSpecified(ski),
    };
    let crl = params.signed_by(&issuer)?;
    std::fs::write(out, crl.pem()?)?;
    println!(
        "{}",
        json!({"mode": "gen-crl", "out": out.display().to_string(), "revoked": count as usize + revoke.len(),
               "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}
