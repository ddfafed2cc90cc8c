//! Polls a connection's rarely-ready futures only when one of them asked to be polled.
//!
//! A partner connection's task waits on its HTTP connection and upstream I/O, which wake it a few
//! times per request, and on shutdown, revocation and its idle timer, which almost never do. One
//! task has one waker, so without help every wake polls all of them; the rare ones (two `watch`
//! receivers and a timer) cost about 1 500 instructions per keep-alive request that way.
//! [`WakeGate`] gives the rare group a waker of its own that records that it fired before waking
//! the task, the way `FuturesUnordered` tells its futures apart, so the group is polled only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// One per connection task; [`WakeGate::gated`] wraps each loop iteration's group of rare futures.
#[derive(Debug)]
pub(crate) struct WakeGate {
    shared: Arc<Shared>,
    /// `shared` as a `Waker`, built once.
    waker: Waker,
}

#[derive(Debug, Default)]
struct Shared {
    woken: AtomicBool,
    task: AtomicWaker,
}

/// A future polled on its first poll and afterwards only when its own waker fired.
#[derive(Debug)]
pub(crate) struct Gated<'g, F> {
    gate: &'g WakeGate,
    inner: F,
    polled: bool,
}

// === impl WakeGate ===

impl WakeGate {
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared::default());
        Self {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// Wraps `inner` (pinned by the caller, e.g. with `std::pin::pin!`). A new future must be
    /// polled once to register its wakers, so the first poll goes through whatever the gate's
    /// state.
    pub(crate) fn gated<F: Future + Unpin>(&self, inner: F) -> Gated<'_, F> {
        Gated {
            gate: self,
            inner,
            polled: false,
        }
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        Self::new()
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

// === impl Gated ===

impl<F: Future + Unpin> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let gate = self.gate;
        let shared = &gate.shared;
        if self.polled && !shared.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.polled = true;
        // Registered before the inner poll: a wake that lands after it finds the task's waker.
        // A wake between the swap above and this line is seen by the inner poll itself.
        shared.task.register(cx.waker());
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&gate.waker))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking through the waker it last saw.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<AtomicWaker>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.waker.register(cx.waker());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn the_group_is_polled_first_then_only_when_it_woke_and_its_wake_reaches_the_task() {
        let gate = WakeGate::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(AtomicWaker::new());
        let probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        let probe = std::pin::pin!(probe);
        let mut gated = gate.gated(probe);
        let (kick_tx, mut kick_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let firer = {
            let (ready, waker) = (ready.clone(), waker.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Wake the task through the other branch a few times: the gate stays shut.
                for _ in 0..5 {
                    kick_tx.send(()).unwrap();
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                ready.store(true, Ordering::SeqCst);
                waker.wake();
            })
        };
        let mut kicks = 0;
        let woke = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    biased;
                    Some(()) = kick_rx.recv() => kicks += 1,
                    () = &mut gated => break,
                }
            }
        })
        .await;
        assert!(woke.is_ok(), "the group's own wake never reached the task");
        firer.await.unwrap();
        assert!(kicks >= 1, "the other branch woke the task");
        // The first poll, then the one its own wake asked for: the kicks polled it not once.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
