//! The handshake budget: how many TLS handshakes work on the CPU at once.
//!
//! Handshakes run on the same workers as the requests of established connections, and tokio's
//! scheduler is fair per task. During a reconnect storm, 128 handshakes in progress put 128
//! handshakes' worth of key exchange, signing and chain checking ahead of every keep-alive
//! request. The budget lets `server.limits.max_concurrent_handshakes` of them work at once; the
//! others wait their turn in arrival order (tokio's semaphore is fair).
//!
//! The slot counts a handshake from the arrival of its client's bytes to its end, so a handshake
//! that has a slot finishes before others start: only the tasks holding one sit in the run queue
//! beside the keep-alive requests. (A slot held only for the span of one poll would never be
//! contended on a worker thread: it would bound nothing.) A client that connects and sends
//! nothing takes no slot. A handshake that waits for its client longer than [`NETWORK_HOLD`]
//! gives its slot back, and queues again when the client's bytes arrive: long round trips and
//! stalling clients cannot keep slots, so the budget bounds CPU work, not handshakes per round
//! trip.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

use crate::metrics::{GaugeGuard, Metrics};

/// Slots per runtime worker thread when the configuration sets none: enough that a storm's
/// handshakes keep a worker busy while some wait for their clients, few enough that a
/// keep-alive request shares its worker's run queue with at most eight handshakes
/// (`benches/RESULTS.md`, the storm with and without the budget).
pub(crate) const SLOTS_PER_WORKER: usize = 8;

/// How long a handshake keeps its slot while waiting for its client. Longer than a client's
/// turn on a LAN (its own key exchange and signature: a millisecond or two), shorter than a
/// WAN round trip.
pub(crate) const NETWORK_HOLD: Duration = Duration::from_millis(10);

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
                hold: HoldTimer::default(),
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
    hold: HoldTimer,
}

/// Runs while a handshake holds a slot and waits for its client. The timer is allocated at the
/// first such wait and reset for the next, so a handshake's several waits cost one allocation.
#[derive(Default)]
struct HoldTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl HoldTimer {
    /// Starts the timer if it is not running, and tells whether it has run out.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let until = tokio::time::Instant::now() + NETWORK_HOLD;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if !self.armed {
            sleep.as_mut().reset(until);
            self.armed = true;
        }
        let expired = sleep.as_mut().poll(cx).is_ready();
        self.armed = !expired;
        expired
    }

    /// The client answered: the next wait starts a fresh [`NETWORK_HOLD`].
    fn stop(&mut self) {
        self.armed = false;
    }
}

struct Waiting {
    since: Instant,
    acquire: PollSemaphore,
    _queued: GaugeGuard,
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

    /// The handshake holds a slot and its client has not answered yet: keeps the slot for
    /// [`NETWORK_HOLD`], then gives it back.
    fn poll_hold(&mut self, cx: &mut Context<'_>) {
        if self.permit.is_some() && self.hold.poll_expired(cx) {
            self.permit = None;
        }
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
            turn.poll_hold(cx);
        } else {
            turn.hold.stop();
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
    /// Unlike a read, no grace period: a flight is a few kilobytes, so a full send buffer means
    /// a client that stopped reading, not one that is about to answer.
    fn release_if_pending(&mut self, pending: bool) {
        if let (true, Some(turn)) = (pending, self.turn.as_deref_mut()) {
            turn.permit = None;
        }
    }
}
