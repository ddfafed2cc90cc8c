//! Gives the C allocator's free pages back to the system once connection churn stops.
//!
//! A handshake allocates tens of kilobytes and frees them when it is done. These short-lived
//! blocks sit between the few kilobytes each open connection keeps. glibc's malloc returns memory
//! to the system only from the top of its heap. So after thousands of partners have
//! (re)connected, the freed handshake memory stays resident between the blocks of the
//! connections held. Measured with 10 000 idle connections (`benches/compare.sh --idle-only`),
//! it is about a fifth of their RSS. `malloc_trim(0)` releases every whole free page inside the
//! heap as well.
//!
//! Trimming walks every arena under that arena's lock, so it runs only when churn stops: after
//! half a second with no handshake and no connection opened, closed or parked, following some
//! since the last trim. A gateway under steady churn never trims. One that goes quiet after a
//! reconnect storm trims once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How long churn must have stopped before a trim.
const QUIET: Duration = Duration::from_millis(500);

/// Starts the task that trims after churn. It runs until aborted.
pub(super) fn spawn(metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(QUIET);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut churn = ChurnWatch::new(Churn::of(&metrics));
        loop {
            ticks.tick().await;
            if !churn.quiet_after_churn(Churn::of(&metrics)) {
                continue;
            }
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(release_free_pages)
                .await
                .unwrap_or(false);
            tracing::debug!(
                released,
                took_ms = started.elapsed().as_millis(),
                "gave the allocator's free pages back after connection churn"
            );
        }
    })
}

/// What changes when connections come and go: handshakes done, connections open (which a close
/// changes too) and parked (parking frees an idle connection's HTTP buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Churn {
    handshakes: u64,
    open: i64,
    parked: i64,
}

impl Churn {
    fn of(metrics: &Metrics) -> Self {
        Self {
            handshakes: metrics.handshakes_done(),
            open: metrics.connections_active(),
            parked: metrics.connections_parked(),
        }
    }
}

/// Decides, one tick at a time, when churn has just stopped.
#[derive(Debug)]
struct ChurnWatch {
    last: Churn,
    trimmed_at: Churn,
}

impl ChurnWatch {
    /// Starts as if a trim had just happened: start-up's own garbage is not churn.
    fn new(now: Churn) -> Self {
        Self {
            last: now,
            trimmed_at: now,
        }
    }

    /// True once per stop: nothing changed since the previous tick, but something did since the
    /// last trim.
    fn quiet_after_churn(&mut self, now: Churn) -> bool {
        let quiet = now == self.last && now != self.trimmed_at;
        self.last = now;
        if quiet {
            self.trimmed_at = now;
        }
        quiet
    }
}

/// Releases the free pages of every glibc arena; true if any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_pages() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and changes only glibc's own free lists, under each
    // arena's lock. Any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries' allocators give memory back by themselves, or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churn(handshakes: u64, open: i64) -> Churn {
        Churn {
            handshakes,
            open,
            parked: 0,
        }
    }

    #[test]
    fn trims_once_when_churn_stops_and_never_while_it_goes_on_or_without_it() {
        let mut watch = ChurnWatch::new(churn(0, 0));
        // Start-up and a quiet gateway: nothing to give back.
        assert!(!watch.quiet_after_churn(churn(0, 0)));
        assert!(!watch.quiet_after_churn(churn(0, 0)));
        // A storm: handshakes every tick.
        assert!(!watch.quiet_after_churn(churn(100, 90)));
        assert!(!watch.quiet_after_churn(churn(250, 230)));
        // The first quiet tick trims, the next ones do not.
        assert!(watch.quiet_after_churn(churn(250, 230)));
        assert!(!watch.quiet_after_churn(churn(250, 230)));
        // Connections closing without new handshakes are churn too.
        assert!(!watch.quiet_after_churn(churn(250, 0)));
        assert!(watch.quiet_after_churn(churn(250, 0)));
        // So are idle connections parking.
        let parking = Churn {
            parked: 200,
            ..churn(250, 0)
        };
        assert!(!watch.quiet_after_churn(parking));
        assert!(watch.quiet_after_churn(parking));
    }

    #[test]
    fn trimming_releases_what_a_burst_freed() {
        // Many small blocks, then all but the last freed: the free pages lie below a live block,
        // where glibc does not give them back by itself.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4000]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let released = release_free_pages();
        assert_eq!(
            released,
            cfg!(all(target_os = "linux", target_env = "gnu")),
            "16 MB were freed below a live block"
        );
        drop(keep);
    }
}
