//! Writing scope usage into the lifecycle state folder: a task that flushes every
//! [`FLUSH_INTERVAL`] and once more when the gateway has drained, so the last requests count.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Snapshot;
use crate::config::published::StateDir;
use crate::usage::{Usage, UsageError, UsageFile, FLUSH_INTERVAL};

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
    usage: Arc<Usage>,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => log(flush(&current, &usage).await),
                _ = &mut stop => break,
            }
        }
        log(flush(&current, &usage).await);
    })
}

/// Merges what this process recorded into the usage file of the state folder in service; `None`
/// without `lifecycle:`.
///
/// # Errors
/// The file could not be read or written; it stays as it was.
pub(super) async fn flush(
    current: &ArcSwap<Snapshot>,
    usage: &Arc<Usage>,
) -> Result<Option<UsageFile>, UsageError> {
    let Some(lifecycle) = &current.load().config.lifecycle else {
        return Ok(None);
    };
    let path = StateDir::new(&lifecycle.state_dir).usage();
    let usage = usage.clone();
    match tokio::task::spawn_blocking(move || usage.flush(&path)).await {
        Ok(result) => result.map(Some),
        Err(_) => Err(UsageError::Interrupted),
    }
}

fn log(result: Result<Option<UsageFile>, UsageError>) {
    if let Err(e) = result {
        tracing::warn!(error = %crate::error_chain(&e), "scope usage not flushed; it stays in memory for the next flush");
    }
}
