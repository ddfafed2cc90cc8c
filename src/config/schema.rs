//! Serde structs that mirror `certgate.yaml` one to one.
//!
//! Nothing here is validated beyond its YAML shape: `deny_unknown_fields` catches typos at the place
//! they were made, and `validate.rs` turns these raw values into the typed `model`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub server: Server,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub partners: Vec<Partner>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub forward: Option<Forward>,
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// The enrolment API's listener; see `docs/onboarding.md`.
    #[serde(default)]
    pub onboarding: Option<Onboarding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Onboarding {
    pub listen: String,
    #[serde(default)]
    pub max_body_bytes: Option<u32>,
    #[serde(default)]
    pub per_address_per_minute: Option<u32>,
    #[serde(default)]
    pub per_token_per_minute: Option<u32>,
    /// The web portal on the same listener; see `docs/onboarding.md`.
    #[serde(default)]
    pub portal: Option<Portal>,
    /// How long a certificate renewed over EST stays valid beside its successor (default 24h).
    #[serde(default)]
    pub renewal_grace: Option<String>,
}

/// `onboarding.portal`: who may act as an approver, and what partners are shown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// PEM file of the CA(s) that issue approvers' client certificates.
    #[serde(default)]
    pub approver_ca: Option<PathBuf>,
    /// Names (subject CN, or URI/DNS SAN) of the approver certificates accepted; all of the
    /// approver CA's when absent.
    #[serde(default)]
    pub approvers: Option<Vec<String>>,
    /// SHA-256 (hex) of the admin token.
    #[serde(default)]
    pub admin_token_sha256: Option<String>,
    /// A file holding the admin token itself (a mounted secret), hashed at start.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The gateway's public base URL, for the commands shown to partners.
    #[serde(default)]
    pub gateway_url: Option<String>,
}

/// The embedded CA and partner registry (`certgate ca init`, `certgate partner …`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    pub state_dir: PathBuf,
    /// Name of the trust bundle the embedded CA becomes (default `lifecycle`).
    #[serde(default)]
    pub bundle: Option<String>,
    /// How far ahead a signed CRL's nextUpdate lies (default 168h).
    #[serde(default)]
    pub crl_next_update: Option<String>,
    /// Longest validity `partner issue` grants, in days (default 90).
    #[serde(default)]
    pub max_validity_days: Option<u32>,
    /// `sqlite://PATH` or `postgres://…` (default: `registry.sqlite` in `state_dir`).
    #[serde(default)]
    pub database: Option<String>,
    /// A control plane's feed (`http://host:port`) that a gateway mirrors into `state_dir`.
    #[serde(default)]
    pub source: Option<String>,
    /// The sandbox evidence `partner promote` needs.
    #[serde(default)]
    pub promotion: Option<Promotion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Successful sandbox calls needed per scope (default 20).
    #[serde(default)]
    pub min_calls: Option<u64>,
    /// The latest calls per scope that must include no refused one (default 10; 0: unchecked).
    #[serde(default)]
    pub clean_calls: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    pub tls: ServerTls,
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub certificates: Vec<CertKey>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub session_resumption: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub trust_bundles: Vec<TrustBundle>,
    #[serde(default)]
    pub allow_missing_eku: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundle {
    pub name: String,
    pub ca: PathBuf,
    #[serde(default)]
    pub crl: Vec<CrlSource>,
    #[serde(default)]
    pub crl_expired: Option<String>,
    #[serde(default)]
    pub ocsp: Option<Ocsp>,
    #[serde(default)]
    pub revocation: Option<RevocationScope>,
}

/// `revocation:` of a trust bundle: how much of a chain the bundle's CRL and OCSP sources must cover.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationScope {
    /// `full_chain` (default) or `leaf_only`.
    #[serde(default)]
    pub coverage: Option<String>,
    /// `reject` (default) or `allow`.
    #[serde(default)]
    pub unknown_issuer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSource {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub refresh: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ocsp {
    pub mode: String,
    #[serde(default)]
    pub responder: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_cache_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_concurrent_handshakes: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub max_chain_depth: Option<usize>,
    pub max_chain_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Default `127.0.0.1:9901`.
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub request_timeout: Option<String>,
    /// `http1` (default) or `http2`; for `https://` endpoints `http2` is offered through ALPN.
    #[serde(default)]
    pub protocol: Option<String>,
    /// CA certificates that an `https://` endpoint's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub eject_after_failures: Option<u32>,
    #[serde(default)]
    pub eject_for: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub id: String,
    pub owner: String,
    pub trust_bundle: String,
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One way to bind a certificate to a partner; exactly one key per list item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub spiffe: Option<String>,
    #[serde(default)]
    pub subject_cn: Option<String>,
    #[serde(default)]
    pub san_dns: Option<String>,
    #[serde(default)]
    pub fingerprint_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub scope: String,
    pub upstream: String,
    /// Overrides `server.limits.max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// `sandbox` or `production` (default).
    #[serde(default)]
    pub environment: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    #[serde(default)]
    pub client_cert_header: Option<String>,
    #[serde(default)]
    pub partner_header: Option<String>,
    /// Header names (a trailing `*` matches any rest) removed from requests in addition to the
    /// built-in list of other front ends' identity headers.
    #[serde(default)]
    pub strip_headers: Vec<String>,
}
