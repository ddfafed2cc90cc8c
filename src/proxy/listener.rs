//! The accept loop: a connection permit first, then accept, with back-off on accept errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore, TryAcquireError};

use super::connection;
use crate::snapshot::Snapshot;

/// Where the gateway is in its life; every connection watches it. Ordered: a gateway only moves
/// forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// Shutting down: no new connections; open ones finish their in-flight requests and close,
    /// and tunnels close at once.
    Draining,
    /// `drain_timeout` passed: whatever is still open is closed now.
    Cut,
}

impl Phase {
    pub(crate) fn stopping(self) -> bool {
        self != Self::Serving
    }
}

/// Accepts partner connections until `shutdown` leaves [`Phase::Serving`]. Each connection holds one permit of
/// `permits` (`limit` of them) for its whole life, so the caller drains by acquiring them all back.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    current: Arc<ArcSwap<Snapshot>>,
    permits: Arc<Semaphore>,
    limit: usize,
    shared: Arc<connection::Shared>,
    mut shutdown: watch::Receiver<Phase>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(5);
    loop {
        // Taking the permit before accepting leaves excess connections in the kernel's backlog
        // instead of accepting sockets certgate cannot serve.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                // Draining takes every permit too; that is not the limit being reached.
                if !shutdown.borrow().stopping() {
                    limit_reached(&current.load(), limit);
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = shutdown.wait_for(|p| p.stopping()) => return,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|p| p.stopping()) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, then try again.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let snapshot = current.load_full();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let shutdown = shutdown.clone();
        tokio::spawn(connection::serve(
            tcp,
            peer,
            id,
            snapshot,
            shared.clone(),
            shutdown,
            permit,
        ));
    }
}

/// Counts and audits the accept loop running out of permits: from here on new connections wait
/// in the kernel's backlog (and time out there) until one closes. Once per time the limit is
/// reached, not per waiting client: certgate has not accepted those and cannot see them.
fn limit_reached(snapshot: &Snapshot, limit: usize) {
    snapshot.metrics.metrics().connection_limit_reached();
    tracing::warn!(
        target: "certgate::audit",
        event = "connection_limit_reached",
        decision = "wait",
        limit,
        "every connection permit is taken: new connections wait in the backlog"
    );
}
