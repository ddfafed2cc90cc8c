//! Reloading: a new configuration generation is loaded and validated off the hot path, then
//! published with one atomic store. A configuration that fails anywhere — YAML, a certificate, a
//! key, a CRL file — is refused with every problem logged, and the running one keeps serving.
//!
//! One task owns reloading, so requests from SIGHUP, `POST /reload` and the file watcher are
//! serialised; requests that queue up while a reload runs share its outcome.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use super::{load_revocation, Snapshot, StartError};
use crate::config::diff::ConfigChanges;
use crate::config::{self, watch::Watcher};
use crate::control::{ReloadOutcome, ReloadRequest, Reloader};
use crate::metrics::Metrics;
use crate::proxy::listener::Phase;
use crate::revocation::RevocationService;

/// Everything the reload task needs.
pub(super) struct ReloadTask {
    pub(super) source: Option<PathBuf>,
    pub(super) watch_files: bool,
    pub(super) current: Arc<ArcSwap<Snapshot>>,
    /// Process-lifetime revocation state, shared by every generation.
    pub(super) revocation: Arc<RevocationService>,
    pub(super) shutdown: watch::Receiver<Phase>,
    pub(super) metrics: Arc<Metrics>,
}

/// How often watched files are polled, and how long they must hold still after a change.
const POLL: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_millis(300);

impl ReloadTask {
    /// Takes the watcher's baseline before returning, so a change made right after start-up is
    /// seen as a change.
    pub(super) async fn spawn(self) -> (Reloader, tokio::task::JoinHandle<()>) {
        let (reloader, rx) = Reloader::channel();
        let files = config::watch::watched_files(&self.current.load().config);
        let watcher = Watcher::new(files, POLL, SETTLE).await;
        (reloader, tokio::spawn(self.run(rx, watcher)))
    }

    async fn run(mut self, mut requests: mpsc::Receiver<ReloadRequest>, mut watcher: Watcher) {
        let watching = self.watch_files && self.source.is_some();
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                Some(first) = requests.recv() => {
                    let mut waiting = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        waiting.push(more);
                    }
                    let outcome = self.reload_once(&mut watcher).await;
                    for reply in waiting {
                        let _ = reply.send(outcome.clone());
                    }
                }
                () = watcher.changed(), if watching => {
                    tracing::info!("configuration files changed; reloading");
                    self.reload_once(&mut watcher).await;
                }
                () = stopped(&mut shutdown) => break,
            }
        }
        self.revocation.shutdown().await;
    }

    async fn reload_once(&mut self, watcher: &mut Watcher) -> ReloadOutcome {
        let started = Instant::now();
        let outcome = self.try_reload().await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            ReloadOutcome::Applied { version, changes } => {
                self.metrics.reload_applied();
                tracing::info!(
                    config.version = %version,
                    reload.elapsed_ms = elapsed_ms,
                    partners = %changes.partners.summary(),
                    routes = %changes.routes.summary(),
                    bundles = %changes.bundles.summary(),
                    "configuration reloaded"
                );
            }
            ReloadOutcome::Rejected { problems } => {
                self.metrics.reload_rejected();
                for p in problems {
                    tracing::error!(problem = %p, "configuration reload rejected; the running configuration stays");
                }
            }
        }
        let files = config::watch::watched_files(&self.current.load().config);
        watcher.rebase(files).await;
        outcome
    }

    async fn try_reload(&mut self) -> ReloadOutcome {
        let Some(path) = self.source.clone() else {
            return ReloadOutcome::rejected("the gateway was started without a configuration file");
        };
        let running = self.current.load_full();
        let revocation = self.revocation.clone();
        let metrics = self.metrics.clone();
        // Reading the configuration and compiling a snapshot are synchronous and grow with the
        // partner table (seconds for a registry of 100 000 partners): on a blocking thread, so the
        // async threads go on serving, polling CRLs and cutting revoked connections meanwhile.
        let built = tokio::task::spawn_blocking(move || {
            let config = config::load(&path)
                .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            for warning in restart_only_changes(&running, &config) {
                tracing::warn!("{warning}");
            }
            let snapshot = Snapshot::build(Arc::new(config), &revocation, &metrics)
                .map_err(|e| problems_of(&StartError::Build(e)))?;
            let changes = Box::new(ConfigChanges::between(&running.config, &snapshot.config));
            Ok::<_, Vec<String>>((snapshot, changes))
        })
        .await;
        let (snapshot, changes) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(problems)) => return ReloadOutcome::Rejected { problems },
            Err(e) => return ReloadOutcome::rejected(&format!("the reload task failed: {e}")),
        };
        let snapshot = match load_revocation(snapshot).await {
            Ok(s) => s,
            Err(e) => {
                return ReloadOutcome::Rejected {
                    problems: problems_of(&e),
                }
            }
        };
        let version = snapshot.config.version.clone();
        snapshot.revocation.start();
        super::export_generation_facts(&self.metrics, &snapshot);
        // The old generation's bundle states that the new one does not share stop their tasks
        // once the last connection pinned to it closes.
        self.current.store(Arc::new(snapshot));
        ReloadOutcome::Applied { version, changes }
    }
}

/// Settings a running listener cannot change; they take effect at the next restart.
fn restart_only_changes(running: &Snapshot, new: &config::model::Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let old = &running.config.server;
    if old.listen != new.server.listen {
        warnings.push(format!(
            "server.listen changed ({} → {}); the listener keeps {} until restart",
            old.listen, new.server.listen, old.listen
        ));
    }
    if old.limits.max_connections != new.server.limits.max_connections {
        warnings.push("server.limits.max_connections changes take effect at restart".to_owned());
    }
    if old.limits.max_concurrent_handshakes != new.server.limits.max_concurrent_handshakes {
        warnings.push(
            "server.limits.max_concurrent_handshakes changes take effect at restart".to_owned(),
        );
    }
    if running.config.admin.listen != new.admin.listen {
        warnings.push("admin.listen changes take effect at restart".to_owned());
    }
    warnings
}

fn problems_of(error: &StartError) -> Vec<String> {
    match error {
        StartError::Build(errors) => errors.iter().map(|e| crate::error_chain(e)).collect(),
        StartError::Revocation(errors) => errors.iter().map(|e| crate::error_chain(e)).collect(),
        StartError::Bind { .. } | StartError::AdminBind { .. } => {
            vec![crate::error_chain(error)]
        }
    }
}

/// Resolves once shutdown is signalled (or its sender is gone), without holding the watch's read
/// guard across the select's other branches.
async fn stopped(shutdown: &mut watch::Receiver<Phase>) {
    let _ = shutdown.wait_for(|p| p.stopping()).await;
}
