//! Who may act as an approver: a client certificate from the configured approver CA (optionally
//! limited to named approvers), or a session opened with the admin token.
//!
//! A partner certificate is never an approver's: the approver CA must not be the CA that issues
//! partners (checked at start), and the TLS layer verifies client certificates against the
//! approver CA only, so a partner's certificate fails the handshake before any request is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::model;
use crate::lifecycle::token;

/// How long an admin-token session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; past it, expired ones are dropped and then new sign-ins refused.
const MAX_SESSIONS: usize = 1000;
/// Longest approver name accepted at sign-in.
pub(super) const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApproverError {
    #[error("{}: cannot read the approver CA", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no usable CA certificate: {reason}", path.display())]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{}: the approver CA is the CA that issues partner certificates; a partner certificate must never approve", path.display())]
    PartnerCa { path: std::path::PathBuf },
    #[error("{}: cannot read the admin token", path.display())]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the admin token file is empty", path.display())]
    EmptyToken { path: std::path::PathBuf },
}

/// An authenticated approver, as recorded in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Approver {
    /// The actor name: the certificate's name, or the name given at sign-in.
    pub(crate) name: String,
    pub(crate) via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Certificate,
    AdminToken,
}

/// The approver side of the portal, built once at start.
pub(crate) struct Approvers {
    /// Accepted certificate names; empty accepts any certificate the verifier accepted.
    names: Vec<String>,
    admin_token_sha256: Option<String>,
    /// SHA-256 of a session cookie → (approver name, expiry).
    sessions: DashMap<String, (String, Instant)>,
}

// === impl Via ===

impl Via {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::AdminToken => "admin-token",
        }
    }
}

// === impl Approvers ===

impl Approvers {
    /// Loads the approver CA (into the listener's optional client verifier) and the admin
    /// token's hash. `partner_ca` is the CA that issues partner certificates, PEM.
    ///
    /// # Errors
    /// A file does not load, or the approver CA is the partner CA.
    pub(crate) fn load(
        settings: &model::Portal,
        partner_ca: &str,
    ) -> Result<(Self, Option<Arc<dyn ClientCertVerifier>>), ApproverError> {
        let verifier = match &settings.approver_ca {
            None => None,
            Some(path) => Some(verifier(path, partner_ca)?),
        };
        let admin_token_sha256 = match &settings.admin_token {
            None => None,
            Some(model::AdminToken::Sha256(hash)) => Some(hash.clone()),
            Some(model::AdminToken::File(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ApproverError::Token {
                        path: path.clone(),
                        source,
                    })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(ApproverError::EmptyToken { path: path.clone() });
                }
                Some(token::sha256_hex(text))
            }
        };
        let approvers = Self {
            names: settings.approvers.clone(),
            admin_token_sha256,
            sessions: DashMap::new(),
        };
        Ok((approvers, verifier))
    }

    pub(crate) fn has_admin_token(&self) -> bool {
        self.admin_token_sha256.is_some()
    }

    /// The approver a verified client certificate names, if it is one of the accepted names.
    /// Called once per connection.
    pub(crate) fn of_certificate(&self, der: &[u8]) -> Option<Approver> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .map(str::to_owned)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => names.push((*u).to_owned()),
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        let name = if self.names.is_empty() {
            names.into_iter().next()?
        } else {
            names.into_iter().find(|n| self.names.contains(n))?
        };
        Some(Approver {
            name,
            via: Via::Certificate,
        })
    }

    /// Opens a session for `name` when `presented` is the admin token; returns the cookie value.
    pub(crate) fn sign_in(&self, presented: &str, name: &str, now: Instant) -> Option<String> {
        let expected = self.admin_token_sha256.as_deref()?;
        if !token::same(&token::sha256_hex(presented), expected) {
            return None;
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.retain(|_, (_, until)| *until > now);
            if self.sessions.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let cookie = token::generate().ok()?;
        self.sessions
            .insert(cookie.sha256, (name.to_owned(), now + SESSION_LIFETIME));
        Some(cookie.text)
    }

    /// The approver of a session cookie that is still open.
    pub(crate) fn of_session(&self, cookie: &str, now: Instant) -> Option<Approver> {
        let key = token::sha256_hex(cookie);
        let entry = self.sessions.get(&key)?;
        let (name, until) = entry.value();
        (*until > now).then(|| Approver {
            name: name.clone(),
            via: Via::AdminToken,
        })
    }

    pub(crate) fn sign_out(&self, cookie: &str) {
        self.sessions.remove(&token::sha256_hex(cookie));
    }
}

/// An optional client-certificate verifier for the approver CA in `path`.
fn verifier(
    path: &std::path::Path,
    partner_ca: &str,
) -> Result<Arc<dyn ClientCertVerifier>, ApproverError> {
    let pem = std::fs::read(path).map_err(|source| ApproverError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ApproverError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let partner: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(partner_ca.as_bytes())
            .filter_map(Result::ok)
            .collect();
    if certs.iter().any(|c| partner.contains(c)) {
        return Err(ApproverError::PartnerCa {
            path: path.to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ApproverError::Ca {
            path: path.to_owned(),
            reason: "no certificate in the file".to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| ApproverError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn approvers(names: &[&str], token: Option<&str>) -> Approvers {
        Approvers {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            admin_token_sha256: token.map(token::sha256_hex),
            sessions: DashMap::new(),
        }
    }

    fn certificate(cn: &str, uri: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_is_an_approver_only_under_an_accepted_name() {
        let der = certificate("carol", "spiffe://corp.example/approver/carol");
        let any = approvers(&[], None).of_certificate(&der).unwrap();
        assert_eq!(any.name, "carol");
        assert_eq!(any.via, Via::Certificate);
        let by_uri = approvers(&["spiffe://corp.example/approver/carol"], None)
            .of_certificate(&der)
            .unwrap();
        assert_eq!(by_uri.name, "spiffe://corp.example/approver/carol");
        assert_eq!(approvers(&["dave"], None).of_certificate(&der), None);
        assert_eq!(
            approvers(&[], None).of_certificate(b"not a certificate"),
            None
        );
    }

    #[test]
    fn a_session_needs_the_admin_token_and_ends_at_sign_out_or_expiry() {
        let a = approvers(&[], Some("the-token"));
        let now = Instant::now();
        assert_eq!(a.sign_in("wrong", "dave", now), None);
        assert_eq!(approvers(&[], None).sign_in("", "dave", now), None);
        let cookie = a.sign_in("the-token", "dave", now).unwrap();
        let who = a.of_session(&cookie, now).unwrap();
        assert_eq!((who.name.as_str(), who.via), ("dave", Via::AdminToken));
        assert_eq!(a.of_session("forged", now), None);
        assert_eq!(a.of_session(&cookie, now + SESSION_LIFETIME), None);
        a.sign_out(&cookie);
        assert_eq!(a.of_session(&cookie, now), None);
    }
}
