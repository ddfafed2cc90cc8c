//! An upgraded connection (WebSocket and the like), spliced to its upstream by the partner
//! connection's own supervisor rather than a task of its own: revocation, drain, the idle timeout
//! and the connection permit keep applying to it, and its end is audited once.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::connection::ConnContext;
use crate::config::model::UpstreamId;
use crate::policy::RouteId;

/// How long closing a tunnel may take to flush and send its close to either side.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A switch of protocols the upstream accepted, waiting for the partner connection to hand over
/// its transport (hyper does once the `101` has been written).
#[derive(Debug)]
pub struct PendingTunnel {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
    pub meta: TunnelMeta,
}

/// Why a tunnel ended; its `as_str` is the `reason` of the `tunnel_closed` audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The partner closed its side first.
    ClientClosed,
    /// The upstream closed its side first.
    UpstreamClosed,
    /// Reading or writing either side failed.
    Error,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The partner's certificate was revoked.
    CertificateRevoked,
    /// The gateway is shutting down.
    Drain,
    /// The upstream never handed over its side of the upgrade.
    UpgradeFailed,
}

impl TunnelEnd {
    /// Every end; a unit test fails when a variant is missing.
    pub const ALL: [Self; 7] = [
        Self::ClientClosed,
        Self::UpstreamClosed,
        Self::Error,
        Self::IdleTimeout,
        Self::CertificateRevoked,
        Self::Drain,
        Self::UpgradeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::UpstreamClosed => "upstream_closed",
            Self::Error => "error",
            Self::IdleTimeout => "idle_timeout",
            Self::CertificateRevoked => "certificate_revoked",
            Self::Drain => "drain",
            Self::UpgradeFailed => "upgrade_failed",
        }
    }
}

/// The bytes a tunnel moved each way and which side closed first, shared between the two halves
/// being copied and the supervisor that watches them.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Written to the upstream: what the partner sent.
    pub to_upstream: AtomicU64,
    /// Written to the partner: what the upstream sent.
    pub to_client: AtomicU64,
    /// 0 while both sides are open, else [`Side`] of the first to reach its end.
    first_closed: AtomicU8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Side {
    Client = 1,
    Upstream = 2,
}

impl Traffic {
    /// Bytes moved either way so far: the idle check compares it between ticks.
    pub fn total(&self) -> u64 {
        self.to_upstream
            .load(Ordering::Relaxed)
            .wrapping_add(self.to_client.load(Ordering::Relaxed))
    }

    /// How the copy ended, once it has: the side that closed first, or an error.
    pub fn end(&self, copied: &std::io::Result<(u64, u64)>) -> TunnelEnd {
        match (copied, self.first_closed.load(Ordering::Relaxed)) {
            (Err(_), _) => TunnelEnd::Error,
            (Ok(_), s) if s == Side::Upstream as u8 => TunnelEnd::UpstreamClosed,
            (Ok(_), _) => TunnelEnd::ClientClosed,
        }
    }

    fn closed(&self, side: Side) {
        let _ =
            self.first_closed
                .compare_exchange(0, side as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// One side of a tunnel: counts the bytes written to it and notes when reading it reaches its end.
pub struct Counted<'t> {
    io: TokioIo<Upgraded>,
    side: Side,
    traffic: &'t Traffic,
}

impl<'t> Counted<'t> {
    pub fn new(io: Upgraded, side: Side, traffic: &'t Traffic) -> Self {
        Self {
            io: TokioIo::new(io),
            side,
            traffic,
        }
    }

    fn written(&self) -> &AtomicU64 {
        match self.side {
            Side::Client => &self.traffic.to_client,
            Side::Upstream => &self.traffic.to_upstream,
        }
    }

    /// Flushes and closes this side (TLS `close_notify` and FIN towards the partner), within
    /// [`CLOSE_GRACE`]: a peer that reads nothing more cannot hold the supervisor.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, self.io.shutdown()).await;
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            self.traffic.closed(self.side);
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written().fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Writes the `tunnel_closed` audit line: one per upgraded connection, when it ends.
pub fn audit_end(
    ctx: &ConnContext,
    meta: &TunnelMeta,
    traffic: &Traffic,
    end: TunnelEnd,
    error: Option<&(dyn std::error::Error + 'static)>,
) {
    let config = &ctx.snapshot.config;
    let route = config
        .routes
        .get(meta.route.0)
        .map_or(crate::metrics::NO_ROUTE, |r| r.name.as_str());
    let upstream = config
        .upstreams
        .get(meta.upstream_id.0)
        .map_or("none", |u| u.name.as_str());
    tracing::info!(
        target: "certgate::audit",
        event = "tunnel_closed",
        conn.id = ctx.id,
        client.addr = &*ctx.peer_text,
        partner = ctx.partner_id().unwrap_or(crate::metrics::UNKNOWN_PARTNER),
        cert.serial = %ctx.identity().serial,
        cert.sha256 = ctx.fingerprint_hex(),
        route,
        upstream,
        reason = end.as_str(),
        bytes.in = traffic.to_upstream.load(Ordering::Relaxed),
        bytes.out = traffic.to_client.load(Ordering::Relaxed),
        duration_ms = meta.started.elapsed().as_secs_f64() * 1e3,
        error = error.map(tracing::field::display),
        "upgraded connection closed"
    );
}

/// What the audit line says of a tunnel besides its traffic.
#[derive(Debug, Clone, Copy)]
pub struct TunnelMeta {
    pub route: RouteId,
    pub upstream_id: UpstreamId,
    /// When the upgrade request arrived: the tunnel's duration counts from there.
    pub started: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_is_in_all_with_its_own_reason_code() {
        let codes = assert_all_lists_every_variant!(TunnelEnd:
            TunnelEnd::ClientClosed,
            TunnelEnd::UpstreamClosed,
            TunnelEnd::Error,
            TunnelEnd::IdleTimeout,
            TunnelEnd::CertificateRevoked,
            TunnelEnd::Drain,
            TunnelEnd::UpgradeFailed,
        );
        assert_eq!(codes.len(), TunnelEnd::ALL.len());
    }

    #[test]
    fn the_side_that_reached_its_end_first_names_the_end() {
        let traffic = Traffic::default();
        traffic.closed(Side::Upstream);
        traffic.closed(Side::Client);
        assert_eq!(traffic.end(&Ok((1, 2))), TunnelEnd::UpstreamClosed);
        let fresh = Traffic::default();
        assert_eq!(fresh.end(&Ok((0, 0))), TunnelEnd::ClientClosed);
        let err = std::io::Error::other("reset");
        assert_eq!(traffic.end(&Err(err)), TunnelEnd::Error);
    }
}
