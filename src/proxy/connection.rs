//! One partner connection: handshake, identity, partner, then HTTP until idle, drained or revoked.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::CertificateError;
use rustls_pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::headers::ConnectionHeaders;
use super::refusal::Refusal;
use super::service;
use super::wake_gate::WakeGate;
use crate::audit;
use crate::config::model::PartnerId;
use crate::conn_refusal::ConnRefusal;
use crate::identity::{PartnerMatch, PeerIdentity};
use crate::revocation::{Revocation, RevokedSignal};
use crate::snapshot::Snapshot;
use crate::tls::handshake;
use crate::upstream::dedicated::Dedicated;

/// How long in-flight requests may run on a connection whose certificate was just revoked.
const REVOKED_GRACE: Duration = Duration::from_millis(750);

/// What every request on a connection shares: decided once, right after the handshake.
#[derive(Debug)]
pub struct ConnContext {
    pub id: u64,
    pub peer: SocketAddr,
    pub sni: Option<Box<str>>,
    pub snapshot: Arc<Snapshot>,
    pub identity: Arc<PeerIdentity>,
    /// `peer`, rendered once for every audit line.
    pub peer_text: Box<str>,
    /// `identity`'s SHA-256 fingerprint in hex, rendered once for every audit line.
    pub fingerprint_hex: Box<str>,
    pub partner: Option<(PartnerId, PartnerMatch)>,
    /// Set when the connection may not forward anything (unknown partner, revoked): every request
    /// gets this refusal, so the client learns why instead of seeing a bare reset.
    pub refuse: Option<Refusal>,
    pub headers: ConnectionHeaders,
    pub activity: Activity,
    /// HTTP/1.1 connections forward over an upstream connection of their own.
    pub dedicated: Option<Dedicated>,
    /// Fires when the certificate is revoked while the connection is open. Every request reads
    /// it before forwarding, so from the moment a new CRL or OCSP answer signals the connection
    /// nothing more is forwarded, even before the serve loop below has woken up to close it
    /// (HTTP/1.1 keep-alive requests and HTTP/2 streams already queued are refused instead).
    pub revoked: RevokedSignal,
}

impl ConnContext {
    pub fn partner_id(&self) -> Option<&str> {
        self.partner
            .and_then(|(p, _)| self.snapshot.config.partners.get(p.0))
            .map(|p| p.id.as_str())
    }

    /// What this connection puts on each request audit line.
    pub fn audit_fields(&self) -> audit::request::Connection<'_> {
        audit::request::Connection {
            id: self.id,
            client_addr: &self.peer_text,
            sni: self.sni.as_deref().unwrap_or(""),
            partner: self.partner_id().unwrap_or(crate::metrics::UNKNOWN_PARTNER),
            subject: self.identity.subject.as_str(),
            serial: self.identity.serial.as_str(),
            sha256: &self.fingerprint_hex,
        }
    }
}

/// What the connection is doing, counted rather than timed: in-flight requests, streaming
/// responses, and how many reads, writes and finished requests there have been. The request path
/// only bumps counters; the idle check (a few times per idle timeout) reads them and dates each
/// change itself ([`LastSeen`]), so no request reads the clock for it (issue 5: about 3 clock reads
/// and their conversions per proxied request).
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Reads and writes that moved bytes. Only the connection's transport bumps it, and only the
    /// serve task drives that transport, so a plain load and store suffice.
    io: AtomicU64,
    /// Requests whose handler returned.
    handled: AtomicU64,
    /// Reads that brought bytes, and their number when the last request's handler returned:
    /// tells a half-sent request head from a keep-alive connection that sent nothing more.
    reads: AtomicU64,
    reads_when_handled: AtomicU64,
    /// Responses whose body has not ended yet (handed to hyper, still streaming).
    responses: AtomicUsize,
}

impl Activity {
    fn io_progress(&self) {
        bump(&self.io);
    }

    fn read_progress(&self) {
        bump(&self.reads);
        bump(&self.io);
    }

    /// Whether bytes arrived since the last request was handled (or since the handshake).
    /// Over-approximates when a request body kept arriving after its handler returned.
    fn read_since_handled(&self) -> bool {
        self.reads.load(Ordering::Relaxed) > self.reads_when_handled.load(Ordering::Relaxed)
    }

    /// A response's body starts streaming; [`Activity::response_ended`] follows when it ends or is
    /// dropped.
    pub fn response_started(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn response_ended(&self) {
        self.responses.fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks a request as in flight until the guard drops.
    pub fn enter(&self) -> ActivityGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Every event that makes the connection not idle: bytes moved, a request finished.
    fn events(&self) -> u64 {
        self.io
            .load(Ordering::Relaxed)
            .wrapping_add(self.handled.load(Ordering::Relaxed))
    }
}

/// A counter with a single writer: one load and one store, without a locked instruction.
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

pub struct ActivityGuard<'a>(&'a Activity);

impl Drop for ActivityGuard<'_> {
    fn drop(&mut self) {
        self.0
            .reads_when_handled
            .store(self.0.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        // HTTP/2 handlers run on tasks of their own, several at once: a locked add.
        self.0.handled.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`Activity`]'s counters as the idle check last saw them, each dated by the check that first
/// saw its current value. That date is at most one check late, so "no progress for `idle`" is
/// never judged early, and a connection is still closed within 1.5 × `idle_timeout` of its last
/// activity with checks every `idle_timeout / 2`: one check to see the change, two more to see
/// it last.
struct LastSeen {
    io: Dated,
    events: Dated,
}

/// A counter's value and the check that first saw it.
struct Dated {
    count: u64,
    at: Instant,
}

impl LastSeen {
    fn new(activity: &Activity, now: Instant) -> Self {
        Self {
            io: Dated::new(activity.io.load(Ordering::Relaxed), now),
            events: Dated::new(activity.events(), now),
        }
    }

    fn observe(&mut self, activity: &Activity, now: Instant) {
        self.io.observe(activity.io.load(Ordering::Relaxed), now);
        self.events.observe(activity.events(), now);
    }

    /// How long no byte has moved on the connection.
    fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.io.at)
    }

    /// How long the connection has had nothing to do; `None` while a request is in flight.
    fn idle_for(&self, activity: &Activity, now: Instant) -> Option<Duration> {
        (!activity.busy()).then(|| now.saturating_duration_since(self.events.at))
    }
}

impl Dated {
    fn new(count: u64, now: Instant) -> Self {
        Self { count, at: now }
    }

    fn observe(&mut self, count: u64, now: Instant) {
        if count != self.count {
            *self = Self::new(count, now);
        }
    }
}

/// The connection's transport, noting every read or write that moved bytes.
struct Tracked<T> {
    inner: T,
    ctx: Arc<ConnContext>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.ctx.activity.read_progress();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.ctx.activity.io_progress();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.ctx.activity.io_progress();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    snapshot: Arc<Snapshot>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = snapshot.config.server.limits.clone();
    let metrics = snapshot.metrics.metrics().clone();
    let _active = metrics.connection();
    let started = Instant::now();
    let handshake = handshake::accept(&snapshot.acceptor, tcp, limits.handshake_timeout).await;
    metrics.handshake(
        handshake.as_ref().err().map(|r| r.error.kind),
        started.elapsed(),
    );
    let tls = match handshake {
        Ok(tls) => tls,
        Err(refused) => {
            let e = &refused.error;
            tracing::info!(
                target: "certgate::audit",
                event = "handshake_refused",
                decision = "deny",
                conn.id = id,
                client.addr = %peer,
                reason = e.kind.as_str(),
                error = e.source.as_ref().map(tracing::field::display),
                duration_ms = started.elapsed().as_secs_f64() * 1e3,
                "tls handshake refused"
            );
            refused.close().await;
            return;
        }
    };

    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let registry = snapshot.revocation.registry().clone();
    let (ctx, _live, mut revoked) = {
        let (_, session) = tls.get_ref();
        let chain = session.peer_certificates().unwrap_or(&[]);
        let sni = session.server_name().map(Box::from);
        // Register before re-checking: a CRL swapped in between then still finds this connection.
        let (live, revoked) = registry.register_chain(Revocation::chain_keys(chain), id);
        match identify(&snapshot, chain).await {
            Ok((identity, partner, refuse)) => {
                let partner_id = partner
                    .and_then(|(p, _)| snapshot.config.partners.get(p.0))
                    .map(|p| p.id.as_str())
                    .filter(|_| refuse.is_none());
                let headers = ConnectionHeaders::build(
                    &snapshot.config.forward,
                    partner_id,
                    &identity,
                    chain,
                    peer,
                );
                let ctx = Arc::new(ConnContext {
                    id,
                    peer,
                    sni,
                    snapshot: snapshot.clone(),
                    peer_text: peer.to_string().into(),
                    fingerprint_hex: identity.fingerprint_hex().into(),
                    identity: Arc::new(identity),
                    partner,
                    refuse,
                    headers,
                    activity: Activity::default(),
                    dedicated: (!h2).then(Dedicated::default),
                    revoked: revoked.clone(),
                });
                (ctx, live, revoked)
            }
            Err(reason) => {
                tracing::warn!(conn.id = id, client.addr = %peer, %reason, "cannot read the verified peer certificate");
                return;
            }
        }
    };
    if ctx.refuse.is_none() {
        if let Some(partner) = ctx.partner_id() {
            metrics.saw_certificate(partner, &ctx.identity.serial, ctx.identity.not_after);
        }
    }
    tracing::debug!(
        conn.id = id,
        client.addr = &*ctx.peer_text,
        partner = ctx.partner_id(),
        subject = %ctx.identity.subject,
        refused = ctx.refuse.map(Refusal::reason),
        "connection established"
    );

    let builder = if h2 { &snapshot.http2 } else { &snapshot.http1 };
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| service::handle(svc_ctx.clone(), req));
    let io = Tracked {
        inner: tls,
        ctx: ctx.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);

    let idle = limits.idle_timeout;
    // Checked twice per idle period: closes within 1.5 × idle_timeout at worst.
    let tick = (idle / 2).max(Duration::from_millis(50));
    let mut idle_check = Box::pin(tokio::time::sleep(tick));
    let mut closing = false;
    let mut cut = false;
    let mut hard_stop = Box::pin(tokio::time::sleep(Duration::ZERO));
    // A connection that already refuses every request has nothing to cut, and its signal may have
    // fired before serving started: an OCSP query made by `identify` that finds the certificate
    // revoked also signals the live connections registered under it, this one included. Racing
    // it would close the connection before the client reads its `certificate_revoked` answer.
    let watch_revoked = ctx.refuse.is_none();
    let dedicated = ctx.dedicated.as_ref();
    // Shutdown, revocation and the timers are polled only when one of them woke the task, not on
    // each of the few wakes per request the connection and its upstream make.
    let gate = WakeGate::new();
    let mut seen = LastSeen::new(&ctx.activity, Instant::now());
    loop {
        let control = {
            let rare = std::pin::pin!(async {
                tokio::select! {
                    biased;
                    () = revoked.revoked(), if watch_revoked && !cut => Control::Revoked,
                    _ = shutdown.wait_for(|stop| *stop), if !closing => Control::Shutdown,
                    () = &mut hard_stop, if cut => Control::HardStop,
                    () = &mut idle_check => Control::IdleCheck,
                }
            });
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| dedicated.map_or(Poll::Pending, |d| d.poll_drive(cx))), if dedicated.is_some() => continue,
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        match ConnRefusal::classify(&*e, ctx.activity.read_since_handled()) {
                            Some(reason) => refused(&ctx, reason, Some(&*e)),
                            None => {
                                tracing::debug!(conn.id = id, error = %e, "connection ended with an error");
                            }
                        }
                    }
                    break;
                }
                control = gate.gated(rare) => control,
            }
        };
        match control {
            Control::Shutdown => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            Control::Revoked => {
                tracing::info!(
                    target: "certgate::audit",
                    event = "connection_revoked",
                    conn.id = id,
                    client.addr = &*ctx.peer_text,
                    partner = ctx.partner_id().unwrap_or("unknown"),
                    cert.serial = %ctx.identity.serial,
                    "certificate revoked: closing its live connection"
                );
                conn.as_mut().graceful_shutdown();
                closing = true;
                cut = true;
                hard_stop
                    .as_mut()
                    .reset((Instant::now() + REVOKED_GRACE).into());
            }
            // In-flight requests had their grace period; a streaming one ends here.
            Control::HardStop => break,
            Control::IdleCheck => {
                let now = Instant::now();
                idle_check.as_mut().reset((now + tick).into());
                seen.observe(&ctx.activity, now);
                let busy = closing || ctx.activity.busy();
                if busy && seen.stalled_for(now) >= idle {
                    // A response nobody reads, or a request that stopped arriving: graceful
                    // shutdown would wait for it forever.
                    refused(&ctx, ConnRefusal::Stalled, None);
                    break;
                }
                if !closing {
                    if let Some(idle_for) = seen.idle_for(&ctx.activity, now) {
                        // Not while a response is still streaming from it (a body that pauses
                        // longer than half the idle timeout).
                        let quiet = ctx.activity.responses.load(Ordering::Relaxed) == 0;
                        if let Some(dedicated) = dedicated.filter(|_| quiet && idle_for >= tick) {
                            dedicated.release();
                        }
                        if idle_for >= idle {
                            tracing::debug!(conn.id = id, "closing idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        }
    }
}

/// What woke the serve loop other than the connection and its upstream.
enum Control {
    Shutdown,
    Revoked,
    HardStop,
    IdleCheck,
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
        cert.serial = %ctx.identity.serial,
        cert.sha256 = &*ctx.fingerprint_hex,
        reason = reason.as_str(),
        error = error.map(tracing::field::display),
        "connection closed: the client crossed a limit or broke the protocol"
    );
}

pub(super) type Identified = (
    PeerIdentity,
    Option<(PartnerId, PartnerMatch)>,
    Option<Refusal>,
);

/// Parses the leaf once, finds the partner and re-checks revocation (resumed sessions skip the
/// verifier, so this is what keeps resumption from outliving a revocation), then settles OCSP when
/// the handshake found no cached answer.
///
/// [`super::admission::admit`] runs this too, so `certgate inspect` gives the same verdict.
pub(super) async fn identify(
    snapshot: &Snapshot,
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Result<Identified, String> {
    let leaf = chain.first().ok_or("no client certificate")?;
    let identity = PeerIdentity::from_der(leaf).map_err(|e| e.to_string())?;
    let partner = snapshot.partners.lookup(&identity);
    let refuse = match partner {
        None => Some(Refusal::UnknownPartner),
        Some((pid, _)) => {
            let bundle = snapshot.config.partners[pid.0].trust_bundle;
            let now = UnixTime::now();
            let checked = if snapshot.trust.bundles.len() > 1 {
                snapshot
                    .verifier
                    .verify_for_bundle(bundle, leaf, &chain[1..], now)
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
    Ok((identity, partner, refuse))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(2);

    #[test]
    fn activity_is_dated_by_the_check_that_saw_it_never_earlier() {
        let activity = Activity::default();
        let t0 = Instant::now();
        let mut seen = LastSeen::new(&activity, t0);
        assert_eq!(seen.idle_for(&activity, t0 + TICK), Some(TICK));

        // Bytes moved at some time before the check at t0 + 2 s: they count from that check.
        activity.read_progress();
        seen.observe(&activity, t0 + TICK);
        assert_eq!(seen.stalled_for(t0 + TICK), Duration::ZERO);
        assert_eq!(seen.idle_for(&activity, t0 + TICK), Some(Duration::ZERO));

        // Nothing since: both clocks run from that check.
        seen.observe(&activity, t0 + 3 * TICK);
        assert_eq!(seen.stalled_for(t0 + 3 * TICK), 2 * TICK);
        assert_eq!(seen.idle_for(&activity, t0 + 3 * TICK), Some(2 * TICK));
    }

    #[test]
    fn a_request_in_flight_is_not_idle_and_its_end_restarts_the_idle_clock_but_not_the_stall_clock()
    {
        let activity = Activity::default();
        let t0 = Instant::now();
        let mut seen = LastSeen::new(&activity, t0);
        let guard = activity.enter();
        seen.observe(&activity, t0 + TICK);
        assert_eq!(seen.idle_for(&activity, t0 + TICK), None);
        assert_eq!(seen.stalled_for(t0 + TICK), TICK);

        drop(guard);
        seen.observe(&activity, t0 + 2 * TICK);
        assert_eq!(
            seen.idle_for(&activity, t0 + 2 * TICK),
            Some(Duration::ZERO)
        );
        assert_eq!(seen.stalled_for(t0 + 2 * TICK), 2 * TICK);
    }

    /// The serve loop gives the upstream connection back after one quiet tick and closes the
    /// connection after two: a check that fires late (a loaded machine) must not do both at once,
    /// or the client's next request finds the connection closed without having been idle for the
    /// whole timeout.
    #[test]
    fn a_late_check_does_not_make_one_quiet_tick_look_like_two() {
        let activity = Activity::default();
        let t0 = Instant::now();
        let mut seen = LastSeen::new(&activity, t0);
        // The last request's bytes moved just after the check at t0 (so almost a whole tick
        // before the next one).
        activity.io_progress();
        seen.observe(&activity, t0 + TICK);
        // The next check is 1.9 s late.
        let late = t0 + 2 * TICK + Duration::from_millis(1900);
        seen.observe(&activity, late);
        let idle_for = seen.idle_for(&activity, late);
        assert!(
            idle_for.is_some_and(|d| d >= TICK && d < 2 * TICK),
            "{idle_for:?}"
        );
    }
}
