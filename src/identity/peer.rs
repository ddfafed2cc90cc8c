//! [`PeerIdentity`]: everything certgate needs from a partner's leaf certificate, parsed once.

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate has a malformed extension: {0}")]
    Extension(String),
}

/// The verified identity of a connection's peer. Built once, right after the handshake, and
/// shared by every request on that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// RFC 4514 form, escaped, e.g. `CN=acme-billing,O=Acme` ([`super::rfc4514`]).
    pub subject: String,
    pub subject_cn: Option<String>,
    /// RFC 4514 form, like `subject`.
    pub issuer: String,
    /// Upper-case hex, colon-free, as printed by `openssl x509 -serial`.
    pub serial: String,
    pub fingerprint_sha256: [u8; 32],
    /// Lower-cased.
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    /// The first `spiffe://` URI SAN.
    pub spiffe: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Extended key usages by name (`clientAuth`, `serverAuth`, …) or dotted OID.
    pub eku: Vec<String>,
}

impl PeerIdentity {
    /// Parses a leaf certificate.
    ///
    /// # Errors
    /// The DER does not parse, or an extension certgate reads is malformed.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut san_dns = Vec::new();
        let mut san_uri = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Extension(e.to_string()))?
        {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => san_dns.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => san_uri.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let spiffe = san_uri
            .iter()
            .find(|u| {
                u.get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
            })
            .cloned();
        let eku = match cert
            .extended_key_usage()
            .map_err(|e| IdentityError::Extension(e.to_string()))?
        {
            Some(ext) => eku_names(ext.value),
            None => Vec::new(),
        };
        Ok(Self {
            subject: super::rfc4514(cert.subject()),
            subject_cn,
            issuer: super::rfc4514(cert.issuer()),
            serial: hex::encode_upper(cert.raw_serial()),
            fingerprint_sha256: Sha256::digest(der.as_ref()).into(),
            san_dns,
            san_uri,
            spiffe,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            eku,
        })
    }

    /// Lower-case hex of the SHA-256 fingerprint.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint_sha256)
    }
}

fn eku_names(eku: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> Vec<String> {
    let mut names = Vec::new();
    let known = [
        (eku.any, "any"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ];
    names.extend(
        known
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, n)| (*n).to_owned()),
    );
    names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    names
}
