//! The validated configuration: typed values, defaults applied, names resolved to indices.
//!
//! Everything downstream of `config` reads this and never the YAML, so a value that reached a model
//! type has already been checked. Paths are absolute (resolved against the config file's folder).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Index of an upstream in [`Config::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub usize);

/// Index of a trust bundle in [`Config::trust_bundles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleId(pub usize);

/// Index of a partner in [`Config::partners`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartnerId(pub usize);

/// Index of a scope name in [`Config::scopes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(pub usize);

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub source: PathBuf,
    /// SHA-256 of the YAML text, hex: shown in `/status` so an operator can tell generations apart.
    pub version: String,
    pub server: Server,
    pub admin: Admin,
    pub trust_bundles: Vec<TrustBundle>,
    pub upstreams: Vec<Upstream>,
    pub partners: Vec<Partner>,
    pub routes: Vec<Route>,
    /// Every scope name that a route or partner mentions, interned; [`ScopeId`] indexes this.
    pub scopes: Vec<String>,
    pub forward: Forward,
    /// The embedded CA and registry, when configured: its bundle and partners are merged into
    /// `trust_bundles` and `partners` by [`crate::config::load`].
    pub lifecycle: Option<Lifecycle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Absolute.
    pub state_dir: PathBuf,
    /// The trust bundle the embedded CA becomes (default `lifecycle`).
    pub bundle: String,
    /// How far ahead a CRL signed by the CLI sets its nextUpdate (default 7 days).
    pub crl_next_update: Duration,
    /// Longest validity `partner issue` grants, in days (default 90).
    pub max_validity_days: u32,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub certificates: Vec<CertKey>,
    pub min_version: TlsVersion,
    /// TLS session resumption (tickets and stateful). Revocation and partner mapping are re-checked
    /// on every connection, resumed or not, so resumption cannot bypass a revocation.
    pub session_resumption: bool,
    pub limits: Limits,
    /// How long in-flight requests may take to finish after a shutdown signal (default 30s).
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Connection hygiene. Every default is chosen for a partner API behind a gateway: generous enough
/// for slow partners, tight enough that an idle or hostile client cannot hold resources for long.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent client connections (default 10 000); further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// TLS handshake deadline (default 10s).
    pub handshake_timeout: Duration,
    /// Deadline for a request's headers to arrive (default 10s): the slowloris guard.
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this (default 60s).
    pub idle_timeout: Duration,
    /// Largest request head accepted, in bytes (default 64 KiB).
    pub max_header_bytes: usize,
    /// Most request headers accepted (default 100).
    pub max_headers: usize,
    /// HTTP/2 concurrent streams per connection (default 100).
    pub h2_max_concurrent_streams: u32,
    /// Most intermediates a client may present (default 4); longer chains are refused before
    /// path building, which is what bounds webpki's work for a hostile chain.
    pub max_chain_depth: usize,
    /// Largest total size of the presented certificates, in bytes (default 32 KiB).
    pub max_chain_bytes: usize,
    /// Largest request body forwarded, in bytes, for routes that set no `max_body_bytes` of
    /// their own (default none: bodies are streamed, never buffered, so their size costs no
    /// memory; set it when the upstream should not receive large uploads).
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_concurrent_streams: 100,
            max_chain_depth: 4,
            max_chain_bytes: 32 * 1024,
            max_body_bytes: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub name: String,
    pub ca: PathBuf,
    pub crls: Vec<CrlSource>,
    pub crl_expired: CrlExpiredPolicy,
    pub ocsp: Option<Ocsp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlSource {
    File(PathBuf),
    Url { url: String, refresh: Duration },
}

/// What to do when a CRL's nextUpdate has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlExpiredPolicy {
    Reject,
    AllowWithWarning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspMode {
    Off,
    SoftFail,
    HardFail,
}

#[derive(Debug, Clone)]
pub struct Ocsp {
    pub mode: OcspMode,
    pub responder: Option<String>,
    pub timeout: Duration,
    pub max_cache_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub ca: Option<PathBuf>,
    /// Passive health: an endpoint that fails this many requests in a row (connect errors,
    /// timeouts, broken exchanges) is taken out of the rotation (default 3; 0 never ejects)…
    pub eject_after_failures: u32,
    /// …for this long, after which it gets traffic again (default 10s).
    pub eject_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// `host:port`, as written (host may be a name or an address).
    pub authority: String,
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub id: String,
    pub owner: String,
    pub trust_bundle: BundleId,
    pub identities: Vec<IdentityMatch>,
    /// Sorted, without duplicates.
    pub scopes: Vec<ScopeId>,
}

/// One way a certificate binds to a partner. Values are normalised at load: DNS names lower-case,
/// fingerprints as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityMatch {
    Spiffe(String),
    SubjectCn(String),
    SanDns(String),
    Fingerprint([u8; 32]),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Lower-case, without port.
    pub host: Option<String>,
    pub path: PathMatch,
    /// `None` allows every method.
    pub methods: Option<Vec<http::Method>>,
    pub scope: ScopeId,
    pub upstream: UpstreamId,
    /// Largest request body forwarded, in bytes: the route's own `max_body_bytes`, else
    /// `server.limits.max_body_bytes`; `None` forwards any size. A declared `Content-Length` over
    /// it is refused with 413 before the upstream is contacted; a body that grows past it while
    /// streaming is cut, so the upstream sees an aborted request, never a complete one.
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Matches the prefix itself and anything below it at a segment boundary:
    /// `/v1/orders` matches `/v1/orders` and `/v1/orders/7`, not `/v1/ordersX`.
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertHeader {
    /// `Client-Cert` and `Client-Cert-Chain` (RFC 9440).
    Rfc9440,
    /// Envoy's `X-Forwarded-Client-Cert`.
    Xfcc,
    None,
}

#[derive(Debug, Clone)]
pub struct Forward {
    pub client_cert_header: ClientCertHeader,
    pub partner_header: http::HeaderName,
}
