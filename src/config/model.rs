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
    /// The enrolment API's listener, when configured (it needs `lifecycle`).
    pub onboarding: Option<Onboarding>,
    /// What the lifecycle registry published beside its partners, for the gateway's metrics.
    /// Empty without `lifecycle`.
    pub registry: RegistryFacts,
}

/// Facts from the lifecycle registry's published table that the partner table does not carry.
#[derive(Debug, Clone, Default)]
pub struct RegistryFacts {
    /// Every valid certificate of a published partner.
    pub certificates: Vec<RegisteredCertificate>,
    /// Every published partner's lifecycle times.
    pub partners: Vec<RegisteredPartner>,
    /// Partners left without a valid certificate by a revocation.
    pub revocations: Vec<RegisteredRevocation>,
}

/// Lifecycle times of a published partner, Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPartner {
    pub id: String,
    pub registered_at: Option<i64>,
    pub approved_at: Option<i64>,
    pub first_issued_at: Option<i64>,
    /// The enrolment request's submission, for partners that came through the enrolment API.
    pub enrolled_at: Option<i64>,
    pub promoted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredRevocation {
    pub partner: String,
    /// Unix seconds of the partner's latest revocation.
    pub revoked_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredCertificate {
    pub partner: String,
    /// Upper-case hex, as [`crate::identity`] reads it from a presented certificate.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The enrolment API: a TLS listener with the gateway's server certificates, beside the partner
/// port, serving the lifecycle state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onboarding {
    pub listen: SocketAddr,
    /// Largest request body, in bytes (default 64 KiB: a CSR is a few KiB at most).
    pub max_body_bytes: u32,
    /// Requests per source address per minute (default 30).
    pub per_address_per_minute: u32,
    /// Submissions per enrolment token per minute (default 5).
    pub per_token_per_minute: u32,
    /// The web portal under `/portal/` on the same listener; off when absent.
    pub portal: Option<Portal>,
    /// How long a certificate renewed over EST (`simplereenroll`) stays valid beside its
    /// successor before it is revoked as superseded (default 24 hours; 0: at the next check).
    pub renewal_grace: Duration,
}

/// The web portal's approver authentication and what it shows partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// Client certificates verified against this CA file (PEM) are approvers.
    pub approver_ca: Option<PathBuf>,
    /// Accepted approver names; empty accepts every certificate of `approver_ca`.
    pub approvers: Vec<String>,
    pub admin_token: Option<AdminToken>,
    /// The gateway's public base URL (`https://host:port`), for the commands shown to partners.
    pub gateway_url: String,
}

/// Where the admin token's hash comes from. The token itself is never kept in memory past start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// SHA-256 of the token, lower-case hex.
    Sha256(String),
    /// A file holding the token, read and hashed at start.
    File(PathBuf),
}

/// The gateway URL shown to partners when `onboarding.portal.gateway_url` is not set.
pub const DEFAULT_PORTAL_GATEWAY_URL: &str = "https://gateway.example";

/// Default [`Onboarding::renewal_grace`].
pub const DEFAULT_RENEWAL_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Where a route (and the upstream it forwards to) belongs. A sandbox route requires the sandbox
/// twin of its scope (see [`sandbox_scope`]): partners granted the scope in production hold the
/// twin too, partners granted it in sandbox only hold nothing else. The route table and the
/// per-request decision stay exactly as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    /// The default, so a configuration without environments means what it always meant.
    #[default]
    Production,
    Sandbox,
}

/// Suffix of a scope's sandbox twin.
pub const SANDBOX_SUFFIX: &str = "@sandbox";

/// The name of `scope`'s sandbox twin: what a sandbox route requires and a sandbox-only grant
/// holds.
pub fn sandbox_scope(scope: &str) -> String {
    format!("{scope}{SANDBOX_SUFFIX}")
}

/// Gives every partner the sandbox twin of each scope it holds (where a sandbox route uses one):
/// a production grant includes the sandbox. Idempotent; run after every change to the partners.
pub fn grant_sandbox_twins(scopes: &[String], partners: &mut [Partner]) {
    let ids: std::collections::HashMap<&str, ScopeId> = scopes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), ScopeId(i)))
        .collect();
    for p in partners {
        let twins: Vec<ScopeId> = p
            .scopes
            .iter()
            .filter_map(|s| scopes.get(s.0))
            .filter_map(|name| ids.get(sandbox_scope(name).as_str()).copied())
            .collect();
        if !twins.is_empty() {
            p.scopes.extend(twins);
            p.scopes.sort();
            p.scopes.dedup();
        }
    }
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Sandbox => "sandbox",
        }
    }
}

/// Default [`Onboarding::max_body_bytes`].
pub const DEFAULT_ONBOARDING_BODY: u32 = 64 * 1024;
/// Default [`Onboarding::per_address_per_minute`].
pub const DEFAULT_PER_ADDRESS_PER_MINUTE: u32 = 30;
/// Default [`Onboarding::per_token_per_minute`].
pub const DEFAULT_PER_TOKEN_PER_MINUTE: u32 = 5;

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
    /// `lifecycle.database` when set; `None` is the SQLite file in the state folder, whichever
    /// folder that is (the CLI's `--state` may name another).
    pub database: Option<Database>,
    /// The control plane's feed (`certgate control-plane`) a gateway mirrors `state_dir` from,
    /// when the registry lives on another host; `None`: the files are written locally.
    pub source: Option<Endpoint>,
    /// The sandbox evidence `partner promote` needs (`lifecycle.promotion`).
    pub promotion: Promotion,
}

/// The sandbox calls a partner must have made before `partner promote` grants production, per
/// scope it was granted, as the gateways recorded them in the state folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// Calls answered with a 1xx–3xx status on sandbox routes needing the scope (at least 1).
    pub min_calls: u64,
    /// How many of the latest calls on those routes must include no refused one; 0 turns the
    /// check off.
    pub clean_calls: u64,
}

/// Default [`Promotion::min_calls`].
pub const DEFAULT_PROMOTE_MIN_CALLS: u64 = 20;
/// Default [`Promotion::clean_calls`].
pub const DEFAULT_PROMOTE_CLEAN_CALLS: u64 = 10;

impl Default for Promotion {
    fn default() -> Self {
        Self {
            min_calls: DEFAULT_PROMOTE_MIN_CALLS,
            clean_calls: DEFAULT_PROMOTE_CLEAN_CALLS,
        }
    }
}

/// The environment variable that, when set and not empty, replaces `lifecycle.database` (same
/// syntax).
pub const DATABASE_ENV: &str = "CERTGATE_LIFECYCLE_DATABASE";

/// The registry's database, from `lifecycle.database` or [`DATABASE_ENV`].
///
/// `Debug` and `Display` never show a password: the value ends up in error messages and logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An embedded SQLite file (absolute path), created by `certgate ca init`.
    Sqlite(PathBuf),
    /// A PostgreSQL server shared by control-plane replicas. The URL is checked at load; its
    /// user, password, host, port and database fall back to the libpq `PG*` environment variables.
    Postgres(url::Url),
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub certificates: Vec<CertKey>,
    pub min_version: TlsVersion,
    /// TLS session resumption (tickets and stateful). Revocation and partner mapping are re-checked
    /// on every connection, resumed or not, so resumption cannot bypass a revocation.
    pub session_resumption: bool,
    /// Accept client certificates that carry no extended key usage extension at all (default
    /// false: `id-kp-clientAuth` must be present). For legacy PKIs; a certificate with the
    /// extension must list clientAuth either way.
    pub allow_missing_eku: bool,
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
    /// Handshakes in progress at once (default 8 per worker thread); the rest wait in arrival
    /// order, so a reconnect storm cannot starve the requests of established connections. A
    /// handshake waiting more than 10 ms for its client lets another go ahead meanwhile. See
    /// `proxy::handshake_budget`.
    pub max_concurrent_handshakes: Option<usize>,
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
            max_concurrent_handshakes: None,
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
    /// Which certificates need a revocation status, once `crls` or `ocsp` is configured.
    pub revocation: RevocationScope,
}

/// How much of a presented chain a bundle's revocation sources must vouch for. Only applies to a
/// bundle that configures a CRL or OCSP; a bundle with neither checks nothing.
///
/// The default (`full_chain` / `reject`) never lets a certificate through unchecked: a missing
/// source must not be more lenient than a stale one, which is already refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RevocationScope {
    pub coverage: Coverage,
    pub unknown_issuer: UnknownIssuer,
}

/// Which certificates of a chain need a status from a configured source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Coverage {
    /// The leaf and every intermediate below the trust anchor (default).
    #[default]
    FullChain,
    /// Only the leaf. Intermediates are still refused when a loaded CRL lists them.
    LeafOnly,
}

/// What a certificate gets when [`Coverage`] asks for its status and no configured source covers
/// its issuer (no CRL from that issuer, and no OCSP for a leaf).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UnknownIssuer {
    /// Refused as `revocation_unknown` (default).
    #[default]
    Reject,
    /// Passed unchecked.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CrlSource {
    File(PathBuf),
    Url { url: String, refresh: Duration },
}

/// What to do when a CRL's nextUpdate has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlExpiredPolicy {
    Reject,
    AllowWithWarning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcspMode {
    Off,
    SoftFail,
    HardFail,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Client-sent headers removed before a request goes upstream: [`STRIP_BY_DEFAULT`] plus
    /// `forward.strip_headers`.
    pub strip_headers: StripHeaders,
}

/// Header names that assert who the client is or where the request came from in the conventions
/// of other front ends (nginx, HAProxy, Envoy, Traefik, Apache `mod_ssl`, AWS ALB and API Gateway,
/// Azure Front Door, App Gateway and App Service, Cloudflare, Akamai, Fastly, oauth2-proxy), or
/// that name a second method or path for the request. Upstreams moved behind certgate from such a
/// front end may still trust them, and certgate never sets any of them from a client's word, so a
/// client's copy is removed. Lower case, `-` for `_`; a trailing `*` matches any rest.
///
/// certgate's own headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`, the certificate
/// and partner headers) are removed as well and then set from the verified connection.
pub const STRIP_BY_DEFAULT: &[&str] = &[
    // TLS client certificate and verification results.
    "x-ssl-*",
    "ssl-*",
    "x-client-cert*",
    "x-client-verif*",
    "x-client-dn",
    "x-client-s-dn",
    "x-client-i-dn",
    "x-client-subject*",
    "x-client-issuer*",
    "x-client-serial*",
    "x-client-fingerprint*",
    "x-tls-client-*",
    "x-arr-*",
    "x-amzn-mtls-*",
    // Authenticated users asserted by an authenticating front end.
    "x-amzn-oidc-*",
    "x-ms-client-principal*",
    "x-ms-token-*",
    "x-auth-request-*",
    "x-remote-user",
    "remote-user",
    "cf-access-*",
    // Client address, scheme, host, port and path as a front end saw them.
    "x-forwarded-*",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "x-proxyuser-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "true-client-ip",
    "fastly-client-ip",
    "cf-connecting-ip*",
    "x-azure-*",
    "x-envoy-*",
    "x-original-*",
    "x-rewrite-url",
    // A second method for the request than the one policy checked.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A set of header name patterns, compiled at load so that matching a request's header names
/// compares bytes only: no allocation, no hashing.
#[derive(Debug, Clone, Default)]
pub struct StripHeaders {
    /// Sorted, lower case, `-` for `_`.
    patterns: Vec<NamePattern>,
    /// For each possible first byte of a name, the range of `patterns` starting with it.
    by_first: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NamePattern {
    name: Box<[u8]>,
    prefix: bool,
}

impl StripHeaders {
    /// Compiles patterns already checked by config validation ([`StripHeaders::check`]); an
    /// invalid one is skipped.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<NamePattern> = patterns
            .into_iter()
            .filter(|p| Self::check(p).is_ok())
            .map(|p| {
                let (name, prefix) = match p.strip_suffix('*') {
                    Some(name) => (name, true),
                    None => (p, false),
                };
                NamePattern {
                    name: name.bytes().map(fold).collect(),
                    prefix,
                }
            })
            .collect();
        patterns.sort();
        patterns.dedup();
        let mut by_first = vec![(0u16, 0u16); 256];
        for (i, p) in patterns.iter().enumerate() {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            let slot = &mut by_first[usize::from(p.name[0])];
            if slot.0 == slot.1 {
                *slot = (i, i);
            }
            slot.1 = i.saturating_add(1);
        }
        Self { patterns, by_first }
    }

    /// The defaults plus `extra`.
    pub fn with_defaults<'a>(extra: impl IntoIterator<Item = &'a str>) -> Self {
        Self::new(STRIP_BY_DEFAULT.iter().copied().chain(extra))
    }

    /// Why `pattern` cannot be used, if it cannot: a header name (RFC 9110 token characters),
    /// optionally ending in `*`, with at least one character before the `*`.
    ///
    /// # Errors
    /// A short message for the config problem list.
    pub fn check(pattern: &str) -> Result<(), &'static str> {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if name.is_empty() {
            return Err("an empty name (or a lone `*`, which would strip every header)");
        }
        if pattern.len() > u16::MAX.into() {
            return Err("a name this long cannot be a header name");
        }
        if name.contains('*') {
            return Err("`*` may only end a name, as in `X-Acme-*`");
        }
        if !name.bytes().all(is_tchar) {
            return Err("not a header name: only letters, digits and !#$%&'*+-.^_`|~ are allowed");
        }
        Ok(())
    }

    /// Whether a header name (lower case, as `http::HeaderName` keeps it) matches, with `_` read
    /// as `-`.
    pub fn matches(&self, name: &[u8]) -> bool {
        let Some(&first) = name.first() else {
            return false;
        };
        let Some(&(from, to)) = self.by_first.get(usize::from(fold(first))) else {
            return false;
        };
        self.patterns[usize::from(from)..usize::from(to)]
            .iter()
            .any(|p| p.matches(name))
    }
}

impl NamePattern {
    fn matches(&self, name: &[u8]) -> bool {
        let fits = if self.prefix {
            name.len() >= self.name.len()
        } else {
            name.len() == self.name.len()
        };
        fits && self.name.iter().zip(name).all(|(&p, &n)| p == fold(n))
    }
}

/// Lower case, and `_` as `-`: the spellings under which one header reaches different upstreams
/// (CGI-style servers and some frameworks read `X_SSL_CLIENT` as `X-SSL-Client`).
fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// === impl Database ===

impl Database {
    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => {
                let mut shown = url.clone();
                if shown.password().is_some() {
                    // Only fails for URLs that cannot carry a password, and this one does.
                    let _ = shown.set_password(Some("***"));
                }
                shown.to_string()
            }
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(_) => write!(f, "Sqlite({self})"),
            Self::Postgres(_) => write!(f, "Postgres({self})"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_database_password_is_never_displayed_or_debugged() {
        let url = url::Url::parse("postgres://registry:s3cret@db.internal:5432/certgate").unwrap();
        let db = Database::Postgres(url);
        assert_eq!(
            db.to_string(),
            "postgres://registry:***@db.internal:5432/certgate"
        );
        assert!(!format!("{db:?}").contains("s3cret"));
        let no_password = Database::Postgres(url::Url::parse("postgres://db/certgate").unwrap());
        assert_eq!(no_password.to_string(), "postgres://db/certgate");
    }
}
