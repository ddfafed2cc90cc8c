//! The enrolment API: an optional TLS listener (`onboarding.listen`) where a partner's developer
//! trades an invitation's token and a CSR for a pending request, and later fetches the issued
//! certificate from the request's status URL.
//!
//! It is control plane, not gateway: it serves the lifecycle state folder through
//! [`crate::lifecycle::commands`] (the same functions as the CLI, so every change is one event in
//! the same log) and never touches a partner connection. [`start`] needs only its settings, the
//! state folder and the server certificates, so any process that has those can run it.

mod api;
mod limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use api::Code;

use crate::config::model;
use crate::lifecycle::store::{Store, StoreError};
use crate::lifecycle::StateDir;
use crate::metrics::{Metrics, TokenCounts};
use crate::tls::server::ServerTlsError;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Bound on the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reading a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reading a request's body.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How often the token metrics are recounted from the registry besides after each submission:
/// tokens expire with time, and invitations come from other processes (the CLI).
const TOKEN_RECOUNT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("onboarding.listen {addr}: cannot listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the enrolment API's TLS configuration")]
    Tls(#[source] ServerTlsError),
    #[error("the enrolment API has no TLS configuration")]
    NoTls,
    #[error("{}: cannot read the CA certificate", path.display())]
    Ca {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running enrolment API; stopped by [`Running::stop`] or when dropped.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// The issuing CA's certificate, PEM: the `chain_pem` of an issued request.
    pub(crate) ca_pem: String,
    pub(crate) settings: model::Onboarding,
    pub(crate) by_address: limit::RateLimit,
    pub(crate) by_token: limit::RateLimit,
    /// The gateway's metrics: refused submissions and token counts.
    pub(crate) metrics: Arc<Metrics>,
}

/// Binds `settings.listen` and serves the enrolment API for the registry in `state`, with the
/// gateway's server certificates from `server`, counting into `metrics`.
///
/// # Errors
/// The address cannot be bound, the certificates or the CA do not load, or the registry does not
/// open.
pub async fn start(
    settings: &model::Onboarding,
    state: &StateDir,
    database: &model::Database,
    server: &model::Server,
    metrics: Arc<Metrics>,
) -> Result<Running, StartError> {
    let tls = crate::tls::server::build_without_client_auth(server).map_err(|errors| {
        errors
            .into_iter()
            .next()
            .map_or(StartError::NoTls, StartError::Tls)
    })?;
    let ca_path = state.ca_cert();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| StartError::Ca {
        path: ca_path.clone(),
        source,
    })?;
    let store = Store::open(database).await?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        ca_pem,
        settings: settings.clone(),
        by_address: limit::RateLimit::per_minute(settings.per_address_per_minute),
        by_token: limit::RateLimit::per_minute(settings.per_token_per_minute),
        metrics,
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        shared.clone(),
        stopped.clone(),
    ));
    tokio::spawn(recount_tokens(shared, stopped));
    tracing::info!(listen = %addr, "enrolment API listening");
    Ok(Running { addr, stop, task })
}

// === impl Running ===

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the accept loop to end; open connections end with it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Recounts the registry's tokens every [`TOKEN_RECOUNT`] until stopped.
async fn recount_tokens(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TOKEN_RECOUNT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => api::count_tokens(&shared).await,
        }
    }
}

/// Counts the registry's enrolment tokens at `now` (Unix seconds) from its records.
fn token_counts(records: &[crate::lifecycle::registry::Record], now: i64) -> TokenCounts {
    let mut counts = TokenCounts::default();
    for invitation in records
        .iter()
        .filter_map(|r| r.partner.as_ref()?.invitation.as_ref())
    {
        counts.issued += 1;
        if invitation.used_at.is_some() {
            counts.used += 1;
        } else if crate::lifecycle::commands::parse_time(&invitation.expires_at)
            .is_none_or(|t| t.unix_timestamp() <= now)
        {
            counts.expired += 1;
        }
    }
    counts
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "enrolment API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(api::handle(&shared, peer, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = http.serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
    connections.shutdown().await;
}
