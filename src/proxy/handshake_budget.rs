//! The handshake budget: how many TLS handshakes work on the CPU at once.
//!
//! Handshakes run on the same workers as the requests of established connections, and tokio's
//! scheduler is fair per task. During a reconnect storm, 128 handshakes in progress put 128
//! handshakes' worth of key exchange, signing and chain checking ahead of every keep-alive
//! request. The budget lets `server.limits.max_concurrent_handshakes` of them work at once; the
//! others wait their turn in arrival order (tokio's semaphore is fair).
//!
//! A slot is held only while a handshake has bytes to work on: [`PartnerSocket`] takes one when
//! the client's bytes have arrived and gives it back as soon as the handshake waits for the
//! network again. Round trips, a slow client and a client that connects and sends nothing cost
//! no slot, so the budget bounds CPU work, never handshakes per round trip.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::metrics::{ConnectionGuard, Metrics};

/// Slots per runtime worker thread when the configuration sets none: enough that a storm's
/// handshakes keep a worker busy, few enough that a keep-alive request waits behind at most
/// eight handshake steps (`benches/RESULTS.md`, the storm with and without the budget).
pub(crate) const SLOTS_PER_WORKER: usize = 8;

/// Process lifetime: the slots are shared by every configuration generation.
pub(crate) struct HandshakeBudget {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl HandshakeBudget {
    pub(crate) fn new(slots: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(slots)),
            metrics,
        })
    }

    /// Puts an accepted socket under the budget until [`PartnerSocket::handshake_done`].
    pub(crate) fn socket(self: &Arc<Self>, tcp: TcpStream) -> PartnerSocket {
        PartnerSocket {
            tcp,
            turn: Some(Box::new(Turn {
                budget: self.clone(),
                permit: None,
                waiting: None,
            })),
        }
    }
}

/// A partner's TCP socket. While its handshake runs, reading needs a slot of the budget; after
/// it, reads and writes go straight to the socket.
pub(crate) struct PartnerSocket {
    tcp: TcpStream,
    /// Boxed: a connection keeps this socket for its whole life, the handshake's state only for
    /// its first milliseconds.
    turn: Option<Box<Turn>>,
}

struct Turn {
    budget: Arc<HandshakeBudget>,
    permit: Option<OwnedSemaphorePermit>,
    waiting: Option<Waiting>,
}

struct Waiting {
    since: Instant,
    acquire: PollSemaphore,
    _queued: ConnectionGuard,
}

impl PartnerSocket {
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Leaves the budget: the slot, if held, goes to the next handshake.
    pub(crate) fn handshake_done(&mut self) {
        self.turn = None;
    }
}

impl Turn {
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let metrics = &self.budget.metrics;
        let waiting = match &mut self.waiting {
            Some(w) => w,
            None => match self.budget.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    metrics.handshake_slot_taken(Duration::ZERO);
                    self.permit = Some(permit);
                    return Poll::Ready(());
                }
                Err(_) => self.waiting.insert(Waiting {
                    since: Instant::now(),
                    acquire: PollSemaphore::new(self.budget.slots.clone()),
                    _queued: metrics.handshake_queued(),
                }),
            },
        };
        // The semaphore is never closed; were it, the handshake goes on without a slot.
        let acquired = ready!(waiting.acquire.poll_acquire(cx));
        metrics.handshake_slot_taken(waiting.since.elapsed());
        self.permit = acquired;
        self.waiting = None;
        Poll::Ready(())
    }
}

impl AsyncRead for PartnerSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(turn) = this.turn.as_deref_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        if turn.permit.is_none() {
            ready!(this.tcp.poll_read_ready(cx))?;
            ready!(turn.poll_slot(cx));
        }
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if read.is_pending() {
            // Waiting for the network: the CPU is someone else's meanwhile.
            turn.permit = None;
        }
        read
    }
}

impl AsyncWrite for PartnerSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.release_if_pending(written.is_pending());
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.release_if_pending(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl PartnerSocket {
    /// A client that does not read its handshake flight holds no slot while certgate waits.
    fn release_if_pending(&mut self, pending: bool) {
        if let (true, Some(turn)) = (pending, self.turn.as_deref_mut()) {
            turn.permit = None;
        }
    }
}
