//! Trust bundles: the CA certificates a partner's chain must end in, parsed once at load.
//!
//! webpki takes a trust anchor as a bare (subject, key, name constraints) triple and never looks at
//! the anchor certificate's dates, basicConstraints or keyUsage. certgate checks those itself, once
//! at load: a bundle holding an expired or not-yet-valid CA, a certificate that is not a CA, or a CA
//! whose keyUsage forbids certificate signing is refused as a configuration error, and an anchor
//! expiring within [`EXPIRY_WARNING`] is logged as a warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::pem::{self, PemError};
use crate::config::model;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: certificate #{index} is not a usable trust anchor", path.display())]
    Anchor {
        path: PathBuf,
        index: usize,
        #[source]
        source: webpki::Error,
    },
    #[error("{}: certificate #{index} ({subject}) is refused as a trust anchor: {problem}", path.display())]
    Hygiene {
        path: PathBuf,
        index: usize,
        /// RFC 4514 subject, or `?` when the certificate does not parse.
        subject: String,
        problem: AnchorProblem,
    },
}

/// Why a CA certificate may not be a trust anchor, although webpki would take it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorProblem {
    #[error("the certificate cannot be parsed: {0}")]
    Unparseable(String),
    /// `not_after` in Unix seconds.
    #[error("it expired at {}", rfc3339(*not_after))]
    Expired { not_after: i64 },
    /// `not_before` in Unix seconds.
    #[error("it is not valid before {}", rfc3339(*not_before))]
    NotYetValid { not_before: i64 },
    #[error("it has no basicConstraints extension with CA=true")]
    NotCa,
    #[error("its keyUsage does not include keyCertSign")]
    NoKeyCertSign,
    #[error("it has a malformed {0} extension")]
    BadExtension(&'static str),
}

/// An anchor whose notAfter is closer than this at load is logged as a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

impl TrustError {
    pub fn path(&self) -> &Path {
        match self {
            Self::Pem(e) => e.path(),
            Self::Anchor { path, .. } | Self::Hygiene { path, .. } => path,
        }
    }
}

/// One configured trust bundle, ready for webpki.
#[derive(Debug)]
pub struct Bundle {
    pub name: String,
    /// The CA certificates as loaded; the revocation loader verifies CRL signatures against these.
    pub certs: Vec<CertificateDer<'static>>,
    pub anchors: Vec<TrustAnchor<'static>>,
}

/// Every configured bundle, indexed by [`model::BundleId`].
#[derive(Debug)]
pub struct TrustStore {
    pub bundles: Vec<Bundle>,
    /// Subjects of all anchors, sent in the CertificateRequest so clients pick the right certificate.
    pub hints: Vec<DistinguishedName>,
}

impl TrustStore {
    /// Loads every bundle's CA file; returns every failure, not only the first.
    ///
    /// # Errors
    /// One entry per unreadable file, bad PEM, certificate webpki cannot use as an anchor, or
    /// certificate [`check_anchor`] refuses at the current time.
    pub fn load(bundles: &[model::TrustBundle]) -> Result<Self, Vec<TrustError>> {
        Self::load_at(bundles, UnixTime::now())
    }

    /// [`Self::load`] with the anchors' validity judged at `now` (conformance tests replay a fixed
    /// validation time).
    ///
    /// # Errors
    /// As [`Self::load`]; one entry per refused certificate, across all bundles.
    pub fn load_at(bundles: &[model::TrustBundle], now: UnixTime) -> Result<Self, Vec<TrustError>> {
        let mut errors = Vec::new();
        let mut loaded = Vec::with_capacity(bundles.len());
        for bundle in bundles {
            match Bundle::load(bundle, now) {
                Ok(b) => loaded.push(b),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let hints = loaded
            .iter()
            .flat_map(|b| b.anchors.iter())
            // webpki keeps the Name without its SEQUENCE header; the hint must be the full DER Name.
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        Ok(Self {
            bundles: loaded,
            hints,
        })
    }

    pub fn get(&self, id: model::BundleId) -> Option<&Bundle> {
        self.bundles.get(id.0)
    }
}

impl Bundle {
    /// Loads one CA file; every refused certificate is reported, not only the first.
    fn load(config: &model::TrustBundle, now: UnixTime) -> Result<Self, Vec<TrustError>> {
        let certs = pem::load_certs(&config.ca).map_err(|e| vec![e.into()])?;
        let mut errors = Vec::new();
        let mut anchors = Vec::with_capacity(certs.len());
        for (index, cert) in certs.iter().enumerate() {
            let anchor = match webpki::anchor_from_trusted_cert(cert) {
                Ok(a) => a.to_owned(),
                Err(source) => {
                    errors.push(TrustError::Anchor {
                        path: config.ca.clone(),
                        index,
                        source,
                    });
                    continue;
                }
            };
            match check_anchor(cert, now) {
                Ok(facts) => {
                    let left = facts.not_after.saturating_sub(unix_secs(now));
                    if left < i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX) {
                        tracing::warn!(
                            trust.bundle = %config.name,
                            trust.file = %config.ca.display(),
                            trust.index = index,
                            trust.subject = %facts.subject,
                            trust.not_after = %rfc3339(facts.not_after),
                            "trust anchor expires in {} days",
                            left / 86_400
                        );
                    }
                    anchors.push(anchor);
                }
                Err((subject, problem)) => errors.push(TrustError::Hygiene {
                    path: config.ca.clone(),
                    index,
                    subject,
                    problem,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            name: config.name.clone(),
            certs,
            anchors,
        })
    }
}

/// What [`check_anchor`] learnt about an accepted anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorFacts {
    /// RFC 4514 subject.
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Checks what webpki does not check on a trust anchor: validity at `now`, basicConstraints
/// CA=true, and keyCertSign in keyUsage when a keyUsage is present.
///
/// # Errors
/// The certificate's subject (or `?` if it does not parse) and the first problem found.
pub fn check_anchor(
    der: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<AnchorFacts, (String, AnchorProblem)> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| ("?".to_owned(), AnchorProblem::Unparseable(e.to_string())))?;
    let subject = cert.subject().to_string();
    let fail = |problem| Err((subject.clone(), problem));
    // x509-parser reads a malformed Name only in part, without an error; the revocation code files
    // CRLs under this subject, so it must be whole.
    if !crate::revocation::is_whole_tlv(cert.subject().as_raw()) {
        return fail(AnchorProblem::Unparseable(
            "malformed subject Name".to_owned(),
        ));
    }
    let now = unix_secs(now);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return fail(AnchorProblem::NotYetValid { not_before });
    }
    if now > not_after {
        return fail(AnchorProblem::Expired { not_after });
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return fail(AnchorProblem::NotCa),
        Err(_) => return fail(AnchorProblem::BadExtension("basicConstraints")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => return fail(AnchorProblem::NoKeyCertSign),
        Ok(_) => {}
        Err(_) => return fail(AnchorProblem::BadExtension("keyUsage")),
    }
    Ok(AnchorFacts { subject, not_after })
}

/// Unix seconds as an RFC 3339 UTC time (`2026-01-31T23:59:59Z`), as certificates' dates are
/// shown to operators.
pub fn rfc3339(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_secs} (unix seconds)"))
}

fn unix_secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}
