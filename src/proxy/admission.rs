//! Whether `serve` would let a client certificate chain in, decided without a connection.
//!
//! The decision is the gateway's own: the handshake's [`ClientVerifier`] (chain to a trust bundle,
//! validity, clientAuth, signature algorithms, chain bounds, CRL and cached OCSP), classified by
//! [`HandshakeFailure::from_rustls`], then the checks a connection runs before its first request
//! ([`super::connection::identify`]: partner lookup, the partner's own trust bundle, revocation
//! again, an OCSP query under the bundle's timeout and mode). `certgate inspect` prints it, so an
//! onboarding team's answer and the gateway's can only differ if the configuration does.
//!
//! [`ClientVerifier`]: crate::tls::verifier::ClientVerifier

use rustls::server::danger::ClientCertVerifier as _;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::connection::identify;
use crate::config::model::PartnerId;
use crate::identity::{PartnerMatch, PeerIdentity};
use crate::refusal::Refusal;
use crate::snapshot::Snapshot;
use crate::tls::handshake::HandshakeFailure;

/// The gateway's verdict on one chain.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The leaf's identity, as a connection reads it.
    pub identity: PeerIdentity,
    /// The partner the identity maps to, whether or not it is let in.
    pub partner: Option<(PartnerId, PartnerMatch)>,
    /// `None` when the chain is accepted and the partner's requests go to policy.
    pub refused: Option<Refused>,
}

/// Where and why a chain is refused.
#[derive(Debug)]
pub(crate) enum Refused {
    /// In the TLS handshake: the client gets an alert, the audit line is `handshake_refused`.
    Handshake {
        kind: HandshakeFailure,
        error: rustls::Error,
    },
    /// After the handshake: every request on the connection is answered with this refusal.
    Request(Refusal),
}

/// Why a chain could not even be judged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmissionError {
    #[error("no certificate to judge")]
    Empty,
    #[error("the certificate cannot be read: {0}")]
    Identity(String),
}

impl Refused {
    /// The reason code the gateway's audit line and metrics use for this refusal.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Handshake { kind, .. } => kind.as_str(),
            Self::Request(refusal) => refusal.as_str(),
        }
    }
}

/// Judges `chain` (leaf first, then what the client would send along) now, as a connection
/// pinned to `snapshot` would.
///
/// # Errors
/// An empty chain, or a leaf whose identity cannot be parsed once it verified.
pub(crate) async fn admit(
    snapshot: &Snapshot,
    chain: &[CertificateDer<'_>],
) -> Result<Admission, AdmissionError> {
    let leaf = chain.first().ok_or(AdmissionError::Empty)?;
    let identity =
        PeerIdentity::from_der(leaf).map_err(|e| AdmissionError::Identity(e.to_string()))?;
    if let Err(error) = snapshot
        .verifier
        .verify_client_cert(leaf, &chain[1..], UnixTime::now())
    {
        return Ok(Admission {
            partner: snapshot.partners.lookup(&identity),
            identity,
            refused: Some(Refused::Handshake {
                kind: HandshakeFailure::from_rustls(&error),
                error,
            }),
        });
    }
    let (partner, refusal) = identify(snapshot, &identity, chain).await;
    Ok(Admission {
        identity,
        partner,
        refused: refusal.map(Refused::Request),
    })
}
