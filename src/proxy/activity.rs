//! What a partner connection is doing, counted rather than timed, and the idle and stall clocks
//! the connection's supervisor reads from those counts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::ConnContext;

/// What the connection is doing, counted rather than timed: in-flight requests, streaming
/// responses, and how many reads, writes and finished requests there have been. The request path
/// only bumps counters; the idle check (a few times per idle timeout) reads them and dates each
/// change itself ([`LastSeen`]), so no request reads the clock for it (about 3 clock reads and their
/// conversions per proxied request otherwise).
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
    /// Something was handed to the transport that a flush has not yet confirmed written: until
    /// then hyper may still hold bytes of a response, and its connection must not be taken apart.
    unflushed: AtomicBool,
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
    pub(super) fn read_since_handled(&self) -> bool {
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

    /// Whether a response body is still streaming (handed to hyper, not ended).
    pub(super) fn streaming(&self) -> bool {
        self.responses.load(Ordering::Relaxed) > 0
    }

    pub(super) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Whether a write was started that no flush has confirmed since.
    pub(super) fn unflushed(&self) -> bool {
        self.unflushed.load(Ordering::Relaxed)
    }

    /// How many requests' handlers have returned.
    pub(super) fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
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
pub(super) struct LastSeen {
    io: Dated,
    events: Dated,
}

/// A counter's value and the check that first saw it.
struct Dated {
    count: u64,
    at: Instant,
}

impl LastSeen {
    pub(super) fn new(activity: &Activity, now: Instant) -> Self {
        Self {
            io: Dated::new(activity.io.load(Ordering::Relaxed), now),
            events: Dated::new(activity.events(), now),
        }
    }

    pub(super) fn observe(&mut self, activity: &Activity, now: Instant) {
        self.io.observe(activity.io.load(Ordering::Relaxed), now);
        self.events.observe(activity.events(), now);
    }

    /// How long no byte has moved on the connection.
    pub(super) fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.io.at)
    }

    /// How long the connection has had nothing to do; `None` while a request is in flight.
    pub(super) fn idle_for(&self, activity: &Activity, now: Instant) -> Option<Duration> {
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
pub(super) struct Tracked<T> {
    pub(super) inner: T,
    pub(super) ctx: Arc<ConnContext>,
    /// Bytes already read from `inner` and not yet parsed, handed back by a parked HTTP/1.1
    /// connection; read before `inner` and not counted again as activity.
    pub(super) unread: Bytes,
}

impl<T> Tracked<T> {
    pub(super) fn new(inner: T, ctx: Arc<ConnContext>) -> Self {
        Self {
            inner,
            ctx,
            unread: Bytes::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
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
        self.ctx.activity.unflushed.store(true, Ordering::Relaxed);
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
        self.ctx.activity.unflushed.store(true, Ordering::Relaxed);
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
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.ctx.activity.unflushed.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
