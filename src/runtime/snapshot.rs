//! [`Snapshot`]: one generation of everything a connection needs, built off the hot path and
//! published with a single atomic store.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Config;
use crate::identity::PartnerIndex;
use crate::policy::RouteTable;
use crate::proxy::upstream::{Upstream, UpstreamBuildError};
use crate::revocation::Checker;
use crate::tls::server::ServerTlsError;
use crate::tls::trust::{TrustError, TrustStore};
use crate::tls::verifier::ClientVerifier;

/// Something that stops a configuration from becoming a snapshot, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    ServerTls(#[from] ServerTlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamBuildError),
}

impl BuildError {
    /// The file the problem is in, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Trust(e) => Some(e.path()),
            Self::ServerTls(e) => e.path(),
            Self::Upstream(e) => e.path(),
        }
    }
}

/// One configuration generation. Connections pin the snapshot they were accepted under, so
/// in-flight requests finish under the configuration they started with.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub trust: Arc<TrustStore>,
    pub verifier: Arc<ClientVerifier>,
    pub acceptor: TlsAcceptor,
    pub partners: PartnerIndex,
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// HTTP/1.1 and HTTP/2 server settings, chosen per connection by ALPN.
    pub http1: auto::Builder<TokioExecutor>,
    pub http2: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.config.version)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Loads every file the configuration names and precompiles every table.
    ///
    /// # Errors
    /// Every problem found, each naming its file, not only the first.
    pub fn build(config: Arc<Config>, checker: Arc<Checker>) -> Result<Self, Vec<BuildError>> {
        let mut errors: Vec<BuildError> = Vec::new();
        let trust = match TrustStore::load(&config.trust_bundles) {
            Ok(t) => Some(Arc::new(t)),
            Err(es) => {
                errors.extend(es.into_iter().map(BuildError::from));
                None
            }
        };
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            match Upstream::build(u) {
                Ok(u) => upstreams.push(u),
                Err(e) => errors.push(e.into()),
            }
        }
        let (trust, verifier, tls) = match trust {
            Some(trust) => {
                let verifier = Arc::new(ClientVerifier::new(trust.clone(), checker));
                match crate::tls::server::build(&config.server, verifier.clone()) {
                    Ok(tls) => (trust, verifier, tls),
                    Err(es) => {
                        errors.extend(es.into_iter().map(BuildError::from));
                        return Err(errors);
                    }
                }
            }
            None => {
                // The server certificates are still worth checking so every problem is reported.
                if let Err(es) = crate::tls::server::build(
                    &config.server,
                    Arc::new(ClientVerifier::new(
                        Arc::new(TrustStore {
                            bundles: Vec::new(),
                            hints: Vec::new(),
                        }),
                        checker,
                    )),
                ) {
                    errors.extend(es.into_iter().map(BuildError::from));
                }
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let (http1, http2) = http_builders(&config);
        Ok(Self {
            partners: PartnerIndex::build(&config.partners),
            routes: RouteTable::build(&config.routes),
            acceptor: TlsAcceptor::from(tls),
            trust,
            verifier,
            upstreams,
            http1,
            http2,
            config,
        })
    }
}

fn http_builders(config: &Config) -> (auto::Builder<TokioExecutor>, auto::Builder<TokioExecutor>) {
    let limits = &config.server.limits;
    let mut http1 = auto::Builder::new(TokioExecutor::new()).http1_only();
    http1
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let mut http2 = auto::Builder::new(TokioExecutor::new()).http2_only();
    http2
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(64)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    (http1, http2)
}
