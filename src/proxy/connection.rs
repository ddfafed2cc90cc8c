//! One partner connection, from handshake to close, under one supervisor that owns everything the
//! connection starts: the hyper connection and its dedicated upstream connection, an upgraded
//! tunnel, the revocation watch, the idle and stall clocks, and drain.
//!
//! The supervisor waits for one [`Event`] at a time and hands it to one handler; each handler says
//! what happens next ([`Step`]). A connection that upgrades (WebSocket) stays under the same
//! supervisor while its tunnel runs, so it keeps its connection permit and its revocation watch.

use std::error::Error as StdError;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::CertificateError;
use rustls_pki_types::UnixTime;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::server::TlsStream;

use super::activity::{Activity, LastSeen, Tracked};
use super::handshake_budget::{HandshakeBudget, PartnerSocket};
use super::headers::ConnectionHeaders;
use super::listener::Phase;
use super::presented::{Presented, PresentedChains};
use super::service;
use super::tunnel::{self, Counted, PendingTunnel, Side, Traffic, TunnelEnd};
use super::wake_gate::WakeGate;
use crate::audit;
use crate::config::model::PartnerId;
use crate::conn_refusal::ConnRefusal;
use crate::identity::{PartnerMatch, PeerIdentity};
use crate::refusal::Refusal;
use crate::revocation::{self, Revocation, RevokedSignal};
use crate::snapshot::Snapshot;
use crate::tls::handshake;
use crate::upstream::dedicated::Dedicated;

/// How long in-flight requests may run on a connection whose certificate was just revoked.
const REVOKED_GRACE: Duration = Duration::from_millis(750);

/// How long an HTTP/1.1 connection has had nothing to do before it is parked: hyper's connection
/// is taken apart, which frees its read and write buffers (8 KiB each) and its state, and only the
/// TLS stream is kept, waiting for the partner's next bytes. Most partner connections spend most of
/// their life idle; a partner sending requests back to back never waits this long, so it never
/// pays for rebuilding the connection.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// The partner's TLS stream, boxed once the handshake is done. The connection's task moves it
/// from the handshake to the HTTP phase and in and out of hyper's connection, and an async
/// function's future keeps a slot for each place a value it holds passes through: inline, the
/// stream (about 1.2 KiB, most of it rustls' connection state) would be paid several times over
/// for the connection's whole life, parked or not.
type PartnerTls = Box<TlsStream<PartnerSocket>>;

/// What every request on a connection shares: decided once, right after the handshake.
#[derive(Debug)]
pub struct ConnContext {
    pub id: u64,
    pub peer: SocketAddr,
    pub sni: Option<Box<str>>,
    pub snapshot: Arc<Snapshot>,
    /// The verified chain, parsed once for every connection presenting it.
    pub presented: Arc<Presented>,
    /// `peer`, rendered once for every audit line.
    pub peer_text: Box<str>,
    pub partner: Option<(PartnerId, PartnerMatch)>,
    /// Set when the connection may not forward anything (unknown partner, revoked): every request
    /// gets this refusal, so the client learns why instead of seeing a bare reset.
    pub refuse: Option<Refusal>,
    pub headers: ConnectionHeaders,
    pub activity: Activity,
    /// The upstream connections this connection forwards over, its own rather than the pool's.
    pub dedicated: Option<Dedicated>,
    /// Fires when the certificate is revoked while the connection is open. Every request reads
    /// it before forwarding, so from the moment a new CRL or OCSP answer signals the connection
    /// nothing more is forwarded, even before the serve loop below has woken up to close it
    /// (HTTP/1.1 keep-alive requests and HTTP/2 streams already queued are refused instead).
    pub revoked: RevokedSignal,
    /// Why the supervisor cut the connection ([`Cut`]), for the audit line of a request whose
    /// handler is dropped before it answered.
    cut: AtomicU8,
    /// An upgrade the upstream accepted, handed from the request to the supervisor, which runs
    /// the tunnel once hyper lets go of the transport. Locked once per upgrade and once at the
    /// connection's end, never per request.
    tunnel: tokio::sync::Mutex<Option<PendingTunnel>>,
    /// Wakes HTTP/2 stream handlers when the supervisor cuts the connection. They run on tasks
    /// of their own, which dropping the connection does not end: each drops its request (and
    /// writes its audit line) when this fires.
    cut_signal: tokio::sync::Notify,
    /// The connection's place under `max_connections`. Held by the context, so HTTP/2 stream
    /// tasks hold it too: a drain waiting for every permit waits for their audit lines as well.
    _permit: OwnedSemaphorePermit,
}

/// An HTTP/2 stream's answer when its connection was cut first: hyper resets the stream.
#[derive(Debug, thiserror::Error)]
#[error("the connection was cut before the request was answered")]
pub(crate) struct ConnectionCut;

/// Why a connection was closed under requests that may still be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Cut {
    /// The gateway's `drain_timeout` passed.
    DrainTimeout = 1,
    /// The certificate was revoked and the grace period for in-flight requests passed.
    CertificateRevoked = 2,
    /// Nothing moved on a busy connection for the idle timeout.
    Stalled = 3,
}

impl ConnContext {
    pub fn identity(&self) -> &PeerIdentity {
        &self.presented.identity
    }

    /// The leaf's SHA-256 fingerprint in hex.
    pub fn fingerprint_hex(&self) -> &str {
        &self.presented.fingerprint_hex
    }

    pub fn partner_id(&self) -> Option<&str> {
        self.partner
            .and_then(|(p, _)| self.snapshot.config.partners.get(p.0))
            .map(|p| p.id.as_str())
    }

    /// Records why the supervisor is about to drop the connection with requests in flight.
    fn cut(&self, why: Cut) {
        self.cut.store(why as u8, Ordering::Relaxed);
        self.cut_signal.notify_waiters();
    }

    /// Runs an HTTP/2 stream's handler until it answers or the connection is cut. On a cut the
    /// handler is dropped here, on its own task, so its request is audited before the stream
    /// task (and with it this context and its permit) goes away.
    async fn until_cut(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<service::ProxyBody>, ConnectionCut> {
        let cut = self.cut_signal.notified();
        tokio::pin!(cut);
        cut.as_mut().enable();
        if self.cut.load(Ordering::Relaxed) != 0 {
            return Err(ConnectionCut);
        }
        tokio::select! {
            biased;
            answer = service::handle(self.clone(), req) => Ok(answer.unwrap_or_else(|never| match never {})),
            () = cut => Err(ConnectionCut),
        }
    }

    /// The reason code for a request that got no answer: why the connection was cut, or
    /// `connection_closed` when the client went away first.
    pub fn unanswered_reason(&self) -> &'static str {
        match self.cut.load(Ordering::Relaxed) {
            x if x == Cut::DrainTimeout as u8 => "drain_timeout",
            x if x == Cut::CertificateRevoked as u8 => "certificate_revoked",
            x if x == Cut::Stalled as u8 => "stalled",
            _ => "connection_closed",
        }
    }

    /// Hands an accepted upgrade to the supervisor. One per connection: HTTP/1.1 ends with its
    /// first upgrade, so a second one cannot happen there and is dropped (its client sees the
    /// connection close).
    pub fn hand_over(&self, tunnel: PendingTunnel) {
        match self.tunnel.try_lock() {
            Ok(mut slot) if slot.is_none() => *slot = Some(tunnel),
            _ => tracing::debug!(
                conn.id = self.id,
                "a second upgrade on one connection is dropped"
            ),
        }
    }

    fn take_tunnel(&self) -> Option<PendingTunnel> {
        self.tunnel.try_lock().ok()?.take()
    }

    /// What this connection puts on each request audit line.
    pub fn audit_fields(&self) -> audit::request::Connection<'_> {
        audit::request::Connection {
            id: self.id,
            client_addr: &self.peer_text,
            sni: self.sni.as_deref().unwrap_or(""),
            partner: self.partner_id().unwrap_or(crate::metrics::UNKNOWN_PARTNER),
            subject: self.identity().subject.as_str(),
            serial: self.identity().serial.as_str(),
            sha256: self.fingerprint_hex(),
            certificate_json: Some(&self.presented.certificate_json),
        }
    }
}

/// What the connections of every configuration generation share, for the process's life.
pub(crate) struct Shared {
    pub(crate) handshakes: Arc<HandshakeBudget>,
    pub(crate) chains: PresentedChains,
}

/// Serves one accepted TCP connection to the end.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
) {
    let _active = snapshot.metrics.metrics().connection();
    // The handshake and the identity check are boxed: the task holds its future for the
    // connection's whole life, at the size of its largest state, and these two are large and
    // over within the first milliseconds.
    let Some(tls) = Box::pin(tls_handshake(tcp, peer, id, &snapshot, &shared.handshakes)).await
    else {
        return;
    };
    let established = Box::pin(Supervisor::establish(
        tls,
        peer,
        id,
        snapshot,
        &shared.chains,
        phase,
        permit,
    ))
    .await;
    let Some((mut supervisor, tls)) = established else {
        return;
    };
    if supervisor.serve_http(tls).await {
        if let Some(tunnel) = supervisor.ctx.take_tunnel() {
            supervisor.run_tunnel(tunnel).await;
        }
    }
}

/// The TLS handshake, in its turn and under its timeout. A refused one is counted, audited and
/// closed here.
async fn tls_handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    snapshot: &Snapshot,
    handshakes: &Arc<HandshakeBudget>,
) -> Option<PartnerTls> {
    let started = Instant::now();
    let timeout = snapshot.config.server.limits.handshake_timeout;
    let mut handshake =
        handshake::accept(&snapshot.acceptor, handshakes.socket(tcp), timeout).await;
    match &mut handshake {
        Ok(tls) => tls.get_mut().0.handshake_done(),
        Err(refused) => refused.io_mut().map_or((), PartnerSocket::handshake_done),
    }
    snapshot.metrics.metrics().handshake(
        handshake.as_ref().err().map(|r| r.error.kind),
        started.elapsed(),
    );
    match handshake {
        Ok(tls) => Some(Box::new(tls)),
        Err(refused) => {
            super::refused_handshake::audit(snapshot, id, peer, &refused.error, started.elapsed());
            refused.close().await;
            None
        }
    }
}

/// Owns one established partner connection and everything it starts, until it closes.
struct Supervisor {
    ctx: Arc<ConnContext>,
    /// The connection's entry in the live registry: a revocation finds it while the supervisor
    /// runs, the HTTP phase and a tunnel alike.
    _live: revocation::Guard,
    revoked: RevokedSignal,
    phase: watch::Receiver<Phase>,
    /// The gateway phase this connection has acted on.
    seen_phase: Phase,
    /// A connection that already refuses every request has nothing to cut, and its signal may
    /// have fired before serving started: an OCSP query made by `identify` that finds the
    /// certificate revoked also signals the live connections registered under it, this one
    /// included. Racing it would close the connection before the client reads its
    /// `certificate_revoked` answer.
    watch_revoked: bool,
    idle: Duration,
    /// Half the idle timeout: an idle connection gives up its upstream connection after one
    /// quiet tick, and is closed within 1.5 × `idle_timeout` at worst. The idle check runs this
    /// often, or every [`PARK_AFTER`] on an active HTTP/1.1 connection.
    tick: Duration,
    /// HTTP/1.1: an idle connection is parked.
    parks: bool,
}

/// Everything that can happen to a connection while it serves HTTP.
enum Event {
    /// The HTTP connection ended by itself: closed, failed, or handed its transport to an upgrade.
    Ended(Result<(), Box<dyn StdError + Send + Sync>>),
    Revoked,
    /// The gateway moved on to draining or to cutting what is left.
    Phase(Phase),
    /// The grace period after a revocation is over.
    HardStop,
    IdleCheck,
    /// Bytes (or the end of the stream) arrived on a parked connection.
    Readable,
}

/// Everything that can happen to a tunnel.
enum TunnelEvent {
    /// Both directions are done, or one failed.
    Copied(std::io::Result<(u64, u64)>),
    Revoked,
    Phase(Phase),
    IdleCheck,
}

/// What the HTTP phase does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Wait,
    /// Stop taking requests and close once those in flight are answered.
    Close,
    /// Drop the connection now, with whatever is still in flight.
    Stop,
    /// The connection is over by itself (possibly upgraded).
    Ended,
    /// Take the idle HTTP/1.1 connection apart and wait for the partner's next bytes.
    Park,
    /// Serve HTTP again on a parked connection.
    Resume,
}

/// The HTTP phase's own state.
struct HttpState {
    /// A graceful shutdown has begun (drain, revocation or idle): no new requests are read.
    closing: bool,
    /// The HTTP/1.1 connection is parked: hyper's connection and its buffers are gone, only
    /// the TLS stream is kept.
    parked: bool,
    /// Parking waits until this many requests have been answered.
    park_after_handled: u64,
    /// Set when the certificate is revoked: in-flight requests have until it fires. Made then,
    /// not for every connection, which would hold a timer it will almost never use.
    hard_stop: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_check: Pin<Box<tokio::time::Sleep>>,
    seen: LastSeen,
}

impl Supervisor {
    /// Reads the verified peer, registers the connection for revocation and settles what every
    /// request on it shares.
    async fn establish(
        tls: PartnerTls,
        peer: SocketAddr,
        id: u64,
        snapshot: Arc<Snapshot>,
        chains: &PresentedChains,
        phase: watch::Receiver<Phase>,
        permit: OwnedSemaphorePermit,
    ) -> Option<(Self, PartnerTls)> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let (_, session) = tls.get_ref();
        let chain = session.peer_certificates().unwrap_or(&[]);
        // Register before re-checking: a CRL swapped in between then still finds this connection.
        let registry = snapshot.revocation.registry().clone();
        let (live, revoked) = registry.register_chain(Revocation::chain_keys(chain), id);
        let presented = match chains.get_or_parse(chain, &snapshot.config.forward) {
            Ok(presented) => presented,
            Err(reason) => {
                tracing::warn!(conn.id = id, client.addr = %peer, %reason, "cannot read the verified peer certificate");
                return None;
            }
        };
        let (partner, refuse) = identify(&snapshot, &presented.identity, chain).await;
        let partner_id = partner
            .and_then(|(p, _)| snapshot.config.partners.get(p.0))
            .map(|p| p.id.as_str())
            .filter(|_| refuse.is_none());
        let headers = ConnectionHeaders::build(partner_id, presented.headers.clone(), peer);
        let limits = &snapshot.config.server.limits;
        let idle = limits.idle_timeout;
        let ctx = Arc::new(ConnContext {
            id,
            peer,
            sni: session.server_name().map(Box::from),
            snapshot: snapshot.clone(),
            peer_text: peer.to_string().into(),
            presented,
            partner,
            refuse,
            headers,
            activity: Activity::default(),
            dedicated: Dedicated::for_connection(h2),
            revoked: revoked.clone(),
            cut: AtomicU8::new(0),
            tunnel: tokio::sync::Mutex::new(None),
            cut_signal: tokio::sync::Notify::new(),
            _permit: permit,
        });
        if ctx.refuse.is_none() {
            if let Some(partner) = ctx.partner_id() {
                let metrics = snapshot.metrics.metrics();
                metrics.saw_certificate(partner, &ctx.identity().serial, ctx.identity().not_after);
            }
        }
        tracing::debug!(
            conn.id = id,
            client.addr = &*ctx.peer_text,
            partner = ctx.partner_id(),
            subject = %ctx.identity().subject,
            refused = ctx.refuse.map(Refusal::as_str),
            "connection established"
        );
        let supervisor = Self {
            watch_revoked: ctx.refuse.is_none(),
            ctx,
            _live: live,
            revoked,
            phase,
            seen_phase: Phase::Serving,
            idle,
            tick: (idle / 2).max(Duration::from_millis(50)),
            parks: !h2,
        };
        Some((supervisor, tls))
    }

    /// Serves HTTP (h1 or h2 by ALPN) until the connection ends. True when it ended by itself,
    /// which is also how an upgrade hands its transport over; false when the supervisor cut it.
    async fn serve_http(&mut self, tls: PartnerTls) -> bool {
        let ctx = self.ctx.clone();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = Tracked::new(tls, ctx.clone());
        let mut http = HttpState {
            closing: false,
            parked: false,
            park_after_handled: 0,
            hard_stop: None,
            idle_check: Box::pin(tokio::time::sleep(self.active_tick())),
            seen: LastSeen::new(&ctx.activity, Instant::now()),
        };
        // Shutdown, revocation and the timers are polled only when one of them woke the task, not
        // on each of the few wakes per request the connection and its upstream make.
        let gate = WakeGate::new();
        if h2 {
            self.serve_h2(io, &gate, &mut http).await
        } else {
            self.serve_h1(io, &gate, &mut http).await
        }
    }

    async fn serve_h2(
        &mut self,
        io: Tracked<PartnerTls>,
        gate: &WakeGate,
        http: &mut HttpState,
    ) -> bool {
        let ctx = self.ctx.clone();
        // Boxed like the HTTP/1.1 one: the task's future is as large as its largest state, and
        // most connections never are in this one.
        let h2_ctx = ctx.clone();
        // Each stream's handler is boxed: hyper moves a stream's future several times on its way
        // into the task it spawns (H2Stream, the executor, tokio's task cell), and the handler
        // future is kilobytes large; a box moves as one pointer.
        let streams = service_fn(move |req| Box::pin(h2_ctx.clone().until_cut(req)));
        let mut conn = Box::pin(
            ctx.snapshot
                .http2
                .serve_connection_with_upgrades(TokioIo::new(io), streams),
        );
        loop {
            let event = self.next_http_event(conn.as_mut(), gate, http).await;
            match self.on_http_event(event, http) {
                Step::Wait | Step::Park | Step::Resume => {}
                Step::Close => conn.as_mut().graceful_shutdown(),
                Step::Stop => return false,
                Step::Ended => return true,
            }
        }
    }

    /// HTTP/1.1, parking between requests: once idle, hyper's connection (and its buffers) is
    /// taken apart down to the TLS stream, and built again when the partner sends.
    async fn serve_h1(
        &mut self,
        mut io: Tracked<PartnerTls>,
        gate: &WakeGate,
        http: &mut HttpState,
    ) -> bool {
        let ctx = self.ctx.clone();
        let svc_ctx = ctx.clone();
        let mut svc = service_fn(move |req| service::handle(svc_ctx.clone(), req));
        loop {
            // Boxed, so that a parked connection's task holds none of it.
            let mut conn = Box::new(
                ctx.snapshot
                    .http1
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades(),
            );
            if http.closing {
                Pin::new(&mut *conn).graceful_shutdown();
            }
            let parts = loop {
                let event = self.next_http_event(Pin::new(&mut *conn), gate, http).await;
                match self.on_http_event(event, http) {
                    Step::Wait | Step::Resume => {}
                    Step::Close => Pin::new(&mut *conn).graceful_shutdown(),
                    Step::Stop => return false,
                    Step::Ended => return true,
                    Step::Park => match conn.into_parts() {
                        Some(parts) => break parts,
                        // Only an upgraded connection has no parts, and it has ended.
                        None => return true,
                    },
                }
            };
            let mut tracked = parts.io.into_inner();
            svc = parts.service;
            let read_buf = parts.read_buf;
            if !read_buf.is_empty() {
                // Bytes of a request head hyper had read: serve them at once, and do not park
                // again before a request is answered, so a trickle of bytes cannot restart the
                // header read timeout forever.
                tracked.unread = read_buf;
                http.park_after_handled = ctx.activity.handled() + 1;
            } else {
                // Empty, but it still owns hyper's whole read buffer: freed before parking.
                drop(read_buf);
                let session = tracked.inner.get_ref().1;
                if session.wants_read() && !session.wants_write() {
                    if let Some(ended) = self.park(&tracked, gate, http).await {
                        return ended;
                    }
                }
            }
            if http.parked {
                http.parked = false;
                let next = Instant::now() + self.active_tick();
                http.idle_check.as_mut().reset(next.into());
            }
            io = tracked;
        }
    }

    /// Waits, with no HTTP connection, for the partner's next bytes or for something that ends
    /// the connection. `Some` when the connection is over (as [`Self::serve_http`] returns);
    /// `None` to serve HTTP again, closing at once when `http.closing` says so.
    async fn park(
        &mut self,
        io: &Tracked<PartnerTls>,
        gate: &WakeGate,
        http: &mut HttpState,
    ) -> Option<bool> {
        let _parked = self.ctx.snapshot.metrics.metrics().parked();
        http.parked = true;
        let now = Instant::now();
        let next = now + self.parked_tick(http, now);
        http.idle_check.as_mut().reset(next.into());
        loop {
            let event = self.next_parked_event(io, gate, http).await;
            match self.on_http_event(event, http) {
                Step::Wait | Step::Park => {}
                Step::Resume | Step::Close => return None,
                Step::Stop => return Some(false),
                Step::Ended => return Some(true),
            }
        }
    }

    /// How long until the next idle check on an active connection: HTTP/1.1 connections are
    /// checked often enough to be parked soon after they go quiet.
    fn active_tick(&self) -> Duration {
        if self.parks {
            self.tick.min(PARK_AFTER)
        } else {
            self.tick
        }
    }

    /// How long until the next idle check on a parked connection: the usual tick, or sooner
    /// when the header read timeout, which hyper would have enforced on the idle connection, is
    /// due first.
    fn parked_tick(&self, http: &HttpState, now: Instant) -> Duration {
        let idle_for = http
            .seen
            .idle_for(&self.ctx.activity, now)
            .unwrap_or_default();
        let header_timeout = self.ctx.snapshot.config.server.limits.header_read_timeout;
        self.tick
            .min(header_timeout.saturating_sub(idle_for))
            .max(Duration::from_millis(50))
    }

    /// Waits for the next event, driving the connection's dedicated upstream connection meanwhile.
    async fn next_http_event<C, E>(
        &mut self,
        mut conn: Pin<&mut C>,
        gate: &WakeGate,
        http: &mut HttpState,
    ) -> Event
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Self {
            ctx,
            revoked,
            phase,
            seen_phase,
            watch_revoked,
            ..
        } = self;
        let dedicated = ctx.dedicated.as_ref();
        loop {
            let rare = std::pin::pin!(rare_event(
                revoked,
                phase,
                *seen_phase,
                *watch_revoked,
                http
            ));
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| dedicated.map_or(Poll::Pending, |d| d.poll_drive(cx))), if dedicated.is_some() => continue,
                result = conn.as_mut() => return Event::Ended(result.map_err(Into::into)),
                event = gate.gated(rare) => return event,
            }
        }
    }

    /// [`Self::next_http_event`] for a parked connection: its partner's next bytes take the
    /// place of the HTTP connection.
    async fn next_parked_event(
        &mut self,
        io: &Tracked<PartnerTls>,
        gate: &WakeGate,
        http: &mut HttpState,
    ) -> Event {
        let Self {
            ctx,
            revoked,
            phase,
            seen_phase,
            watch_revoked,
            ..
        } = self;
        let dedicated = ctx.dedicated.as_ref();
        let tcp = io.inner.get_ref().0.tcp();
        loop {
            let rare = std::pin::pin!(rare_event(
                revoked,
                phase,
                *seen_phase,
                *watch_revoked,
                http
            ));
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| dedicated.map_or(Poll::Pending, |d| d.poll_drive(cx))), if dedicated.is_some() => continue,
                // An error or the end of the stream included: serving HTTP again reports it.
                _ = tcp.readable() => return Event::Readable,
                event = gate.gated(rare) => return event,
            }
        }
    }

    fn on_http_event(&mut self, event: Event, http: &mut HttpState) -> Step {
        match event {
            Event::Ended(result) => self.on_ended(result),
            Event::Revoked => self.on_revoked(http),
            Event::Phase(phase) => self.on_phase(phase, http),
            Event::HardStop => self.on_hard_stop(),
            Event::IdleCheck => self.on_idle_check(http),
            Event::Readable => Step::Resume,
        }
    }

    fn on_ended(&self, result: Result<(), Box<dyn StdError + Send + Sync>>) -> Step {
        let Err(e) = result else {
            return Step::Ended;
        };
        let ctx = &self.ctx;
        match ConnRefusal::classify(&*e, ctx.activity.read_since_handled()) {
            Some(reason) => refused(ctx, reason, Some(&*e)),
            None => tracing::debug!(conn.id = ctx.id, error = %e, "connection ended with an error"),
        }
        Step::Stop
    }

    fn on_revoked(&self, http: &mut HttpState) -> Step {
        audit_revoked(&self.ctx);
        http.closing = true;
        http.hard_stop = Some(Box::pin(tokio::time::sleep(REVOKED_GRACE)));
        Step::Close
    }

    fn on_phase(&mut self, phase: Phase, http: &mut HttpState) -> Step {
        self.seen_phase = phase;
        match phase {
            Phase::Serving => Step::Wait,
            Phase::Draining if http.closing => Step::Wait,
            Phase::Draining => {
                http.closing = true;
                Step::Close
            }
            Phase::Cut => {
                self.ctx.cut(Cut::DrainTimeout);
                Step::Stop
            }
        }
    }

    /// In-flight requests had their grace period; a streaming one ends here.
    fn on_hard_stop(&self) -> Step {
        self.ctx.cut(Cut::CertificateRevoked);
        Step::Stop
    }

    fn on_idle_check(&self, http: &mut HttpState) -> Step {
        let ctx = &self.ctx;
        let now = Instant::now();
        http.seen.observe(&ctx.activity, now);
        let next = if http.parked {
            self.parked_tick(http, now)
        } else {
            self.active_tick()
        };
        http.idle_check.as_mut().reset((now + next).into());
        let busy = http.closing || ctx.activity.busy();
        if busy && http.seen.stalled_for(now) >= self.idle {
            // A response nobody reads, or a request that stopped arriving: graceful shutdown
            // would wait for it forever.
            ctx.cut(Cut::Stalled);
            refused(ctx, ConnRefusal::Stalled, None);
            return Step::Stop;
        }
        if http.closing {
            return Step::Wait;
        }
        let Some(idle_for) = http.seen.idle_for(&ctx.activity, now) else {
            return Step::Wait;
        };
        // Not while a response is still streaming from it (a body that pauses longer than half
        // the idle timeout).
        let quiet = !ctx.activity.streaming();
        if let Some(dedicated) = ctx
            .dedicated
            .as_ref()
            .filter(|_| quiet && idle_for >= self.tick)
        {
            dedicated.release();
        }
        // hyper closes an HTTP/1.1 connection on which no request head arrives within the
        // header read timeout, an idle keep-alive one included; a parked connection keeps that.
        let header_timeout = ctx.snapshot.config.server.limits.header_read_timeout;
        if idle_for >= self.idle || (http.parked && idle_for >= header_timeout) {
            tracing::debug!(conn.id = ctx.id, "closing idle connection");
            http.closing = true;
            return Step::Close;
        }
        let parkable = self.parks
            && !http.parked
            && quiet
            && idle_for >= PARK_AFTER
            && !ctx.activity.unflushed()
            && !ctx.activity.read_since_handled()
            && ctx.activity.handled() >= http.park_after_handled;
        if parkable {
            Step::Park
        } else {
            Step::Wait
        }
    }

    /// Splices the upgraded partner connection to the upgraded upstream connection until either
    /// side closes, the tunnel idles out, the certificate is revoked or the gateway drains; then
    /// closes both sides and writes the `tunnel_closed` audit line.
    async fn run_tunnel(&mut self, tunnel: PendingTunnel) {
        let PendingTunnel {
            client,
            upstream,
            meta,
        } = tunnel;
        let traffic = Traffic::default();
        let handed = tokio::time::timeout(self.idle, async { tokio::try_join!(client, upstream) });
        let (client, upstream) = match handed.await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let end = TunnelEnd::UpgradeFailed;
                return tunnel::audit_end(&self.ctx, &meta, &traffic, end, Some(&e));
            }
            Err(_) => {
                let end = TunnelEnd::UpgradeFailed;
                return tunnel::audit_end(&self.ctx, &meta, &traffic, end, None);
            }
        };
        let mut client = Counted::new(client, Side::Client, &traffic);
        let mut upstream = Counted::new(upstream, Side::Upstream, &traffic);
        let (end, error) = self.splice(&mut client, &mut upstream, &traffic).await;
        if !matches!(end, TunnelEnd::ClientClosed | TunnelEnd::UpstreamClosed) {
            client.close().await;
            upstream.close().await;
        }
        let error = error.as_ref().map(|e| e as &(dyn StdError + 'static));
        tunnel::audit_end(&self.ctx, &meta, &traffic, end, error);
    }

    /// Copies both ways until something ends the tunnel, and says what.
    async fn splice(
        &mut self,
        client: &mut Counted<'_>,
        upstream: &mut Counted<'_>,
        traffic: &Traffic,
    ) -> (TunnelEnd, Option<std::io::Error>) {
        if self.seen_phase > Phase::Serving {
            return (TunnelEnd::Drain, None);
        }
        let copy = tokio::io::copy_bidirectional(client, upstream);
        tokio::pin!(copy);
        let mut idle_check = Box::pin(tokio::time::sleep(self.tick));
        let mut last_moved = (traffic.total(), Instant::now());
        loop {
            let event = {
                let Self {
                    revoked,
                    phase,
                    seen_phase,
                    watch_revoked,
                    ..
                } = self;
                tokio::select! {
                    biased;
                    copied = &mut copy => TunnelEvent::Copied(copied),
                    () = revoked.revoked(), if *watch_revoked => TunnelEvent::Revoked,
                    p = next_phase(phase, *seen_phase), if *seen_phase < Phase::Cut => TunnelEvent::Phase(p),
                    () = &mut idle_check => TunnelEvent::IdleCheck,
                }
            };
            let ended = match event {
                TunnelEvent::Copied(Ok(copied)) => Some((traffic.end(&Ok(copied)), None)),
                TunnelEvent::Copied(Err(e)) => Some((TunnelEnd::Error, Some(e))),
                TunnelEvent::Revoked => {
                    audit_revoked(&self.ctx);
                    Some((TunnelEnd::CertificateRevoked, None))
                }
                TunnelEvent::Phase(phase) => {
                    // A tunnel has no request to finish: draining closes it at once.
                    self.seen_phase = phase;
                    Some((TunnelEnd::Drain, None))
                }
                TunnelEvent::IdleCheck => {
                    let now = Instant::now();
                    idle_check.as_mut().reset((now + self.tick).into());
                    tunnel_idle(traffic, &mut last_moved, now, self.idle)
                        .then_some((TunnelEnd::IdleTimeout, None))
                }
            };
            if let Some(ended) = ended {
                return ended;
            }
        }
    }
}

/// Shutdown, revocation and the connection's timers: the events that rarely happen.
async fn rare_event(
    revoked: &mut RevokedSignal,
    phase: &mut watch::Receiver<Phase>,
    seen_phase: Phase,
    watch_revoked: bool,
    http: &mut HttpState,
) -> Event {
    let revoked_already = http.hard_stop.is_some();
    let hard_stop = std::future::poll_fn(|cx| match &mut http.hard_stop {
        Some(sleep) => sleep.as_mut().poll(cx),
        None => Poll::Pending,
    });
    tokio::select! {
        biased;
        () = revoked.revoked(), if watch_revoked && !revoked_already => Event::Revoked,
        p = next_phase(phase, seen_phase), if seen_phase < Phase::Cut => Event::Phase(p),
        () = hard_stop, if revoked_already => Event::HardStop,
        () = &mut http.idle_check => Event::IdleCheck,
    }
}

/// Whether no byte has moved through the tunnel for `idle`, dating a change by the check that
/// saw it (so never early).
fn tunnel_idle(traffic: &Traffic, last: &mut (u64, Instant), now: Instant, idle: Duration) -> bool {
    let total = traffic.total();
    if total != last.0 {
        *last = (total, now);
        return false;
    }
    now.saturating_duration_since(last.1) >= idle
}

/// The gateway's next phase after `seen`. A gateway dropped without shutting down counts as
/// draining.
async fn next_phase(rx: &mut watch::Receiver<Phase>, seen: Phase) -> Phase {
    // Copied out at once: the watch's read lock is not held across an await.
    let next = rx.wait_for(|p| *p > seen).await.map(|p| *p);
    match next {
        Ok(p) => p,
        Err(_) if seen == Phase::Serving => Phase::Draining,
        Err(_) => std::future::pending().await,
    }
}

fn audit_revoked(ctx: &ConnContext) {
    tracing::info!(
        target: "certgate::audit",
        event = "connection_revoked",
        conn.id = ctx.id,
        client.addr = &*ctx.peer_text,
        partner = ctx.partner_id().unwrap_or("unknown"),
        cert.serial = %ctx.identity().serial,
        "certificate revoked: closing its live connection"
    );
}

/// Counts and audits a connection ended because its client crossed a limit or broke the
/// protocol. Once per connection, so a flood of refused connections costs one line each.
fn refused(
    ctx: &ConnContext,
    reason: ConnRefusal,
    error: Option<&(dyn std::error::Error + 'static)>,
) {
    ctx.snapshot.metrics.metrics().connection_refused(reason);
    tracing::info!(
        target: "certgate::audit",
        event = "connection_refused",
        decision = "deny",
        conn.id = ctx.id,
        client.addr = &*ctx.peer_text,
        partner = ctx.partner_id().unwrap_or(crate::metrics::UNKNOWN_PARTNER),
        cert.serial = %ctx.identity().serial,
        cert.sha256 = ctx.fingerprint_hex(),
        reason = reason.as_str(),
        error = error.map(tracing::field::display),
        "connection closed: the client crossed a limit or broke the protocol"
    );
}

pub(super) type Identified = (Option<(PartnerId, PartnerMatch)>, Option<Refusal>);

/// Finds the partner of `identity` (parsed from `chain`'s leaf) and re-checks revocation (resumed
/// sessions skip the verifier, so this is what keeps resumption from outliving a revocation), then
/// settles OCSP when the handshake found no cached answer.
///
/// [`super::admission::admit`] runs this too, so `certgate inspect` gives the same verdict.
pub(super) async fn identify(
    snapshot: &Snapshot,
    identity: &PeerIdentity,
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Identified {
    let partner = snapshot.partners.lookup(identity);
    let refuse = match (partner, chain.split_first()) {
        // Without a leaf there is no identity to have found a partner by.
        (None, _) | (_, None) => Some(Refusal::UnknownPartner),
        (Some((pid, _)), Some((leaf, intermediates))) => {
            let bundle = snapshot.config.partners[pid.0].trust_bundle;
            let now = UnixTime::now();
            let checked = if snapshot.trust.bundles.len() > 1 {
                snapshot
                    .verifier
                    .verify_for_bundle(bundle, leaf, intermediates, now)
                    .map_err(|e| match e {
                        rustls::Error::InvalidCertificate(c) => c,
                        _ => CertificateError::UnknownIssuer,
                    })
            } else {
                snapshot.verifier.check_chain_revocation(bundle, chain, now)
            };
            let checked = match checked {
                Ok(()) if snapshot.revocation.needs_ocsp(bundle, leaf.as_ref()) => {
                    snapshot.revocation.check_ocsp(bundle, chain).await
                }
                other => other,
            };
            match checked {
                Ok(()) => None,
                Err(CertificateError::Revoked) => Some(Refusal::CertificateRevoked),
                Err(CertificateError::UnknownRevocationStatus) => Some(Refusal::RevocationUnknown),
                Err(_) => Some(Refusal::WrongTrustBundle),
            }
        }
    };
    (partner, refuse)
}
