//! [`Snapshot`]: one generation of everything a connection needs, built off the hot path and
//! published with a single atomic store.

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Config;
use crate::identity::PartnerIndex;
use crate::metrics::{Handles, Metrics};
use crate::policy::RouteTable;
use crate::revocation::{self, Registry, Revocation, RevocationService};
use crate::tls::server::{ServedCertificate, ServerTlsError};
use crate::tls::trust::{TrustError, TrustStore};
use crate::tls::verifier::{ChainLimits, ClientVerifier};
use crate::upstream::{Upstream, UpstreamBuildError};

/// Something that stops a configuration from becoming a snapshot, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    ServerTls(#[from] ServerTlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamBuildError),
    #[error(transparent)]
    Revocation(#[from] revocation::BuildError),
}

impl BuildError {
    /// The file the problem is in, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Trust(e) => Some(e.path()),
            Self::ServerTls(e) => e.path(),
            Self::Upstream(e) => e.path(),
            Self::Revocation(_) => None,
        }
    }
}

/// One configuration generation. Connections pin the snapshot they were accepted under, so
/// in-flight requests finish under the configuration they started with.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub trust: Arc<TrustStore>,
    pub revocation: Arc<Revocation>,
    pub verifier: Arc<ClientVerifier>,
    pub acceptor: TlsAcceptor,
    pub partners: PartnerIndex,
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// HTTP/1.1 and HTTP/2 server settings, chosen per connection by ALPN.
    /// Serves connections that did not negotiate `h2`. hyper's own HTTP/1.1 server rather than
    /// the auto one, because only its connection can be taken apart to park an idle connection
    /// (see `proxy::connection`).
    pub http1: http1::Builder,
    pub http2: auto::Builder<TokioExecutor>,
    /// This generation's metric handles, indexed by the route, partner and upstream ids above.
    pub metrics: Arc<Handles>,
    /// The server certificate served under each SNI name, for the expiry gauge set when this
    /// generation is published.
    pub server_certificates: Vec<ServedCertificate>,
    /// When this generation was built.
    pub loaded_at: std::time::SystemTime,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.config.version)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Loads every file the configuration names and precompiles every table. Revocation state
    /// comes from `revocation`: bundles whose definition is unchanged share the state (loaded
    /// CRLs, fetch schedule, OCSP cache) of the generation in service.
    ///
    /// # Errors
    /// Every problem found, each naming its file, not only the first.
    pub fn build(
        config: Arc<Config>,
        revocation: &Arc<RevocationService>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, Vec<BuildError>> {
        let registry = revocation.registry().clone();
        let mut errors: Vec<BuildError> = Vec::new();
        let trust = TrustStore::load(&config.trust_bundles)
            .map(Arc::new)
            .map_err(|es| errors.extend(es.into_iter().map(BuildError::from)))
            .ok();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            match Upstream::build(u) {
                Ok(u) => upstreams.push(u),
                Err(e) => errors.push(e.into()),
            }
        }
        // Without a trust store there is nothing to verify against, but the server certificates
        // are still loaded (against an empty store) so every problem is reported in one go.
        let (store, revocation) = match &trust {
            Some(trust) => {
                let cas: Vec<_> = trust.bundles.iter().map(|b| b.certs.clone()).collect();
                match revocation.revocation(&config.trust_bundles, &cas) {
                    Ok(r) => (trust.clone(), Arc::new(r)),
                    Err(e) => {
                        errors.push(e.into());
                        (trust.clone(), Arc::new(empty_revocation(registry.clone())?))
                    }
                }
            }
            None => (
                Arc::new(TrustStore {
                    bundles: Vec::new(),
                    hints: Vec::new(),
                }),
                Arc::new(empty_revocation(registry.clone())?),
            ),
        };
        let limits = ChainLimits {
            max_intermediates: config.server.limits.max_chain_depth,
            max_bytes: config.server.limits.max_chain_bytes,
        };
        let verifier = Arc::new(
            ClientVerifier::new(store.clone(), revocation.clone(), limits)
                .allow_missing_eku(config.server.allow_missing_eku),
        );
        let tls = crate::tls::server::build(&config.server, verifier.clone())
            .map_err(|es| errors.extend(es.into_iter().map(BuildError::from)))
            .ok();
        let tls = match tls {
            Some(tls) if errors.is_empty() => tls,
            _ => return Err(errors),
        };
        let (http1, http2) = http_builders(&config);
        Ok(Self {
            partners: PartnerIndex::build(&config.partners),
            routes: RouteTable::build(&config.routes),
            acceptor: TlsAcceptor::from(tls.config),
            server_certificates: tls.served,
            trust: store,
            revocation,
            verifier,
            upstreams,
            http1,
            http2,
            metrics: Arc::new(Handles::build(metrics, &config)),
            loaded_at: std::time::SystemTime::now(),
            config,
        })
    }
}

/// Revocation over no bundles: only used to keep building (and reporting) after an earlier error.
fn empty_revocation(registry: Arc<Registry>) -> Result<Revocation, Vec<BuildError>> {
    Revocation::new(&[], &[], registry).map_err(|e| vec![e.into()])
}

/// The HTTP/1.1 and HTTP/2 builders, chosen per connection by ALPN.
///
/// `serve_connection_with_upgrades` sniffs the client's preface and ignores `http2_only`: a client
/// that negotiated `h2` may still speak HTTP/1.1. So the HTTP/2 builder carries every limit for
/// both protocols, or such a client would be served with hyper's defaults (for HTTP/1.1 over an
/// `h2` connection: no header read timeout at all). A connection that did not negotiate `h2` is
/// served HTTP/1.1 only, with the same HTTP/1.1 limits.
fn http_builders(config: &Config) -> (http1::Builder, auto::Builder<TokioExecutor>) {
    let limits = &config.server.limits;
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let mut http2 = auto::Builder::new(TokioExecutor::new()).http2_only();
    http2
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    // No HTTP/2 keep-alive PINGs: the connection's stall and idle clocks already end a partner
    // gone quiet (with or without a request in flight), and hyper's PING machinery reads the clock
    // and takes a lock on every frame received, 2.5 % of an h2 request's CPU.
    http2
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(64);
    (http1, http2)
}
