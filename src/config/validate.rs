//! Schema → model: every check, every default, every name resolved to an index.
//!
//! Validation never stops at the first problem: an operator fixing a file should see the whole list
//! at once, not one problem per `certgate check` run. Each check that fails records a located
//! [`Problem`] and returns a stand-in value (a default, index 0) so the walk can go on; the model
//! built from stand-ins is thrown away whenever any problem was recorded.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::locate::{Index, Pos};
use super::model::{self, BundleId, ScopeId, UpstreamId};
use super::schema;
use super::{Checked, Place, Problem, Problems};

/// Whether a zero duration means something for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// Zero is a meaningful setting (a drain timeout of zero: close at once).
    Allowed,
    /// Zero would make the feature useless or spin (a zero timeout, a zero refresh interval).
    Rejected,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    #[error("invalid duration `{0}`: expected a whole number and a unit: ms, s, m or h (like 250ms, 2s, 5m, 1h)")]
    Format(String),
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

/// Why an upstream endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndpointError {
    #[error("expected http://host:port or https://host:port")]
    Scheme,
    #[error("user info is not allowed in an endpoint")]
    UserInfo,
    #[error("an endpoint has no path, query or fragment: use scheme://host:port")]
    Path,
    #[error("invalid host `{0}`")]
    Host(String),
    #[error("invalid port `{0}`: expected 1 to 65535")]
    Port(String),
}

/// Why a fingerprint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FingerprintError {
    #[error("expected 64 hex digits (a sha-256), colons optional; got {0} digits")]
    Length(usize),
    #[error(
        "expected 64 hex digits (a sha-256), colons optional; found a character that is not hex"
    )]
    NotHex,
}

const IDENTITY_KEYS: &str = "spiffe, subject_cn, san_dns or fingerprint_sha256";

/// The walk's state: where the file is, where its values are, and what is wrong so far.
struct Validator<'a> {
    file: &'a Path,
    /// The folder relative paths in the file are resolved against.
    base: PathBuf,
    index: Index,
    problems: Vec<Problem>,
    scopes: Vec<String>,
    scope_ids: HashMap<String, ScopeId>,
    /// Every place a scope is named (`partners[0].scopes[1]`, `routes[2].scope`), for warnings.
    scope_refs: Vec<(String, ScopeId)>,
    /// Every identity claim: partner index, partner id, the key's path, the claim.
    identity_refs: Vec<(usize, String, String, model::IdentityMatch)>,
    /// Each upstream's environment, by index.
    upstream_env: HashMap<usize, model::Environment>,
}

/// Everything about a name that was declared once and may be referred to later.
struct Declared {
    id: usize,
    path: String,
}

// === parse ===

/// See [`super::parse`].
pub(super) fn parse(text: &str, source: &Path) -> Result<model::Config, Problems> {
    validated(text, source).map(|(config, _)| config)
}

/// See [`super::parse_checked`].
pub(super) fn parse_checked(text: &str, source: &Path) -> Result<Checked, Problems> {
    let (config, v) = validated(text, source)?;
    let warnings = v.warnings(&config);
    Ok(Checked { config, warnings })
}

/// The model and the validator that built it (which knows where everything was written).
fn validated<'a>(text: &str, source: &'a Path) -> Result<(model::Config, Validator<'a>), Problems> {
    let file = super::yaml::read(text, source).map_err(Problems::from)?;
    let mut v = Validator::new(text, source);
    let config = v.config(file, text);
    if v.problems.is_empty() {
        Ok((config, v))
    } else {
        // File order: an operator reads and fixes top to bottom. The sort is stable, so problems
        // at one place keep the order they were found in.
        v.problems.sort_by_key(|p| match &p.place {
            Place::Yaml { line, column, .. } => (0, *line, *column),
            Place::File(_) | Place::None => (1, 0, 0),
        });
        Err(Problems::new(v.problems))
    }
}

// === impl Validator ===

impl<'a> Validator<'a> {
    fn new(text: &str, file: &'a Path) -> Self {
        // Absolute, so that the model's paths do not change meaning if the working directory does.
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            file,
            base,
            index: Index::build(text),
            problems: Vec::new(),
            scopes: Vec::new(),
            scope_ids: HashMap::new(),
            scope_refs: Vec::new(),
            upstream_env: HashMap::new(),
            identity_refs: Vec::new(),
        }
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        let pos = self.index.locate(field);
        self.problem_at(pos, field, message.into());
    }

    /// For problems with a mapping key rather than its value.
    fn key_problem(&mut self, field: &str, message: impl Into<String>) {
        let pos = self.index.locate_key(field);
        self.problem_at(pos, field, message.into());
    }

    fn problem_at(&mut self, pos: Option<Pos>, field: &str, message: String) {
        let problem = self.placed(pos, field, message);
        self.problems.push(problem);
    }

    /// A problem or warning at `pos`, or, where the field has no position, at the file with the
    /// field named in the message.
    fn placed(&self, pos: Option<Pos>, field: &str, message: String) -> Problem {
        match pos {
            Some(Pos { line, column }) => Problem {
                place: Place::Yaml {
                    file: self.file.to_owned(),
                    line,
                    column,
                    field: field.to_owned(),
                },
                message,
            },
            None => Problem {
                place: Place::File(self.file.to_owned()),
                message: format!("{field}: {message}"),
            },
        }
    }

    /// `line L column C` of a field, for messages that point at a second place.
    fn where_is(&self, field: &str) -> String {
        match self.index.locate(field) {
            Some(Pos { line, column }) => format!("{field} (line {line} column {column})"),
            None => field.to_owned(),
        }
    }

    fn config(&mut self, file: schema::File, text: &str) -> model::Config {
        let allow_missing_eku = file.server.client_auth.allow_missing_eku.unwrap_or(false);
        let lifecycle = self.lifecycle(file.lifecycle);
        let (trust_bundles, bundle_ids) =
            self.trust_bundles(file.server.client_auth, lifecycle.is_some());
        let server = self.server(
            file.server.listen,
            file.server.tls,
            file.server.limits,
            file.server.drain_timeout,
            allow_missing_eku,
        );
        let admin = self.admin(file.admin);
        let (upstreams, upstream_ids) = self.upstreams(file.upstreams);
        let partners = self.partners(file.partners, &bundle_ids);
        let routes = self.routes(file.routes, &upstream_ids, server.limits.max_body_bytes);
        let forward = self.forward(file.forward);
        let onboarding = self.onboarding(file.onboarding, lifecycle.is_some());
        let mut partners = partners;
        model::grant_sandbox_twins(&self.scopes, &mut partners);

        model::Config {
            source: self.file.to_owned(),
            version: hex::encode(Sha256::digest(text.as_bytes())),
            server,
            admin,
            trust_bundles,
            upstreams,
            partners,
            routes,
            scopes: std::mem::take(&mut self.scopes),
            forward,
            lifecycle,
            onboarding,
            registry: model::RegistryFacts::default(),
        }
    }

    // --- warnings ---

    /// What a valid configuration holds that will likely bite later: scopes granted but never
    /// required, routes nobody may call, bundles without revocation, identities of two partners
    /// that one certificate can carry both of. Located like problems.
    fn warnings(&self, config: &model::Config) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut warn = |field: &str, message: String| {
            out.push(self.placed(self.index.locate(field), field, message));
        };
        let mut held = vec![false; config.scopes.len()];
        let mut required = vec![false; config.scopes.len()];
        for p in &config.partners {
            for s in &p.scopes {
                held[s.0] = true;
            }
        }
        for r in &config.routes {
            required[r.scope.0] = true;
        }
        let mut granted_warned = vec![false; config.scopes.len()];
        for (at, id) in &self.scope_refs {
            let name = &config.scopes[id.0];
            if at.starts_with("partners[") && !required[id.0] && !granted_warned[id.0] {
                granted_warned[id.0] = true;
                let holders: Vec<&str> = config
                    .partners
                    .iter()
                    .filter(|p| p.scopes.contains(id))
                    .map(|p| p.id.as_str())
                    .collect();
                warn(
                    at,
                    format!(
                        "scope `{name}` is granted to {} but no route requires it",
                        holders.join(", ")
                    ),
                );
            } else if at.starts_with("routes[") && !held[id.0] {
                let route = at
                    .strip_suffix(".scope")
                    .and_then(|r| r.strip_prefix("routes["))
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| config.routes.get(i))
                    .map_or("this route", |r| r.name.as_str());
                warn(
                    at,
                    format!("no partner holds scope `{name}`: nobody can call route `{route}` (a typo, or a dead route)"),
                );
            }
        }
        for (i, bundle) in config.trust_bundles.iter().enumerate() {
            let ocsp = bundle
                .ocsp
                .as_ref()
                .is_some_and(|o| o.mode != model::OcspMode::Off);
            if bundle.crls.is_empty() && !ocsp {
                warn(
                    &format!("server.client_auth.trust_bundles[{i}].name"),
                    format!(
                        "trust bundle `{}` has no revocation source (crl or ocsp): a revoked partner certificate is accepted until it expires",
                        bundle.name
                    ),
                );
            }
        }
        // A subject CN commonly repeats a DNS SAN of the same certificate (compared without
        // case, as DNS names are), and may hold a SPIFFE ID; both are stronger kinds, so they win.
        let mut stronger: HashMap<(&str, String), Vec<usize>> = HashMap::new();
        for (k, (_, _, _, claim)) in self.identity_refs.iter().enumerate() {
            let key = match claim {
                model::IdentityMatch::SanDns(dns) => ("san_dns", dns.to_ascii_lowercase()),
                model::IdentityMatch::Spiffe(id) => ("spiffe", id.clone()),
                _ => continue,
            };
            stronger.entry(key).or_default().push(k);
        }
        for (b, b_id, b_at, claim) in &self.identity_refs {
            let model::IdentityMatch::SubjectCn(cn) = claim else {
                continue;
            };
            let keys = [("spiffe", cn.clone()), ("san_dns", cn.to_ascii_lowercase())];
            for key in keys {
                for &k in stronger.get(&key).into_iter().flatten() {
                    let (a, a_id, a_at, _) = &self.identity_refs[k];
                    if a == b {
                        continue;
                    }
                    warn(
                        b_at,
                        format!(
                            "partner `{b_id}`'s subject_cn and partner `{a_id}`'s {} at {} can both match one certificate; the binding order (fingerprint_sha256 > spiffe > san_dns > subject_cn) gives it to `{a_id}`",
                            key.0,
                            self.where_is(a_at)
                        ),
                    );
                }
            }
        }
        out
    }

    // --- onboarding ---

    fn onboarding(
        &mut self,
        onboarding: Option<schema::Onboarding>,
        lifecycle: bool,
    ) -> Option<model::Onboarding> {
        let o = onboarding?;
        if !lifecycle {
            self.problem(
                "onboarding",
                "the enrolment API serves the lifecycle registry: add a `lifecycle:` section",
            );
        }
        let listen = self.socket_addr("onboarding.listen", &o.listen);
        let renewal_grace = self.duration(
            "onboarding.renewal_grace",
            o.renewal_grace.as_deref(),
            model::DEFAULT_RENEWAL_GRACE,
            Zero::Allowed,
        );
        Some(model::Onboarding {
            listen,
            renewal_grace,
            max_body_bytes: self.positive(
                "onboarding.max_body_bytes",
                o.max_body_bytes,
                model::DEFAULT_ONBOARDING_BODY,
            ),
            per_address_per_minute: self.positive(
                "onboarding.per_address_per_minute",
                o.per_address_per_minute,
                model::DEFAULT_PER_ADDRESS_PER_MINUTE,
            ),
            per_token_per_minute: self.positive(
                "onboarding.per_token_per_minute",
                o.per_token_per_minute,
                model::DEFAULT_PER_TOKEN_PER_MINUTE,
            ),
            portal: o.portal.map(|p| self.portal(p)),
        })
    }

    fn portal(&mut self, p: schema::Portal) -> model::Portal {
        let approver_ca = p
            .approver_ca
            .map(|path| self.file_path("onboarding.portal.approver_ca", &path));
        let approvers = p.approvers.unwrap_or_default();
        if approvers.iter().any(|a| a.trim().is_empty()) {
            self.problem(
                "onboarding.portal.approvers",
                "an approver name must not be empty",
            );
        }
        if !approvers.is_empty() && approver_ca.is_none() {
            self.problem(
                "onboarding.portal.approvers",
                "approver names are matched on client certificates: set `approver_ca` too",
            );
        }
        let admin_token = match (p.admin_token_sha256, p.admin_token_file) {
            (Some(_), Some(_)) => {
                self.problem(
                    "onboarding.portal.admin_token_file",
                    "set one of `admin_token_sha256` and `admin_token_file`, not both",
                );
                None
            }
            (Some(hash), None) => {
                let hash = hash.trim().to_ascii_lowercase();
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    // The value is not echoed: it may be the token pasted by mistake.
                    self.problem(
                        "onboarding.portal.admin_token_sha256",
                        "expected 64 hex digits, the SHA-256 of the token (`printf %s TOKEN | sha256sum`)",
                    );
                }
                Some(model::AdminToken::Sha256(hash))
            }
            (None, Some(path)) => Some(model::AdminToken::File(
                self.file_path("onboarding.portal.admin_token_file", &path),
            )),
            (None, None) => None,
        };
        if approver_ca.is_none() && admin_token.is_none() {
            self.problem(
                "onboarding.portal",
                "no approver could sign in: set `approver_ca` (client certificates) or `admin_token_sha256` / `admin_token_file`",
            );
        }
        let gateway_url = p
            .gateway_url
            .unwrap_or_else(|| model::DEFAULT_PORTAL_GATEWAY_URL.to_owned());
        if !gateway_url.starts_with("https://")
            || gateway_url.len() <= "https://".len()
            || gateway_url
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"\"'<>`".contains(&b))
        {
            self.problem(
                "onboarding.portal.gateway_url",
                format!("`{gateway_url}`: expected the gateway's https:// base URL"),
            );
        }
        model::Portal {
            approver_ca,
            approvers,
            admin_token,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
        }
    }

    // --- lifecycle ---

    fn lifecycle(&mut self, lifecycle: Option<schema::Lifecycle>) -> Option<model::Lifecycle> {
        let l = lifecycle?;
        let state_dir = self.file_path("lifecycle.state_dir", &l.state_dir);
        let bundle = l
            .bundle
            .unwrap_or_else(|| super::published::DEFAULT_BUNDLE.to_owned());
        if bundle.trim().is_empty() {
            self.problem("lifecycle.bundle", "a trust bundle name must not be empty");
        }
        let crl_next_update = self.duration(
            "lifecycle.crl_next_update",
            l.crl_next_update.as_deref(),
            super::published::DEFAULT_CRL_NEXT_UPDATE,
            Zero::Rejected,
        );
        let max_validity_days = self.positive(
            "lifecycle.max_validity_days",
            l.max_validity_days,
            super::published::DEFAULT_MAX_VALIDITY_DAYS,
        );
        // The environment wins, so a URL with a password can come from a Secret while the
        // rest of the file stays a ConfigMap.
        let database = match std::env::var(model::DATABASE_ENV) {
            Ok(text) if !text.is_empty() => self.database(model::DATABASE_ENV, &text),
            _ => l
                .database
                .as_deref()
                .and_then(|text| self.database("lifecycle.database", text)),
        };
        let source = l
            .source
            .as_deref()
            .and_then(|url| match parse_endpoint(url) {
                Ok(endpoint) if endpoint.tls => {
                    self.problem(
                        "lifecycle.source",
                        "the control plane's feed is served over http:// only",
                    );
                    None
                }
                Ok(endpoint) => Some(endpoint),
                Err(e) => {
                    self.problem("lifecycle.source", e.to_string());
                    None
                }
            });
        let promotion = l
            .promotion
            .map_or_else(model::Promotion::default, |p| model::Promotion {
                min_calls: self.positive(
                    "lifecycle.promotion.min_calls",
                    p.min_calls,
                    model::DEFAULT_PROMOTE_MIN_CALLS,
                ),
                clean_calls: p.clean_calls.unwrap_or(model::DEFAULT_PROMOTE_CLEAN_CALLS),
            });
        Some(model::Lifecycle {
            state_dir,
            bundle,
            crl_next_update,
            max_validity_days,
            database,
            source,
            promotion,
        })
    }

    /// `sqlite://PATH` (relative to the config file's folder) or `postgres://…`; `None` (and a
    /// problem at its place) when it is neither.
    fn database(&mut self, at: &str, text: &str) -> Option<model::Database> {
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.contains('?') || path.starts_with(':') {
                self.problem(
                    at,
                    "a SQLite registry is a file path (`sqlite://PATH`): no `?options`, no in-memory database",
                );
                return None;
            }
            return Some(model::Database::Sqlite(self.file_path(at, Path::new(path))));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return match url::Url::parse(text) {
                Ok(url) => Some(model::Database::Postgres(url)),
                Err(e) => {
                    // The URL may carry a password: name the problem, not the value.
                    self.problem(at, format!("invalid PostgreSQL URL: {e}"));
                    None
                }
            };
        }
        let scheme = text.split_once(':').map_or(text, |(s, _)| s);
        self.problem(
            at,
            format!("unsupported database `{scheme}`: expected sqlite://PATH or postgres://USER@HOST:PORT/DB"),
        );
        None
    }

    // --- server ---

    fn server(
        &mut self,
        listen: String,
        tls: schema::ServerTls,
        limits: Option<schema::Limits>,
        drain_timeout: Option<String>,
        allow_missing_eku: bool,
    ) -> model::Server {
        let listen = self.socket_addr("server.listen", &listen);
        if tls.certificates.is_empty() {
            self.problem(
                "server.tls.certificates",
                "at least one server certificate is required",
            );
        }
        let certificates = tls
            .certificates
            .into_iter()
            .enumerate()
            .map(|(i, ck)| {
                let at = format!("server.tls.certificates[{i}]");
                model::CertKey {
                    cert: self.file_path(&format!("{at}.cert"), &ck.cert),
                    key: self.file_path(&format!("{at}.key"), &ck.key),
                }
            })
            .collect();
        let min_version = match tls.min_version.as_deref() {
            None | Some("1.2") => model::TlsVersion::Tls12,
            Some("1.3") => model::TlsVersion::Tls13,
            Some(other) => {
                self.problem(
                    "server.tls.min_version",
                    format!("unknown tls version `{other}`: expected \"1.2\" or \"1.3\""),
                );
                model::TlsVersion::Tls12
            }
        };
        model::Server {
            listen,
            certificates,
            min_version,
            session_resumption: tls.session_resumption.unwrap_or(true),
            allow_missing_eku,
            limits: self.limits(limits.unwrap_or_default()),
            drain_timeout: self.duration(
                "server.drain_timeout",
                drain_timeout.as_deref(),
                Duration::from_secs(30),
                Zero::Allowed,
            ),
        }
    }

    fn limits(&mut self, limits: schema::Limits) -> model::Limits {
        let d = model::Limits::default();
        let at = "server.limits";
        model::Limits {
            max_connections: self.positive(
                &format!("{at}.max_connections"),
                limits.max_connections,
                d.max_connections,
            ),
            max_concurrent_handshakes: self.positive_opt(
                &format!("{at}.max_concurrent_handshakes"),
                limits.max_concurrent_handshakes,
            ),
            handshake_timeout: self.duration(
                &format!("{at}.handshake_timeout"),
                limits.handshake_timeout.as_deref(),
                d.handshake_timeout,
                Zero::Rejected,
            ),
            header_read_timeout: self.duration(
                &format!("{at}.header_read_timeout"),
                limits.header_read_timeout.as_deref(),
                d.header_read_timeout,
                Zero::Rejected,
            ),
            idle_timeout: self.duration(
                &format!("{at}.idle_timeout"),
                limits.idle_timeout.as_deref(),
                d.idle_timeout,
                Zero::Rejected,
            ),
            max_header_bytes: self.positive(
                &format!("{at}.max_header_bytes"),
                limits.max_header_bytes,
                d.max_header_bytes,
            ),
            max_headers: self.positive(
                &format!("{at}.max_headers"),
                limits.max_headers,
                d.max_headers,
            ),
            h2_max_concurrent_streams: self.positive(
                &format!("{at}.h2_max_concurrent_streams"),
                limits.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams,
            ),
            max_chain_depth: self.positive(
                &format!("{at}.max_chain_depth"),
                limits.max_chain_depth,
                d.max_chain_depth,
            ),
            max_chain_bytes: self.positive(
                &format!("{at}.max_chain_bytes"),
                limits.max_chain_bytes,
                d.max_chain_bytes,
            ),
            max_body_bytes: self
                .positive_opt(&format!("{at}.max_body_bytes"), limits.max_body_bytes),
        }
    }

    // --- trust bundles ---

    fn trust_bundles(
        &mut self,
        client_auth: schema::ClientAuth,
        lifecycle: bool,
    ) -> (Vec<model::TrustBundle>, HashMap<String, Declared>) {
        let mut ids: HashMap<String, Declared> = HashMap::new();
        // The lifecycle CA is a trust bundle of its own, added when the registry is merged.
        if client_auth.trust_bundles.is_empty() && !lifecycle {
            self.problem(
                "server.client_auth.trust_bundles",
                "at least one trust bundle is required",
            );
        }
        let mut bundles = Vec::with_capacity(client_auth.trust_bundles.len());
        for (i, b) in client_auth.trust_bundles.into_iter().enumerate() {
            let at = format!("server.client_auth.trust_bundles[{i}]");
            let name_at = format!("{at}.name");
            if b.name.trim().is_empty() {
                self.problem(&name_at, "a trust bundle name must not be empty");
            } else {
                self.declare(&mut ids, "trust bundle", &b.name, i, &name_at);
            }
            let ca = self.file_path(&format!("{at}.ca"), &b.ca);
            let crls = b
                .crl
                .into_iter()
                .enumerate()
                .filter_map(|(j, crl)| self.crl_source(&format!("{at}.crl[{j}]"), crl))
                .collect();
            let crl_expired = match b.crl_expired.as_deref() {
                None | Some("reject") => model::CrlExpiredPolicy::Reject,
                Some("allow_with_warning") => model::CrlExpiredPolicy::AllowWithWarning,
                Some(other) => {
                    self.problem(
                        &format!("{at}.crl_expired"),
                        format!("unknown policy `{other}`: expected reject or allow_with_warning"),
                    );
                    model::CrlExpiredPolicy::Reject
                }
            };
            let ocsp = b.ocsp.and_then(|o| self.ocsp(&format!("{at}.ocsp"), o));
            let revocation = b
                .revocation
                .map(|r| self.revocation_scope(&format!("{at}.revocation"), r))
                .unwrap_or_default();
            bundles.push(model::TrustBundle {
                name: b.name,
                ca,
                crls,
                crl_expired,
                ocsp,
                revocation,
            });
        }
        (bundles, ids)
    }

    fn crl_source(&mut self, at: &str, crl: schema::CrlSource) -> Option<model::CrlSource> {
        match (crl.path, crl.url) {
            (Some(path), None) => {
                if crl.refresh.is_some() {
                    self.problem(
                        &format!("{at}.refresh"),
                        "refresh applies only to a url source; a file is re-read on reload",
                    );
                }
                Some(model::CrlSource::File(
                    self.file_path(&format!("{at}.path"), &path),
                ))
            }
            (None, Some(url)) => {
                self.http_url(&format!("{at}.url"), &url, true);
                let refresh = self.duration(
                    &format!("{at}.refresh"),
                    crl.refresh.as_deref(),
                    Duration::from_secs(5 * 60),
                    Zero::Rejected,
                );
                Some(model::CrlSource::Url { url, refresh })
            }
            (Some(_), Some(_)) => {
                self.problem(at, "set either path or url, not both");
                None
            }
            (None, None) => {
                self.problem(at, "set one of path or url");
                None
            }
        }
    }

    fn revocation_scope(
        &mut self,
        at: &str,
        scope: schema::RevocationScope,
    ) -> model::RevocationScope {
        let coverage = match scope.coverage.as_deref() {
            None | Some("full_chain") => model::Coverage::FullChain,
            Some("leaf_only") => model::Coverage::LeafOnly,
            Some(other) => {
                self.problem(
                    &format!("{at}.coverage"),
                    format!("unknown coverage `{other}`: expected full_chain or leaf_only"),
                );
                model::Coverage::FullChain
            }
        };
        let unknown_issuer = match scope.unknown_issuer.as_deref() {
            None | Some("reject") => model::UnknownIssuer::Reject,
            Some("allow") => model::UnknownIssuer::Allow,
            Some(other) => {
                self.problem(
                    &format!("{at}.unknown_issuer"),
                    format!("unknown unknown_issuer `{other}`: expected reject or allow"),
                );
                model::UnknownIssuer::Reject
            }
        };
        model::RevocationScope {
            coverage,
            unknown_issuer,
        }
    }

    /// `off` becomes `None`: consumers then have one way to see that OCSP is not wanted.
    fn ocsp(&mut self, at: &str, ocsp: schema::Ocsp) -> Option<model::Ocsp> {
        let mode = match ocsp.mode.as_str() {
            "off" => model::OcspMode::Off,
            "soft_fail" => model::OcspMode::SoftFail,
            "hard_fail" => model::OcspMode::HardFail,
            other => {
                self.problem(
                    &format!("{at}.mode"),
                    format!("unknown ocsp mode `{other}`: expected off, soft_fail or hard_fail"),
                );
                model::OcspMode::Off
            }
        };
        if let Some(responder) = &ocsp.responder {
            // OCSP responses are signed; the transport is plain HTTP by convention (RFC 6960).
            self.http_url(&format!("{at}.responder"), responder, false);
        }
        let timeout = self.duration(
            &format!("{at}.timeout"),
            ocsp.timeout.as_deref(),
            Duration::from_secs(2),
            Zero::Rejected,
        );
        let max_cache_age = self.duration(
            &format!("{at}.max_cache_age"),
            ocsp.max_cache_age.as_deref(),
            Duration::from_secs(60 * 60),
            Zero::Rejected,
        );
        (mode != model::OcspMode::Off).then_some(model::Ocsp {
            mode,
            responder: ocsp.responder,
            timeout,
            max_cache_age,
        })
    }

    // --- admin ---

    fn admin(&mut self, admin: Option<schema::Admin>) -> model::Admin {
        let default = SocketAddr::from(([127, 0, 0, 1], 9901));
        let Some(admin) = admin else {
            return model::Admin {
                listen: default,
                allow_remote: false,
            };
        };
        let listen = match &admin.listen {
            Some(listen) => self.socket_addr("admin.listen", listen),
            None => default,
        };
        if !listen.ip().to_canonical().is_loopback() && !admin.allow_remote {
            self.problem(
                "admin.listen",
                format!(
                    "admin listener {listen} is not on loopback; set admin.allow_remote: true to expose it"
                ),
            );
        }
        model::Admin {
            listen,
            allow_remote: admin.allow_remote,
        }
    }

    // --- upstreams ---

    fn upstreams(
        &mut self,
        upstreams: BTreeMap<String, schema::Upstream>,
    ) -> (Vec<model::Upstream>, HashMap<String, Declared>) {
        let mut ids = HashMap::new();
        let mut out = Vec::with_capacity(upstreams.len());
        for (i, (name, u)) in upstreams.into_iter().enumerate() {
            let at = format!("upstreams.{name}");
            if name.trim().is_empty() {
                self.key_problem(&at, "an upstream name must not be empty");
            }
            let environment =
                self.environment(&format!("{at}.environment"), u.environment.as_deref());
            self.upstream_env.insert(i, environment);
            ids.insert(
                name.clone(),
                Declared {
                    id: i,
                    path: at.clone(),
                },
            );
            if u.endpoints.is_empty() {
                self.problem(
                    &format!("{at}.endpoints"),
                    "at least one endpoint is required",
                );
            }
            let mut endpoints = Vec::with_capacity(u.endpoints.len());
            for (j, e) in u.endpoints.iter().enumerate() {
                match parse_endpoint(e) {
                    Ok(endpoint) => endpoints.push(endpoint),
                    Err(err) => self.problem(&format!("{at}.endpoints[{j}]"), err.to_string()),
                }
            }
            let protocol = match u.protocol.as_deref() {
                None | Some("http1") => model::UpstreamProtocol::Http1,
                Some("http2") => model::UpstreamProtocol::Http2,
                Some(other) => {
                    self.problem(
                        &format!("{at}.protocol"),
                        format!("unknown protocol `{other}`: expected http1 or http2"),
                    );
                    model::UpstreamProtocol::Http1
                }
            };
            let ca = u.ca.as_ref().map(|ca| {
                let path = self.file_path(&format!("{at}.ca"), ca);
                if !endpoints.is_empty() && !endpoints.iter().any(|e| e.tls) {
                    self.problem(
                        &format!("{at}.ca"),
                        "ca applies only to https:// endpoints, and this upstream has none",
                    );
                }
                path
            });
            out.push(model::Upstream {
                name,
                endpoints,
                connect_timeout: self.duration(
                    &format!("{at}.connect_timeout"),
                    u.connect_timeout.as_deref(),
                    Duration::from_secs(2),
                    Zero::Rejected,
                ),
                request_timeout: self.duration(
                    &format!("{at}.request_timeout"),
                    u.request_timeout.as_deref(),
                    Duration::from_secs(30),
                    Zero::Rejected,
                ),
                protocol,
                ca,
                eject_after_failures: u.eject_after_failures.unwrap_or(3),
                eject_for: self.duration(
                    &format!("{at}.eject_for"),
                    u.eject_for.as_deref(),
                    Duration::from_secs(10),
                    Zero::Rejected,
                ),
            });
        }
        (out, ids)
    }

    // --- partners ---

    fn partners(
        &mut self,
        partners: Vec<schema::Partner>,
        bundles: &HashMap<String, Declared>,
    ) -> Vec<model::Partner> {
        let mut ids: HashMap<String, Declared> = HashMap::new();
        // Identity → (partner index, partner id, path of the claim). A certificate must map to at
        // most one partner, or the gateway would have to guess whose scopes apply.
        let mut claims: HashMap<model::IdentityMatch, (usize, String, String)> = HashMap::new();
        let mut out = Vec::with_capacity(partners.len());
        for (i, p) in partners.into_iter().enumerate() {
            let at = format!("partners[{i}]");
            let id_at = format!("{at}.id");
            if p.id.trim().is_empty() {
                self.problem(&id_at, "a partner id must not be empty");
            } else {
                self.declare(&mut ids, "partner id", &p.id, i, &id_at);
            }
            if p.owner.trim().is_empty() {
                self.problem(
                    &format!("{at}.owner"),
                    "owner must name a team or an email address",
                );
            }
            let trust_bundle = self.resolve(
                bundles,
                "trust bundle",
                &p.trust_bundle,
                &format!("{at}.trust_bundle"),
            );
            if p.identities.is_empty() {
                self.problem(
                    &format!("{at}.identities"),
                    format!("at least one identity is required: {IDENTITY_KEYS}"),
                );
            }
            let mut identities: Vec<model::IdentityMatch> = Vec::new();
            for (j, item) in p.identities.into_iter().enumerate() {
                let item_at = format!("{at}.identities[{j}]");
                let Some((key_at, written, identity)) = self.identity(&item_at, item) else {
                    continue;
                };
                self.identity_refs
                    .push((i, p.id.clone(), key_at.clone(), identity.clone()));
                match claims.entry(identity.clone()) {
                    Entry::Occupied(first) => {
                        let (owner, owner_id, first_at) = first.get();
                        if *owner != i {
                            let message = format!(
                                "{written} is claimed by partner `{}` and by partner `{owner_id}` at {}; a certificate must map to one partner",
                                p.id,
                                self.where_is(first_at),
                            );
                            self.problem(&key_at, message);
                        }
                    }
                    Entry::Vacant(slot) => {
                        slot.insert((i, p.id.clone(), key_at));
                    }
                }
                if !identities.contains(&identity) {
                    identities.push(identity);
                }
            }
            let mut scopes: Vec<ScopeId> = p
                .scopes
                .iter()
                .enumerate()
                .map(|(k, s)| self.scope(&format!("{at}.scopes[{k}]"), s))
                .collect();
            scopes.sort();
            scopes.dedup();
            out.push(model::Partner {
                id: p.id,
                owner: p.owner.trim().to_owned(),
                trust_bundle: BundleId(trust_bundle),
                identities,
                scopes,
            });
        }
        out
    }

    /// Returns the path of the key that was set, a description for messages, and the match.
    fn identity(
        &mut self,
        at: &str,
        item: schema::Identity,
    ) -> Option<(String, String, model::IdentityMatch)> {
        let set = [
            item.spiffe.is_some(),
            item.subject_cn.is_some(),
            item.san_dns.is_some(),
            item.fingerprint_sha256.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        if set != 1 {
            let message = if set == 0 {
                format!("an identity needs one of {IDENTITY_KEYS}")
            } else {
                format!("an identity sets exactly one of {IDENTITY_KEYS}; use one list item each")
            };
            self.problem(at, message);
            return None;
        }
        if let Some(spiffe) = item.spiffe {
            let key_at = format!("{at}.spiffe");
            let valid = spiffe
                .strip_prefix("spiffe://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !valid {
                self.problem(&key_at, "expected a spiffe id: spiffe://trust-domain/path");
                return None;
            }
            let written = format!("spiffe id `{spiffe}`");
            return Some((key_at, written, model::IdentityMatch::Spiffe(spiffe)));
        }
        if let Some(cn) = item.subject_cn {
            let key_at = format!("{at}.subject_cn");
            if cn.trim().is_empty() {
                self.problem(&key_at, "a subject common name must not be empty");
                return None;
            }
            let written = format!("subject cn `{cn}`");
            return Some((key_at, written, model::IdentityMatch::SubjectCn(cn)));
        }
        if let Some(dns) = item.san_dns {
            let key_at = format!("{at}.san_dns");
            let dns = dns.to_ascii_lowercase();
            if !is_dns_name(&dns, true) {
                self.problem(&key_at, format!("invalid dns name `{dns}`"));
                return None;
            }
            let written = format!("dns name `{dns}`");
            return Some((key_at, written, model::IdentityMatch::SanDns(dns)));
        }
        if let Some(fp) = item.fingerprint_sha256 {
            let key_at = format!("{at}.fingerprint_sha256");
            return match parse_fingerprint(&fp) {
                Ok(bytes) => {
                    let written = format!("fingerprint `{fp}`");
                    Some((key_at, written, model::IdentityMatch::Fingerprint(bytes)))
                }
                Err(err) => {
                    self.problem(&key_at, err.to_string());
                    None
                }
            };
        }
        None
    }

    // --- routes ---

    fn routes(
        &mut self,
        routes: Vec<schema::Route>,
        upstreams: &HashMap<String, Declared>,
        max_body_bytes: Option<u64>,
    ) -> Vec<model::Route> {
        let mut names: HashMap<String, Declared> = HashMap::new();
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            let name_at = format!("{at}.name");
            if r.name.trim().is_empty() {
                self.problem(&name_at, "a route name must not be empty");
            } else {
                self.declare(&mut names, "route name", &r.name, i, &name_at);
            }
            let host = r.host.map(|host| {
                let host = host.to_ascii_lowercase();
                if !is_dns_name(&host, false) {
                    self.problem(
                        &format!("{at}.host"),
                        format!("invalid host `{host}`: expected a dns name without port"),
                    );
                }
                host
            });
            let path = match (r.path, r.path_prefix) {
                (Some(path), None) => {
                    self.route_path(&format!("{at}.path"), &path);
                    model::PathMatch::Exact(path)
                }
                (None, Some(prefix)) => {
                    self.route_path(&format!("{at}.path_prefix"), &prefix);
                    model::PathMatch::Prefix(prefix)
                }
                (Some(path), Some(_)) => {
                    self.problem(&at, "set either path or path_prefix, not both");
                    model::PathMatch::Exact(path)
                }
                (None, None) => {
                    self.problem(&at, "set one of path (exact) or path_prefix");
                    model::PathMatch::Prefix("/".to_owned())
                }
            };
            let methods = r.methods.map(|methods| self.methods(&at, &methods));
            let environment =
                self.environment(&format!("{at}.environment"), r.environment.as_deref());
            if r.scope.ends_with(model::SANDBOX_SUFFIX) {
                self.problem(
                    &format!("{at}.scope"),
                    format!(
                        "a scope name must not end in `{}`: set `environment: sandbox` instead",
                        model::SANDBOX_SUFFIX
                    ),
                );
            }
            let scope = match environment {
                model::Environment::Production => self.scope(&format!("{at}.scope"), &r.scope),
                model::Environment::Sandbox => {
                    self.scope(&format!("{at}.scope"), &model::sandbox_scope(&r.scope))
                }
            };
            let upstream = self.resolve(
                upstreams,
                "upstream",
                &r.upstream,
                &format!("{at}.upstream"),
            );
            let upstream_env = self
                .upstream_env
                .get(&upstream)
                .copied()
                .unwrap_or_default();
            if upstreams.contains_key(&r.upstream) && upstream_env != environment {
                self.problem(
                    &format!("{at}.environment"),
                    format!(
                        "a {} route cannot forward to upstream `{}`, which is {}",
                        environment.as_str(),
                        r.upstream,
                        upstream_env.as_str()
                    ),
                );
            }
            let own_max_body = self.positive_opt(&format!("{at}.max_body_bytes"), r.max_body_bytes);
            out.push(model::Route {
                name: r.name,
                host,
                path,
                methods,
                scope,
                upstream: UpstreamId(upstream),
                max_body_bytes: own_max_body.or(max_body_bytes),
            });
        }
        out
    }

    fn environment(&mut self, at: &str, value: Option<&str>) -> model::Environment {
        match value {
            None | Some("production") => model::Environment::Production,
            Some("sandbox") => model::Environment::Sandbox,
            Some(other) => {
                self.problem(
                    at,
                    format!("unknown environment `{other}`: use sandbox or production"),
                );
                model::Environment::Production
            }
        }
    }

    fn route_path(&mut self, at: &str, path: &str) {
        if !path.starts_with('/') {
            self.problem(at, format!("path `{path}` must start with /"));
        } else if path.contains(['?', '#']) || path.contains(char::is_whitespace) {
            self.problem(
                at,
                format!("path `{path}` must not contain a query, fragment or whitespace"),
            );
        }
    }

    fn methods(&mut self, at: &str, methods: &[String]) -> Vec<http::Method> {
        if methods.is_empty() {
            self.problem(
                &format!("{at}.methods"),
                "an empty method list allows nothing; leave methods out to allow every method but CONNECT",
            );
        }
        let mut out: Vec<http::Method> = Vec::with_capacity(methods.len());
        for (k, m) in methods.iter().enumerate() {
            let upper_token = !m.is_empty()
                && m.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            match http::Method::from_bytes(m.as_bytes()) {
                // Allowing it would hand the upstream a tunnel request for an authority no policy
                // checked, and certgate terminates every request itself: it opens no tunnels.
                Ok(method) if method == http::Method::CONNECT => self.problem(
                    &format!("{at}.methods[{k}]"),
                    "CONNECT is not supported: certgate is a reverse proxy and opens no tunnels",
                ),
                Ok(method) if upper_token => {
                    if !out.contains(&method) {
                        out.push(method);
                    }
                }
                _ => self.problem(
                    &format!("{at}.methods[{k}]"),
                    format!("invalid method `{m}`: expected an upper-case token like GET or POST"),
                ),
            }
        }
        out
    }

    // --- forward ---

    fn forward(&mut self, forward: Option<schema::Forward>) -> model::Forward {
        let forward = forward.unwrap_or_default();
        let client_cert_header = match forward.client_cert_header.as_deref() {
            None | Some("rfc9440") => model::ClientCertHeader::Rfc9440,
            Some("xfcc") => model::ClientCertHeader::Xfcc,
            Some("none") => model::ClientCertHeader::None,
            Some(other) => {
                self.problem(
                    "forward.client_cert_header",
                    format!("unknown header style `{other}`: expected rfc9440, xfcc or none"),
                );
                model::ClientCertHeader::Rfc9440
            }
        };
        let default = http::HeaderName::from_static("x-partner-id");
        let partner_header = match forward.partner_header.as_deref() {
            None => default,
            Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => header,
                Err(_) => {
                    self.problem(
                        "forward.partner_header",
                        format!("invalid header name `{name}`"),
                    );
                    default
                }
            },
        };
        for (i, pattern) in forward.strip_headers.iter().enumerate() {
            if let Err(why) = model::StripHeaders::check(pattern) {
                self.problem(
                    &format!("forward.strip_headers[{i}]"),
                    format!("`{pattern}`: {why}"),
                );
            }
        }
        let strip_headers =
            model::StripHeaders::with_defaults(forward.strip_headers.iter().map(String::as_str));
        model::Forward {
            client_cert_header,
            partner_header,
            strip_headers,
        }
    }

    // --- shared helpers ---

    /// Records `name` as declared at `at`; a second declaration is a problem that points at the
    /// first.
    fn declare(
        &mut self,
        names: &mut HashMap<String, Declared>,
        what: &str,
        name: &str,
        id: usize,
        at: &str,
    ) {
        match names.entry(name.to_owned()) {
            Entry::Occupied(first) => {
                let message = format!(
                    "duplicate {what} `{name}`; first declared at {}",
                    self.where_is(&first.get().path)
                );
                self.problem(at, message);
            }
            Entry::Vacant(slot) => {
                slot.insert(Declared {
                    id,
                    path: at.to_owned(),
                });
            }
        }
    }

    /// Looks `name` up; an unknown name is a problem that lists the known ones, since the usual
    /// cause is a typo.
    fn resolve(
        &mut self,
        names: &HashMap<String, Declared>,
        what: &str,
        name: &str,
        at: &str,
    ) -> usize {
        if let Some(declared) = names.get(name) {
            return declared.id;
        }
        let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "none are declared".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        };
        self.problem(at, format!("unknown {what} `{name}` ({known})"));
        0
    }

    fn scope(&mut self, at: &str, name: &str) -> ScopeId {
        if name.trim().is_empty() {
            self.problem(at, "a scope must not be empty");
        }
        let id = match self.scope_ids.get(name) {
            Some(id) => *id,
            None => {
                let id = ScopeId(self.scopes.len());
                self.scopes.push(name.to_owned());
                self.scope_ids.insert(name.to_owned(), id);
                id
            }
        };
        self.scope_refs.push((at.to_owned(), id));
        id
    }

    fn socket_addr(&mut self, at: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.problem(
                at,
                format!("invalid listen address `{value}`: expected ip:port like 0.0.0.0:8443 or [::]:8443"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(
        &mut self,
        at: &str,
        value: Option<&str>,
        default: Duration,
        zero: Zero,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match parse_duration(value) {
            Ok(d) if d.is_zero() && zero == Zero::Rejected => {
                self.problem(at, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(err) => {
                self.problem(at, err.to_string());
                default
            }
        }
    }

    fn positive<T: PartialEq + Default + Copy>(
        &mut self,
        at: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        match value {
            None => default,
            Some(v) if v == T::default() => {
                self.problem(at, "must be greater than zero");
                default
            }
            Some(v) => v,
        }
    }

    /// An optional limit with no default: absent stays `None`, zero is a problem.
    fn positive_opt<T: PartialEq + Default>(&mut self, at: &str, value: Option<T>) -> Option<T> {
        match value {
            Some(v) if v == T::default() => {
                self.problem(at, "must be greater than zero");
                None
            }
            other => other,
        }
    }

    /// Resolves a path from the file against the config file's folder. Existence is not checked
    /// here: the TLS and revocation loaders read these files and report them as [`Place::File`].
    fn file_path(&mut self, at: &str, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.problem(at, "a file path must not be empty");
        }
        self.base.join(path)
    }

    fn http_url(&mut self, at: &str, url: &str, https_allowed: bool) {
        let (scheme_ok, expected) = if https_allowed {
            (
                url.starts_with("http://") || url.starts_with("https://"),
                "an http:// or https:// url",
            )
        } else {
            (url.starts_with("http://"), "an http:// url")
        };
        let parsed = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.authority().is_some_and(|a| !a.host().is_empty()));
        if !scheme_ok || parsed.is_none() {
            self.problem(at, format!("invalid url `{url}`: expected {expected}"));
        }
    }
}

// === free parsers ===

/// Parses `250ms`, `2s`, `5m`, `1h`: one whole number, one unit, no spaces. Deliberately small —
/// fractions and compound forms (`1h30m`) would be more to get wrong than they are worth here.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let format = || DurationError::Format(value.to_owned());
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(format)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() {
        return Err(format());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(value.to_owned()))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format()),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(value.to_owned()))
}

/// Parses `http://host:port` / `https://host:port`; the port defaults by scheme. A lone trailing
/// `/` is the empty path and is accepted, anything longer is not: routes decide paths, not
/// endpoints.
pub(crate) fn parse_endpoint(value: &str) -> Result<model::Endpoint, EndpointError> {
    let (tls, rest) = if let Some(rest) = value.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(EndpointError::Scheme);
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(EndpointError::UserInfo);
    }
    if rest.contains(['/', '?', '#']) {
        return Err(EndpointError::Path);
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| EndpointError::Host(rest.to_owned()))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(EndpointError::Host(rest.to_owned()));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| EndpointError::Host(rest.to_owned()))?,
            ),
        };
        (&rest[..addr.len() + 2], port)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let bracketed = host.starts_with('[');
    if !bracketed && (!is_dns_name(host, false) && host.parse::<IpAddr>().is_err()) {
        return Err(EndpointError::Host(host.to_owned()));
    }
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        // All digits: `u16::from_str` would also take a leading `+`.
        Some(p) => Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| EndpointError::Port(p.to_owned()))?,
    };
    Ok(model::Endpoint {
        tls,
        authority: format!("{host}:{port}"),
    })
}

/// Parses 64 hex digits, with or without colons between them, into the raw SHA-256.
pub(crate) fn parse_fingerprint(value: &str) -> Result<[u8; 32], FingerprintError> {
    let digits: String = value.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(FingerprintError::NotHex);
    }
    if digits.len() != 64 {
        return Err(FingerprintError::Length(digits.len()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).map_err(|_| FingerprintError::NotHex)?;
    Ok(out)
}

/// Letters, digits, `-`, `_` and dots between non-empty labels; with `wildcard`, a leading `*.`
/// too (a certificate's SAN may be a wildcard; a route's host is matched exactly). Deliberately
/// loose (no length or hyphen-position rules): it exists to catch ports, schemes,
/// paths and spaces pasted into a host field.
fn is_dns_name(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_number_and_one_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "", "5", "s", "1.5s", "-1s", "2 s", "2sec", "1h30m", " 2s", "2S",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Format(_))),
                "{bad:?} should be refused"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551615h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn a_bad_duration_message_lists_the_accepted_forms() {
        let Err(err) = parse_duration("soon") else {
            panic!("`soon` should be refused");
        };
        let message = err.to_string();
        assert!(message.contains("`soon`"), "{message}");
        assert!(message.contains("250ms, 2s, 5m, 1h"), "{message}");
    }

    #[test]
    fn endpoints_are_scheme_host_and_port() {
        let ep = |tls, authority: &str| {
            Ok(model::Endpoint {
                tls,
                authority: authority.to_owned(),
            })
        };
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9000"),
            ep(false, "127.0.0.1:9000")
        );
        assert_eq!(
            parse_endpoint("https://orders.internal"),
            ep(true, "orders.internal:443")
        );
        assert_eq!(
            parse_endpoint("http://orders.internal/"),
            ep(false, "orders.internal:80")
        );
        assert_eq!(parse_endpoint("http://[::1]:8080"), ep(false, "[::1]:8080"));
        assert_eq!(parse_endpoint("https://[::1]"), ep(true, "[::1]:443"));

        assert_eq!(parse_endpoint("127.0.0.1:9000"), Err(EndpointError::Scheme));
        assert_eq!(parse_endpoint("ftp://a:1"), Err(EndpointError::Scheme));
        assert_eq!(
            parse_endpoint("http://u:p@a:1"),
            Err(EndpointError::UserInfo)
        );
        assert_eq!(parse_endpoint("http://a:1/v1"), Err(EndpointError::Path));
        assert_eq!(parse_endpoint("http://a:1?x"), Err(EndpointError::Path));
        assert!(matches!(
            parse_endpoint("http://a:0"),
            Err(EndpointError::Port(_))
        ));
        assert!(matches!(
            parse_endpoint("http://a:70000"),
            Err(EndpointError::Port(_))
        ));
        assert!(matches!(
            parse_endpoint("http://a:"),
            Err(EndpointError::Port(_))
        ));
        assert!(matches!(
            parse_endpoint("http://:80"),
            Err(EndpointError::Host(_))
        ));
        assert!(matches!(
            parse_endpoint("http://::1:80"),
            Err(EndpointError::Host(_))
        ));
        assert!(matches!(
            parse_endpoint("http://a:+80"),
            Err(EndpointError::Port(_))
        ));
        assert!(matches!(
            parse_endpoint("http://[zz]:80"),
            Err(EndpointError::Host(_))
        ));
    }

    #[test]
    fn fingerprints_are_64_hex_digits_with_optional_colons() {
        let plain = "3f".repeat(32);
        let colons = vec!["3F"; 32].join(":");
        assert_eq!(parse_fingerprint(&plain), Ok([0x3f; 32]));
        assert_eq!(parse_fingerprint(&colons), Ok([0x3f; 32]));
        assert_eq!(parse_fingerprint("3f9a"), Err(FingerprintError::Length(4)));
        assert_eq!(
            parse_fingerprint(&"zz".repeat(32)),
            Err(FingerprintError::NotHex)
        );
    }

    #[test]
    fn dns_names_refuse_ports_schemes_and_spaces() {
        assert!(is_dns_name("api.example.com", false));
        assert!(is_dns_name("*.example.com", true));
        assert!(!is_dns_name("*.example.com", false));
        for bad in [
            "",
            "api.example.com:443",
            "https://x",
            "a b",
            "a..b",
            ".a",
            "*",
        ] {
            assert!(!is_dns_name(bad, true), "{bad:?}");
        }
    }
}
