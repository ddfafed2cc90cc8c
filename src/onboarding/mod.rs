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
mod portal;

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
    #[error("onboarding.portal")]
    Approvers(#[from] portal::ApproverError),
    #[error("the portal cannot load the lifecycle CA")]
    Signer(#[source] crate::lifecycle::ca::CaError),
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
    /// The web portal, when `onboarding.portal` is set.
    pub(crate) portal: Option<portal::Portal>,
}

/// Binds `settings.listen` and serves the enrolment API for the registry in `state`, with the
/// gateway's server certificates from `server`.
///
/// # Errors
/// The address cannot be bound, the certificates or the CA do not load, or the registry does not
/// open.
pub async fn start(
    settings: &model::Onboarding,
    state: &StateDir,
    database: &model::Database,
    server: &model::Server,
    lifecycle: &model::Lifecycle,
) -> Result<Running, StartError> {
    let ca_path = state.ca_cert();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| StartError::Ca {
        path: ca_path.clone(),
        source,
    })?;
    let (portal, verifier) = match &settings.portal {
        Some(p) => {
            let (portal, verifier) = portal::Portal::load(p, lifecycle, state, &ca_pem)?;
            (Some(portal), verifier)
        }
        None => (None, None),
    };
    let tls =
        crate::tls::server::build_with_client_verifier(server, verifier).map_err(|errors| {
            errors
                .into_iter()
                .next()
                .map_or(StartError::NoTls, StartError::Tls)
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
        portal,
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        shared,
        stopped,
    ));
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
            // An approver's certificate (verified against the approver CA by the handshake) is
            // read once per connection.
            let approver = shared.portal.as_ref().and_then(|p| {
                let der = tls.get_ref().1.peer_certificates()?.first()?;
                p.approvers.of_certificate(der).map(Arc::new)
            });
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let shared = shared.clone();
                let approver = approver.clone();
                async move {
                    let path = req.uri().path();
                    let answer = if path == "/portal" || path.starts_with("/portal/") {
                        portal::handle(&shared, peer, approver.as_deref(), req).await
                    } else {
                        api::handle(&shared, peer, req).await
                    };
                    Ok::<_, std::convert::Infallible>(answer)
                }
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
