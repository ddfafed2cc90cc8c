//! Runs the gateway: builds the first snapshot, binds the partner listener, publishes new
//! generations, and drains on shutdown.

mod reload;
mod trim;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

pub use crate::control::{ReloadOutcome, Reloader};
pub use crate::snapshot::{BuildError, Snapshot};

use crate::admin;
use crate::config::model::Config;
use crate::feed::mirror::SourceState;
use crate::metrics::Metrics;
use crate::proxy::connection;
use crate::proxy::handshake_budget::{HandshakeBudget, SLOTS_PER_WORKER};
use crate::proxy::listener::{self, Phase};
use crate::proxy::presented::PresentedChains;
use crate::revocation::{CrlLoadError, LoadFailure, Registry, RevocationService};
use reload::ReloadTask;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the configuration cannot be loaded ({} problems)", .0.len())]
    Build(Vec<BuildError>),
    #[error("{} CRL source(s) cannot be loaded", .0.len())]
    Revocation(Vec<CrlLoadError>),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API: cannot listen on {addr}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: admin::Server,
    metrics: Arc<Metrics>,
    current: Arc<ArcSwap<Snapshot>>,
    shutdown: watch::Sender<Phase>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    accept: JoinHandle<()>,
    reloader: Reloader,
    reload_task: JoinHandle<()>,
    usage_stop: oneshot::Sender<()>,
    usage_task: JoinHandle<()>,
    trim_task: JoinHandle<()>,
}

/// Where a gateway's configuration came from, for reloads.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The YAML file to reload from (SIGHUP, `POST /reload`, file changes). Without it reloads
    /// are refused.
    pub source: Option<PathBuf>,
    /// Reload when the YAML or a file it references (certificate, key, CA bundle) changes.
    pub watch_files: bool,
    /// The mirror of the control plane's publication (`lifecycle.source`), reported in
    /// `/status` and the metrics.
    pub lifecycle_source: Option<Arc<SourceState>>,
}

impl Gateway {
    /// Builds everything from `config`, binds the partner listener and starts accepting.
    ///
    /// # Errors
    /// Every build problem, or the listener cannot bind.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let source = Some(config.source.clone());
        Self::start_with(
            config,
            Options {
                source,
                watch_files: false,
                lifecycle_source: None,
            },
        )
        .await
    }

    /// [`Gateway::start`] with reload options.
    ///
    /// # Errors
    /// Every build problem, or the listener cannot bind.
    pub async fn start_with(config: Config, options: Options) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let revocation = RevocationService::new(Registry::new(), metrics.revocation().clone());
        let snapshot = prepare_with(config, &revocation, &metrics).await?;
        metrics.loaded_now();
        usage::load(&snapshot, metrics.usage());
        export_generation_facts(&metrics, &snapshot);
        let addr = snapshot.config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        // The admin listener is bound before anything is spawned, so a port clash (including the
        // partner port itself) fails the start instead of leaving a gateway without its API.
        let admin_listen = snapshot.config.admin.listen;
        let admin_listener = TcpListener::bind(admin_listen)
            .await
            .and_then(|l| l.local_addr().map(|a| (l, a)))
            .map_err(|source| StartError::AdminBind {
                addr: admin_listen,
                source,
            });
        let (admin_listener, admin_addr) = admin_listener?;
        let max_connections = snapshot.config.server.limits.max_connections;
        let permits = Arc::new(Semaphore::new(max_connections));
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let handshakes = HandshakeBudget::new(
            snapshot
                .config
                .server
                .limits
                .max_concurrent_handshakes
                .unwrap_or(SLOTS_PER_WORKER * workers),
            metrics.clone(),
        );
        let (shutdown, rx) = watch::channel(Phase::Serving);
        snapshot.revocation.start();
        let current = Arc::new(ArcSwap::from_pointee(snapshot));
        let (reloader, reload_task) = ReloadTask {
            source: options.source,
            watch_files: options.watch_files,
            current: current.clone(),
            revocation,
            shutdown: rx.clone(),
            metrics: metrics.clone(),
        }
        .spawn()
        .await;
        let (usage_stop, usage_rx) = oneshot::channel();
        let usage_task = usage::spawn(current.clone(), metrics.clone(), usage_rx);
        let admin = admin::Server::spawn(
            admin_listener,
            admin::State::new(
                current.clone(),
                reloader.clone(),
                metrics.clone(),
                options.lifecycle_source,
            ),
        );
        let trim_task = trim::spawn(metrics.clone());
        let shared = Arc::new(connection::Shared {
            handshakes,
            chains: PresentedChains::default(),
        });
        let accept = tokio::spawn(listener::accept_loop(
            listener,
            current.clone(),
            permits.clone(),
            max_connections,
            shared,
            rx,
        ));
        tracing::info!(listen = %local_addr, admin = %admin_addr, "certgate is accepting partner connections");
        Ok(Self {
            local_addr,
            admin_addr,
            admin,
            metrics,
            current,
            shutdown,
            permits,
            max_connections,
            accept,
            reloader,
            reload_task,
            usage_stop,
            usage_task,
            trim_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin API (metrics, health, status, reload) listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// This gateway's metrics; they survive reloads.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Requests reloads of this gateway's configuration.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The published generation; new connections pin whatever it holds when they are accepted.
    pub fn current(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    /// The snapshot new connections are accepted under.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Writes the scope usage recorded so far into the state folder now, as the background task
    /// does every [`crate::usage::FLUSH_INTERVAL`] and at shutdown. Returns the merged file, or
    /// `None` without `lifecycle:`.
    ///
    /// # Errors
    /// The usage file could not be read or written.
    pub async fn flush_usage(
        &self,
    ) -> Result<Option<crate::usage::UsageFile>, crate::usage::UsageError> {
        self.metrics.observe_revocations(std::time::Duration::ZERO);
        usage::flush(&self.current, &self.metrics).await
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits up to
    /// the configured drain timeout for them. Returns whether every connection finished in time.
    pub async fn shutdown(self) -> bool {
        self.drain().await == Drained::Clean
    }

    /// [`Gateway::shutdown`], saying how many connections had to be cut. Connections still open
    /// at `drain_timeout` are closed then, and their unanswered requests audited, before this
    /// returns: once the process exits nothing more would be written.
    pub async fn drain(self) -> Drained {
        let drain = self.current.load().config.server.drain_timeout;
        // The admin API stays up while draining, answering /readyz with 503.
        self.admin.draining();
        let _ = self.shutdown.send(Phase::Draining);
        let _ = self.accept.await;
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let outcome = match tokio::time::timeout(drain, self.permits.acquire_many(all)).await {
            Ok(_) => Drained::Clean,
            Err(_) => {
                let open = self.max_connections - self.permits.available_permits();
                tracing::warn!(
                    target: "certgate::audit",
                    event = "drain_timeout",
                    timeout_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
                    connections = open,
                    "drain timeout reached: cutting {open} connection(s) still open"
                );
                let _ = self.shutdown.send(Phase::Cut);
                if tokio::time::timeout(CUT_GRACE, self.permits.acquire_many(all))
                    .await
                    .is_err()
                {
                    tracing::warn!("connections still open after being cut");
                }
                Drained::Cut { connections: open }
            }
        };
        let _ = self.reload_task.await;
        // Every connection is done: the last flush sees every request.
        let _ = self.usage_stop.send(());
        let _ = self.usage_task.await;
        self.admin.stop().await;
        self.trim_task.abort();
        outcome
    }
}

/// How a gateway's shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed within `drain_timeout`.
    Clean,
    /// `drain_timeout` passed with `connections` still open; they were cut.
    Cut { connections: usize },
}

/// How long connections cut at `drain_timeout` get to drop what they hold and write their audit
/// lines.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// Hands the metrics what a generation knows from configuration: the server certificates it
/// serves, the lifecycle registry's valid partner certificates, and the registry's lifecycle
/// times and revocations. Called when a generation is published (start-up and applied reloads),
/// never per connection.
fn export_generation_facts(metrics: &Metrics, snapshot: &Snapshot) {
    metrics.set_server_certificates(&snapshot.server_certificates);
    metrics.set_registered_certificates(
        snapshot
            .config
            .registry
            .certificates
            .iter()
            .map(|c| (c.partner.as_str(), c.serial.as_str(), c.not_after)),
    );
    metrics.set_registry(&snapshot.config.registry);
}

/// Builds a snapshot and loads its revocation sources once: everything `serve` needs before it
/// may accept a connection, and everything `check` validates.
///
/// A CRL file that cannot be loaded is an error (a configuration mistake); a CRL URL that cannot
/// be fetched right now is logged, and that bundle fails closed until a fetch succeeds.
///
/// # Errors
/// Every build problem, or every CRL file that failed to load.
pub async fn prepare(config: Config, registry: Arc<Registry>) -> Result<Snapshot, StartError> {
    let metrics = Metrics::new();
    let revocation = RevocationService::new(registry, metrics.revocation().clone());
    prepare_with(config, &revocation, &metrics).await
}

/// [`prepare`] for a running gateway: revocation state comes from (and is shared through) its
/// `revocation` service, and counts go into its `metrics`. Only bundle states this generation
/// creates are loaded here; shared ones keep what they have.
///
/// # Errors
/// Every build problem, or every CRL file that failed to load.
pub async fn prepare_with(
    config: Config,
    revocation: &Arc<RevocationService>,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, StartError> {
    let snapshot =
        Snapshot::build(Arc::new(config), revocation, metrics).map_err(StartError::Build)?;
    load_revocation(snapshot).await
}

/// Loads the CRL sources of the bundle states `snapshot` created (shared ones keep what they
/// have): the async half of [`prepare_with`], after the snapshot is built.
///
/// # Errors
/// Every CRL file that failed to load.
async fn load_revocation(snapshot: Snapshot) -> Result<Snapshot, StartError> {
    let (fatal, transient): (Vec<_>, Vec<_>) = snapshot
        .revocation
        .load()
        .await
        .into_iter()
        .partition(|e| !matches!(e.cause, LoadFailure::Fetch(_)));
    for e in &transient {
        tracing::warn!(error = %crate::error_chain(e), "CRL URL unavailable at start; its bundle fails closed until it loads");
    }
    if !fatal.is_empty() {
        return Err(StartError::Revocation(fatal));
    }
    Ok(snapshot)
}
