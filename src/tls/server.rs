//! The rustls `ServerConfig` for the partner listener: certificates chosen by SNI, client
//! certificates required and checked by [`ClientVerifier`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::pem::{self, PemError};
use super::verifier::ClientVerifier;
use crate::config::model::{self, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: the private key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The key parsed as PEM but rustls cannot sign with it (an unsupported algorithm or curve).
    #[error("{}: the private key cannot be used for TLS", key.display())]
    UnusableKey {
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: cannot read the certificate's names: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("no server certificate configured")]
    NoCertificate,
    #[error("cannot build the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

impl ServerTlsError {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Pem(e) => Some(e.path()),
            Self::KeyMismatch { key, .. } | Self::UnusableKey { key, .. } => Some(key),
            Self::BadCertificate { path, .. } => Some(path),
            Self::NoCertificate | Self::Rustls(_) => None,
        }
    }
}

/// ALPN protocols offered to partners, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The name under which [`ServedCertificate`] reports the certificate served to a client that
/// sends no SNI or one no certificate names. Not a DNS name, so it never collides with one.
pub const DEFAULT_SNI: &str = "_default";

/// The partner listener's TLS configuration and what it serves, for the expiry metric.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// One entry per SNI name the resolver answers for (exact and `*.` wildcard names) plus
    /// [`DEFAULT_SNI`], each with the certificate that actually wins for that name.
    pub served: Vec<ServedCertificate>,
}

/// The certificate served under one SNI name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCertificate {
    pub sni: String,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Builds the partner listener's TLS configuration.
///
/// # Errors
/// Every certificate/key problem, each naming its file.
pub fn build(
    server: &model::Server,
    verifier: Arc<ClientVerifier>,
) -> Result<ServerTls, Vec<ServerTlsError>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (resolver, served) = SniResolver::load(&server.certificates, &provider)?;
    let versions: &[&rustls::SupportedProtocolVersion] = match server.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![e.into()])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if !server.session_resumption {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(ServerTls {
        config: Arc::new(config),
        served,
    })
}

/// A TLS configuration serving the gateway's certificates (same SNI choice) that asks for no
/// client certificate: for the enrolment API, whose callers have none yet. HTTP/1.1 only.
///
/// # Errors
/// Every certificate/key problem, each naming its file.
pub fn build_without_client_auth(
    server: &model::Server,
) -> Result<Arc<ServerConfig>, Vec<ServerTlsError>> {
    build_for_onboarding(server, None)
}

/// As [`build_without_client_auth`], and asks for a client certificate that `verifier` checks
/// when one is presented: on the onboarding listener partners renew with the certificate they
/// hold, approvers sign in to the portal with theirs, and enrolling partners present none.
///
/// # Errors
/// Every certificate/key problem, each naming its file.
pub fn build_for_onboarding(
    server: &model::Server,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, Vec<ServerTlsError>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (resolver, _) = SniResolver::load(&server.certificates, &provider)?;
    let versions: &[&rustls::SupportedProtocolVersion] = match server.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![e.into()])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Picks the server certificate by SNI: exact name, then a `*.` wildcard one label up, then the
/// first configured certificate.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The resolver, and which certificate it serves under each name (first configured wins).
    fn load(
        pairs: &[model::CertKey],
        provider: &CryptoProvider,
    ) -> Result<(Self, Vec<ServedCertificate>), Vec<ServerTlsError>> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for pair in pairs {
            match load_pair(pair, provider) {
                Ok(k) => keys.push(k),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut served = Vec::new();
        for (names, not_after, key) in keys {
            let key = Arc::new(key);
            if default.is_none() {
                default = Some(key.clone());
                served.push(ServedCertificate {
                    sni: DEFAULT_SNI.to_owned(),
                    not_after,
                });
            }
            for name in names {
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()),
                    None => exact.entry(name.clone()),
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = slot {
                    slot.insert(key.clone());
                    served.push(ServedCertificate {
                        sni: name,
                        not_after,
                    });
                }
            }
        }
        let default = default.ok_or_else(|| vec![ServerTlsError::NoCertificate])?;
        let resolver = Self {
            exact,
            wildcard,
            default,
        };
        Ok((resolver, served))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands SNI over lower-cased and validated as a DNS name.
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        if let Some(k) = self.exact.get(name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

fn load_pair(
    pair: &model::CertKey,
    provider: &CryptoProvider,
) -> Result<(Vec<String>, i64, CertifiedKey), ServerTlsError> {
    let certs = pem::load_certs(&pair.cert)?;
    let key = pem::load_key(&pair.key)?;
    let (names, not_after) =
        names_and_expiry(&certs[0]).map_err(|reason| ServerTlsError::BadCertificate {
            path: pair.cert.clone(),
            reason,
        })?;
    let certified =
        CertifiedKey::from_der(certs, key, provider).map_err(|source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                ServerTlsError::KeyMismatch {
                    cert: pair.cert.clone(),
                    key: pair.key.clone(),
                }
            }
            source => ServerTlsError::UnusableKey {
                key: pair.key.clone(),
                source,
            },
        })?;
    Ok((names, not_after, certified))
}

/// The DNS names a server certificate answers for, lower-cased (its DNS SANs), and its notAfter
/// in Unix seconds.
fn names_and_expiry(
    cert: &rustls_pki_types::CertificateDer<'_>,
) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let not_after = parsed.validity().not_after.timestamp();
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?;
    let names = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((names, not_after))
}

/// How long before its end `certgate check` reports a server certificate as expiring: about the
/// time an operator needs to get a new one issued and rolled out.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Warnings for server certificates that have expired or expire within `within` of `now`, each
/// naming its file. Files that do not read are the loader's problem and are skipped here.
pub fn expiry_warnings(
    certificates: &[model::CertKey],
    now: rustls_pki_types::UnixTime,
    within: std::time::Duration,
) -> Vec<crate::config::Problem> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let within = i64::try_from(within.as_secs()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for pair in certificates {
        let Ok(certs) = pem::load_certs(&pair.cert) else {
            continue;
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&certs[0]) else {
            continue;
        };
        let not_after = parsed.validity().not_after.timestamp();
        let date = time::OffsetDateTime::from_unix_timestamp(not_after)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| not_after.to_string());
        let message = if not_after <= now {
            format!("the server certificate expired at {date}: clients refuse the gateway")
        } else if not_after - now <= within {
            let days = (not_after - now) / 86_400;
            format!("the server certificate expires at {date}, in {days} day(s)")
        } else {
            continue;
        };
        out.push(crate::config::Problem::in_file(&pair.cert, message));
    }
    out
}
