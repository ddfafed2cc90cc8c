//! Noticing that a configuration's files changed, so the runtime can reload.
//!
//! The watcher polls [`FileStamp`]s (see `fswatch`): it follows the canonical target of every
//! path, so an editor's rename-and-replace and a Kubernetes Secret's symlink swap are both seen.
//! CRL files are not watched here: the revocation poller swaps CRLs without a reload.

use std::path::PathBuf;
use std::time::Duration;

use super::model::Config;
use crate::fswatch::FileStamp;

/// Every file a configuration reads when it is built: the YAML itself, server certificates and
/// keys, trust-bundle CA files, upstream CA files and the lifecycle registry's partner table.
pub fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.source.clone()];
    for pair in &config.server.certificates {
        files.push(pair.cert.clone());
        files.push(pair.key.clone());
    }
    files.extend(config.trust_bundles.iter().map(|b| b.ca.clone()));
    files.extend(config.upstreams.iter().filter_map(|u| u.ca.clone()));
    // The registry's partner table: a change is a new partner table, so a reload. (The lifecycle
    // CRL is polled by the revocation module like any CRL file.)
    if let Some(lifecycle) = &config.lifecycle {
        files.push(super::published::StateDir::new(&lifecycle.state_dir).partners());
    }
    files.sort();
    files.dedup();
    files
}

/// Polls a set of files for changes.
#[derive(Debug)]
pub struct Watcher {
    files: Vec<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
    poll: Duration,
    settle: Duration,
}

impl Watcher {
    /// Watches `files`, comparing against how they look now. `settle` is how long the files must
    /// stay unchanged after a change before it counts: editors and deploy tools write in steps.
    pub async fn new(files: Vec<PathBuf>, poll: Duration, settle: Duration) -> Self {
        let stamps = stamp_all(&files).await;
        Self {
            files,
            stamps,
            poll,
            settle,
        }
    }

    /// Waits for a change that then holds still for the settle time. Cancel-safe: dropping the
    /// future loses nothing, the next call compares against the same baseline.
    pub async fn changed(&mut self) {
        loop {
            tokio::time::sleep(self.poll).await;
            let now = stamp_all(&self.files).await;
            if now == self.stamps {
                continue;
            }
            let mut latest = now;
            loop {
                tokio::time::sleep(self.settle).await;
                let again = stamp_all(&self.files).await;
                if again == latest {
                    break;
                }
                latest = again;
            }
            return;
        }
    }

    /// Takes the current state of `files` as the new baseline (after a reload, applied or not,
    /// so a rejected file is not retried until it changes again).
    pub async fn rebase(&mut self, files: Vec<PathBuf>) {
        self.stamps = stamp_all(&files).await;
        self.files = files;
    }
}

/// A missing file stamps as `None`: its disappearance and return are changes too.
async fn stamp_all(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    let mut stamps = Vec::with_capacity(files.len());
    for f in files {
        stamps.push(FileStamp::of(f).await.ok());
    }
    stamps
}
