//! The enrolment API: an optional TLS listener (`onboarding.listen`) where a partner's developer
//! trades an invitation's token and a CSR for a pending request, and later fetches the issued
//! certificate from the request's status URL.
//!
//! It is control plane, not gateway: it serves the lifecycle state folder through
//! [`crate::lifecycle::commands`] (the same functions as the CLI, so every change is one event in
//! the same log) and never touches a partner connection. [`start`] needs only its settings, the
//! state folder and the server certificates, so any process that has those can run it.

mod api;
mod clients;
mod est;
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
/// The longest between two looks for certificates renewed over EST that are due to be revoked.
const SUPERSEDE_CHECK: Duration = Duration::from_secs(10);

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
    #[error("{}: not a CA certificate the enrolment API can verify renewals against", path.display())]
    CaInvalid {
        path: std::path::PathBuf,
        #[source]
        source: Option<rustls::Error>,
    },
    #[error("the enrolment API's client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("onboarding.portal")]
    Approvers(#[from] portal::ApproverError),
    #[error("the portal cannot load the lifecycle CA")]
    Signer(#[source] crate::lifecycle::ca::CaError),
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
    /// The embedded CA's key, for renewals over EST; `None` where this process cannot read it
    /// (renewal then answers `renewal_unavailable`).
    pub(crate) signer: Option<crate::lifecycle::ca::FileSigner>,
    pub(crate) state: StateDir,
    /// `lifecycle.max_validity_days` and `lifecycle.crl_next_update`, for renewals.
    pub(crate) max_validity_days: u32,
    pub(crate) crl_next_update: Duration,
    /// The web portal, when `onboarding.portal` is set.
    pub(crate) portal: Option<portal::Portal>,
    /// Tells partner from approver certificates.
    pub(crate) clients: Arc<clients::Clients>,
}

/// Binds `settings.listen` and serves the enrolment API for the registry in `state`, with the
/// gateway's server certificates from `server`, counting into `metrics`.
///
/// # Errors
/// The address cannot be bound, the certificates or the CA do not load, or the registry does not
/// open.
pub async fn start(
    settings: &model::Onboarding,
    lifecycle: &model::Lifecycle,
    state: &StateDir,
    database: &model::Database,
    server: &model::Server,
    metrics: Arc<Metrics>,
) -> Result<Running, StartError> {
    let ca_path = state.ca_cert();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| StartError::Ca {
        path: ca_path.clone(),
        source,
    })?;
    // A client certificate is optional: enrolling partners have none; renewing ones present
    // the one they hold, verified here against the embedded CA (chain, dates, clientAuth) and
    // then against the registry, which knows every revocation before the CRL does.
    let verifier = {
        use rustls::pki_types::pem::PemObject as _;
        let invalid = |source| StartError::CaInvalid {
            path: ca_path.clone(),
            source,
        };
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| invalid(None))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(|e| invalid(Some(e)))?;
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(StartError::Verifier)?
    };
    let (portal, approver_verifier) = match &settings.portal {
        Some(p) => {
            let (portal, verifier) = portal::Portal::load(p, lifecycle, state, &ca_pem)?;
            (Some(portal), verifier)
        }
        None => (None, None),
    };
    let clients = Arc::new(clients::Clients::new(verifier, approver_verifier));
    let tls = crate::tls::server::build_for_onboarding(server, Some(clients.clone())).map_err(
        |errors| {
            errors
                .into_iter()
                .next()
                .map_or(StartError::NoTls, StartError::Tls)
        },
    )?;
    let signer = match crate::lifecycle::ca::FileSigner::load(state) {
        Ok(signer) => Some(signer),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "enrolment API: the CA key is not readable here; renewal over EST is unavailable");
            None
        }
    };
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
        signer,
        state: state.clone(),
        max_validity_days: lifecycle.max_validity_days,
        crl_next_update: lifecycle.crl_next_update,
        portal,
        clients,
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        shared.clone(),
        stopped.clone(),
    ));
    tokio::spawn(recount_tokens(shared.clone(), stopped.clone()));
    tokio::spawn(supersede_renewed(shared, stopped));
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

/// Revokes certificates renewed over EST once their successor is in use or their grace period
/// has passed, checking a few times per grace period: at least every second, at most every
/// [`SUPERSEDE_CHECK`], so a successor's first use is acted on soon.
async fn supersede_renewed(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    if shared.signer.is_none() {
        return;
    }
    let every = (shared.settings.renewal_grace / 4).clamp(Duration::from_secs(1), SUPERSEDE_CHECK);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => api::supersede(&shared).await,
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
            // Verified by the handshake when present; its role is settled once per connection.
            let (client, approver) =
                match shared.clients.classify(tls.get_ref().1.peer_certificates()) {
                    clients::Client::None => (None, None),
                    clients::Client::Partner(der) => (Some(Arc::<[u8]>::from(der.as_ref())), None),
                    clients::Client::Approver(der) => (
                        None,
                        shared
                            .portal
                            .as_ref()
                            .and_then(|p| p.approvers.of_certificate(der))
                            .map(Arc::new),
                    ),
                };
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let shared = shared.clone();
                let client = client.clone();
                let approver = approver.clone();
                async move {
                    let path = req.uri().path();
                    let answer = if path == "/portal" || path.starts_with("/portal/") {
                        portal::handle(&shared, peer, approver.as_deref(), req).await
                    } else {
                        api::handle(&shared, peer, client, req).await
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
