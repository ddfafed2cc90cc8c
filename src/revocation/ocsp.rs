//! OCSP (RFC 6960) for client certificates: request building, response validation, a shared
//! cache with single-flight queries and background refresh, and the soft/hard-fail decision.
//!
//! Phase order, as the gateway uses it:
//! 1. In the TLS handshake the verifier calls [`OcspCache::cached`]: one hash lookup, no await,
//!    no allocation. A cached `revoked` ends the handshake; a miss defers to step 2.
//! 2. In the connection task, before any request is served, [`OcspCache::query`] is awaited
//!    (under the caller's own deadline as well as the configured one). Concurrent callers for
//!    one certificate share one HTTP exchange.
//! 3. [`OcspCache::decide`] turns the result into a verdict according to [`OcspMode`].
//! 4. [`OcspCache::spawn_refresher`] keeps used entries fresh and reports certificates that turn
//!    `revoked` through the hook set with [`OcspCache::set_on_revoked`], so live connections can
//!    be cut.
//!
//! Only `http://` responders are queried: OCSP responses are signed, and fetching them over TLS
//! would make revocation checking depend on another certificate check.

mod cache;
mod request;
mod response;

use std::sync::Arc;
use std::time::Duration;

use crate::config::model::OcspMode;

pub use cache::{OcspCache, OcspCounters, OcspRevoked};
pub use request::{CertKey, PreparedRequest};
pub use response::{verify_response, VerifiedResponse};

/// Largest OCSP response body accepted, in bytes. Real responses are a few KiB (one signature,
/// perhaps one responder certificate); the bound keeps a hostile responder from filling memory.
pub const MAX_RESPONSE_SIZE: usize = 64 * 1024;

/// Clock skew tolerated when checking `thisUpdate` against our clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Cache lifetime of an answer without `nextUpdate` (RFC 6960 §2.4: newer information is always
/// available), further capped by the configured `max_cache_age`.
pub const NO_NEXT_UPDATE_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The status a responder gave for one certificate, after the response was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcspStatus {
    Good,
    Revoked,
    /// The responder does not know the certificate (e.g. wrong issuer or serial not issued).
    Unknown,
}

/// What the gateway does with a certificate after its OCSP check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspVerdict {
    Allow,
    Refuse(RefuseReason),
}

/// Why a certificate is refused. A failed check under hard-fail is reported as `Unknown`: the
/// gateway does not know the certificate's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    Revoked,
    Unknown,
}

/// Which certificate an input error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Leaf,
    Issuer,
    Responder,
}

/// Why a response's signer is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignerProblem {
    #[error("responder id matches neither the issuer nor an included certificate")]
    NotFound,
    #[error("responder certificate is not issued by the certificate's issuer")]
    NotIssuedByIssuer,
    #[error("responder certificate's signature does not verify with the issuer key")]
    BadIssuerSignature,
    #[error("responder certificate lacks the OCSPSigning extended key usage")]
    NoOcspSigningEku,
    #[error("responder certificate is outside its validity period")]
    OutsideValidity,
}

/// Everything that can go wrong while asking a responder. `Clone` because one failure is shared by
/// every caller of a single-flight query; sources are kept behind `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OcspError {
    #[error("cannot parse the {role:?} certificate")]
    Certificate {
        role: CertRole,
        #[source]
        source: x509_parser::error::X509Error,
    },
    #[error("the issuer certificate's subject is not the leaf's issuer")]
    IssuerMismatch,
    #[error("no OCSP responder: none configured and the leaf has no AIA OCSP URL")]
    NoResponder,
    #[error("unsupported OCSP responder URL {url:?}: only http:// is used")]
    UnsupportedUrl { url: String },
    #[error("cannot encode the OCSP request")]
    Encode(#[source] der::Error),
    #[error("HTTP exchange with the OCSP responder failed")]
    Http(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("OCSP responder answered HTTP {0}")]
    HttpStatus(http::StatusCode),
    #[error("OCSP response larger than {MAX_RESPONSE_SIZE} bytes")]
    TooLarge,
    #[error("OCSP responder did not answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed OCSP response")]
    Decode(#[source] der::Error),
    #[error("OCSP response status is {0:?}, not successful")]
    ResponseStatus(x509_ocsp::OcspResponseStatus),
    #[error("OCSP response is not a BasicOCSPResponse")]
    NotBasic,
    #[error("OCSP response signed with an unsupported algorithm or key type")]
    UnsupportedAlgorithm,
    #[error("OCSP response signature does not verify")]
    BadSignature,
    #[error("OCSP response signer not authorised")]
    UnauthorizedSigner(#[source] SignerProblem),
    #[error("OCSP response has no answer for the requested certificate")]
    NoMatchingResponse,
    #[error("OCSP response thisUpdate is in the future")]
    NotYetValid,
    #[error("OCSP response nextUpdate has passed")]
    Expired,
    #[error("OCSP query task ended without an answer")]
    Aborted,
}

/// The verdict for `result` under `mode`, without side effects.
///
/// `revoked` is refused in every mode except `Off`. Under hard-fail, `unknown` and any failure to
/// obtain a valid answer are refused too; under soft-fail they are allowed (see
/// [`OcspCache::decide`], which also counts and logs those allowances).
pub fn decide(mode: OcspMode, result: &Result<OcspStatus, OcspError>) -> OcspVerdict {
    match (mode, result) {
        (OcspMode::Off, _) => OcspVerdict::Allow,
        (_, Ok(OcspStatus::Good)) => OcspVerdict::Allow,
        (_, Ok(OcspStatus::Revoked)) => OcspVerdict::Refuse(RefuseReason::Revoked),
        (OcspMode::SoftFail, Ok(OcspStatus::Unknown) | Err(_)) => OcspVerdict::Allow,
        (OcspMode::HardFail, Ok(OcspStatus::Unknown) | Err(_)) => {
            OcspVerdict::Refuse(RefuseReason::Unknown)
        }
    }
}
