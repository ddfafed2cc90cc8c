//! Forwarding to upstream services: endpoints with passive health, round robin over them, and the
//! two ways a request travels: the pooled client (this file) for the exchanges a partner
//! connection cannot drive itself, and the partner connection's own upstream connection
//! ([`dedicated`], speaking HTTP/1.1 through [`h1`]).

pub mod body;
#[cfg(not(feature = "hyper-dedicated"))]
pub mod dedicated;
#[cfg(feature = "hyper-dedicated")]
#[path = "dedicated_hyper.rs"]
pub mod dedicated;
pub mod h1;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use self::body::CountIn;
use crate::config::model::{self, UpstreamProtocol};
use crate::tls::pem::{self, PemError};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstream {upstream}: endpoint {endpoint:?} is not a valid authority")]
    Endpoint { upstream: String, endpoint: String },
    #[error("upstream {upstream}: its CA file")]
    Ca {
        upstream: String,
        #[source]
        source: PemError,
    },
    #[error("upstream {upstream}: {} holds no usable CA certificate", path.display())]
    NoRoots { upstream: String, path: PathBuf },
    #[error("upstream {upstream}: cannot load the system's CA certificates")]
    NativeRoots {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
}

impl UpstreamBuildError {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Ca { source, .. } => Some(source.path()),
            Self::NoRoots { path, .. } => Some(path),
            Self::Endpoint { .. } | Self::NativeRoots { .. } => None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why forwarding failed, in the categories the refusal and the metrics use.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream exchange failed")]
    Exchange(#[source] BoxError),
    /// The partner's request body broke while it was being streamed (bad chunk framing, reset):
    /// the client's fault, not the upstream's.
    #[error("the client's request body failed")]
    ClientBody(#[source] BoxError),
}

/// The category of an [`UpstreamFailure`]: the `kind` label of `certgate_upstream_errors_total`
/// and the `kind` field of the `upstream request failed` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Exchange,
    ClientBody,
}

impl UpstreamErrorKind {
    /// Every kind, in declaration order (each one's [`UpstreamErrorKind::index`]); a unit test
    /// fails when a variant is missing.
    pub const ALL: [Self; 4] = [
        Self::Connect,
        Self::Timeout,
        Self::Exchange,
        Self::ClientBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Exchange => "exchange",
            Self::ClientBody => "client_body",
        }
    }

    /// Position in [`UpstreamErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The endpoint a failed connect was to, above the OS's reason: what the log needs and the client's
/// answer never shows.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint}")]
pub struct ConnectFailed {
    endpoint: String,
    #[source]
    source: BoxError,
}

impl UpstreamFailure {
    /// A connect to `endpoint` that failed with `source`.
    pub fn connect(endpoint: &dyn std::fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::Connect(Box::new(ConnectFailed {
            endpoint: endpoint.to_string(),
            source: source.into(),
        }))
    }

    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            Self::Connect(_) => UpstreamErrorKind::Connect,
            Self::Timeout(_) => UpstreamErrorKind::Timeout,
            Self::Exchange(_) => UpstreamErrorKind::Exchange,
            Self::ClientBody(_) => UpstreamErrorKind::ClientBody,
        }
    }
}

#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Failed requests in a row.
    failures: AtomicU32,
    /// Milliseconds since [`Upstream::epoch`] until which the endpoint gets no traffic.
    ejected_until: AtomicU64,
}

/// What is sent upstream: the client's body, streamed, its bytes counted for the audit line.
pub type UpstreamBody = CountIn<Incoming>;

/// A configured upstream, ready to take requests.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    epoch: Instant,
    eject_after: u32,
    eject_for: Duration,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    connect_timeout: Duration,
    request_timeout: Duration,
    version: Version,
    /// HTTP/1.1 to plain-text endpoints only: what a partner connection can drive itself.
    dedicable: bool,
}

impl Upstream {
    /// Builds the pooled client. Done once per configuration generation, off the request path.
    ///
    /// # Errors
    /// An endpoint that is not a valid authority, or an unusable CA file.
    pub fn build(config: &model::Upstream) -> Result<Self, UpstreamBuildError> {
        let targets = config
            .endpoints
            .iter()
            .map(|e| {
                let authority =
                    e.authority
                        .parse::<Authority>()
                        .map_err(|_| UpstreamBuildError::Endpoint {
                            upstream: config.name.clone(),
                            endpoint: e.authority.clone(),
                        })?;
                let scheme = if e.tls { Scheme::HTTPS } else { Scheme::HTTP };
                Ok(Target {
                    scheme,
                    authority,
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let needs_tls = config.endpoints.iter().any(|e| e.tls);

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let tls = tls_config(config, needs_tls)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match config.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        if config.protocol == UpstreamProtocol::Http2 {
            client.http2_only(true);
        }
        Ok(Self {
            name: config.name.clone(),
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            eject_after: config.eject_after_failures,
            eject_for: config.eject_for,
            client: client.build(connector),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            dedicable: config.protocol == UpstreamProtocol::Http1 && !needs_tls,
            version: match config.protocol {
                UpstreamProtocol::Http1 => Version::HTTP_11,
                UpstreamProtocol::Http2 => Version::HTTP_2,
            },
        })
    }

    /// Picks the next endpoint in round-robin order, skipping ejected ones (when every endpoint
    /// is ejected, the rotation continues as if none were: trying beats refusing outright).
    pub fn pick(&self) -> EndpointId {
        let n = self.targets.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.targets[i].ejected_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n);
        EndpointId(index)
    }

    /// Picks an endpoint ([`Upstream::pick`]) and builds the absolute URI the pooled client needs.
    pub fn uri(&self, path_and_query: PathAndQuery) -> Result<(Uri, EndpointId), http::Error> {
        let endpoint = self.pick();
        let target = &self.targets[endpoint.0];
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path_and_query)
            .build()?;
        Ok((uri, endpoint))
    }

    /// Whether a partner connection may send this upstream's requests over a connection it owns.
    pub fn dedicable(&self) -> bool {
        self.dedicable
    }

    /// Whether the endpoint takes traffic (not ejected).
    pub fn available(&self, endpoint: EndpointId) -> bool {
        self.targets
            .get(endpoint.0)
            .is_some_and(|t| t.ejected_until.load(Ordering::Relaxed) <= self.now_ms())
    }

    pub fn authority(&self, endpoint: EndpointId) -> Option<&Authority> {
        self.targets.get(endpoint.0).map(|t| &t.authority)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends a prepared request to the endpoint [`Upstream::uri`] chose, bounding the wait for the
    /// response head by `request_timeout`, and feeds the outcome to passive health.
    ///
    /// # Errors
    /// Connect failures, timeouts and broken exchanges, classified.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        endpoint: EndpointId,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        *req.version_mut() = self.version;
        let result = match tokio::time::timeout(self.request_timeout, self.client.request(req))
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamFailure::connect(
                &self
                    .targets
                    .get(endpoint.0)
                    .map_or("none", |t| t.authority.as_str()),
                e,
            )),
            Ok(Err(e)) if is_request_body_error(&e) => Err(UpstreamFailure::ClientBody(e.into())),
            Ok(Err(e)) => Err(UpstreamFailure::Exchange(e.into())),
            Err(_) => Err(UpstreamFailure::Timeout(self.request_timeout)),
        };
        self.record(endpoint, result.as_ref().map(|_| ()));
        result
    }

    /// Feeds one exchange's outcome to passive health: consecutive failures eject the endpoint.
    pub fn record(&self, endpoint: EndpointId, result: Result<(), &UpstreamFailure>) {
        let Some(target) = self.targets.get(endpoint.0) else {
            return;
        };
        match result {
            Ok(()) => {
                target.failures.store(0, Ordering::Relaxed);
            }
            // The client's broken body says nothing about the endpoint.
            Err(UpstreamFailure::ClientBody(_)) => {}
            Err(_) => {
                let failures = target.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.eject_after > 0 && failures >= self.eject_after {
                    let until = self.now_ms()
                        + u64::try_from(self.eject_for.as_millis()).unwrap_or(u64::MAX);
                    target.ejected_until.store(until, Ordering::Relaxed);
                    target.failures.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        upstream = %self.name,
                        endpoint = %target.authority,
                        failures,
                        eject_for = ?self.eject_for,
                        "upstream endpoint ejected after consecutive failures"
                    );
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Which endpoint of an upstream a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointId(usize);

/// hyper reports a failure of the body it was sending as a "user body" error.
fn is_request_body_error(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        source = e.source();
    }
    false
}

fn tls_config(
    config: &model::Upstream,
    needs_tls: bool,
) -> Result<rustls::ClientConfig, UpstreamBuildError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &config.ca {
        let certs = pem::load_certs(ca).map_err(|source| UpstreamBuildError::Ca {
            upstream: config.name.clone(),
            source,
        })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(UpstreamBuildError::NoRoots {
                upstream: config.name.clone(),
                path: ca.clone(),
            });
        }
    } else if needs_tls {
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            if let Some(source) = native.errors.into_iter().next() {
                return Err(UpstreamBuildError::NativeRoots {
                    upstream: config.name.clone(),
                    source: std::io::Error::other(source.to_string()),
                });
            }
        }
        roots.add_parsable_certificates(native.certs);
    }
    // ALPN is left empty: hyper-rustls sets it from the enabled protocols.
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamBuildError::NativeRoots {
            upstream: config.name.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn every_kind_is_in_all_in_place_with_its_own_label() {
        let labels = assert_all_lists_every_variant!(UpstreamErrorKind:
            UpstreamErrorKind::Connect,
            UpstreamErrorKind::Timeout,
            UpstreamErrorKind::Exchange,
            UpstreamErrorKind::ClientBody,
        );
        assert_eq!(labels.len(), UpstreamErrorKind::ALL.len());
        for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?} is out of place in ALL");
        }
    }
}
