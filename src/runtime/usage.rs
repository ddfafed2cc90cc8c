//! Writing scope usage into the lifecycle state folder: a task that flushes every
//! [`FLUSH_INTERVAL`] and once more when the gateway has drained, so the last requests count.
//! Each flush also refreshes the lifecycle metrics that come from the state folder rather than
//! from one generation: partners without traffic (from the merged usage of every gateway), the
//! publish status, and the time to revoke of revocations applied since the last flush.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Snapshot;
use crate::config::published::{PublishStatus, StateDir};
use crate::metrics::{Metrics, IDLE_WINDOW};
use crate::usage::{Usage, UsageError, UsageFile, FLUSH_INTERVAL};

/// How long after a revocation is applied its time to revoke is observed by the periodic flush:
/// open connections are cut within a second of it.
const REVOCATION_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes what the state folder's usage file says into `usage` before traffic, so a partner's
/// first call is not taken for new after a restart. Without `lifecycle:` there is no file.
pub(super) fn load(snapshot: &Snapshot, usage: &Usage) {
    let Some(lifecycle) = &snapshot.config.lifecycle else {
        return;
    };
    match UsageFile::read(&StateDir::new(&lifecycle.state_dir).usage()) {
        Ok(file) => usage.absorb(&file),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "scope usage not loaded; recording starts afresh and the next flush retries the file");
        }
    }
}

/// Flushes until `stop` fires (or its sender is dropped), then flushes once more.
pub(super) fn spawn(
    current: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    metrics.observe_revocations(REVOCATION_SETTLE);
                    log(flush(&current, &metrics).await);
                }
                _ = &mut stop => break,
            }
        }
        metrics.observe_revocations(std::time::Duration::ZERO);
        log(flush(&current, &metrics).await);
    })
}

/// Merges what this process recorded into the usage file of the state folder in service; `None`
/// without `lifecycle:`.
///
/// # Errors
/// The file could not be read or written; it stays as it was.
pub(super) async fn flush(
    current: &ArcSwap<Snapshot>,
    metrics: &Arc<Metrics>,
) -> Result<Option<UsageFile>, UsageError> {
    let snapshot = current.load_full();
    let Some(lifecycle) = &snapshot.config.lifecycle else {
        return Ok(None);
    };
    let state = StateDir::new(&lifecycle.state_dir);
    let usage = metrics.usage().clone();
    let path = state.usage();
    let file = match tokio::task::spawn_blocking(move || usage.flush(&path)).await {
        Ok(result) => result?,
        Err(_) => return Err(UsageError::Interrupted),
    };
    match PublishStatus::read(&state.publish_status()) {
        Ok(status) => metrics.set_publish_status(&status),
        Err(e) => tracing::warn!(error = %e, "cannot read the registry's publish status"),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cutoff = now.saturating_sub(IDLE_WINDOW.as_secs());
    let idle = snapshot
        .config
        .registry
        .partners
        .iter()
        .filter(|p| {
            let old_enough = p
                .approved_at
                .is_none_or(|a| u64::try_from(a).unwrap_or(0) <= cutoff);
            old_enough && file.last_call(&p.id).is_none_or(|t| t < cutoff)
        })
        .count();
    metrics.set_partners_without_traffic(idle);
    Ok(Some(file))
}

fn log(result: Result<Option<UsageFile>, UsageError>) {
    if let Err(e) = result {
        tracing::warn!(error = %crate::error_chain(&e), "scope usage not flushed; it stays in memory for the next flush");
    }
}
