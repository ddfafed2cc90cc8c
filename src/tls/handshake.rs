//! The TLS handshake under a deadline, the fixed set of failure categories that logs and
//! metrics use, and the close of a refused connection that lets its alert arrive.

use std::future::Future as _;
use std::time::Duration;

use rustls::{CertificateError, Error};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why a handshake failed, in the categories an SRE alerts on. Label values for metrics and the
/// `reason` field of the audit line come from [`HandshakeFailure::as_str`] only, and the
/// `handshake_refused` line's `error` from [`HandshakeFailure::describe`]: never from a library's
/// `Debug` text, which changes between versions.
///
/// The chain-structure classes (`ca_as_leaf` … `bad_chain`) are what webpki found wrong with the
/// presented chain; [`HandshakeFailure::from_webpki`] is the one place that decides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownCa,
    Expired,
    BadEku,
    Revoked,
    RevocationUnknown,
    /// The TLS exchange itself failed (version, cipher, malformed record), not the certificate.
    ProtocolError,
    Timeout,
    /// More intermediates than `max_chain_depth`, or more certificate bytes than
    /// `max_chain_bytes`: refused before any path building.
    ChainTooLong,
    /// A CA certificate presented as the client's own certificate.
    CaAsLeaf,
    /// An end-entity certificate used to issue another certificate in the chain.
    LeafAsCa,
    /// A CA's `pathLenConstraint` does not allow the intermediates below it.
    PathLen,
    /// A name in the chain lies outside an issuer's name constraints, or is of a form whose
    /// constraints are not evaluated (URI, directory name): refused rather than let through.
    NameConstraints,
    /// A signature in the chain does not verify, e.g. a certificate naming a trusted CA as its
    /// issuer that another key signed.
    BadSignature,
    /// A signature algorithm the gateway does not accept, or one that does not match the key.
    UnsupportedAlgorithm,
    /// A certificate that is not well-formed DER or has malformed extensions.
    BadEncoding,
    /// Any other fault in the chain's structure: an unknown critical extension, a chain too deep
    /// or too costly to build, a distrusted CA.
    BadChain,
}

impl HandshakeFailure {
    /// Every category, in metric-export order: declaration order, which is each one's
    /// [`HandshakeFailure::index`]. A unit test fails when a variant is missing or out of place.
    pub const ALL: [HandshakeFailure; 17] = [
        Self::NoClientCert,
        Self::UnknownCa,
        Self::Expired,
        Self::BadEku,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::ProtocolError,
        Self::Timeout,
        Self::ChainTooLong,
        Self::CaAsLeaf,
        Self::LeafAsCa,
        Self::PathLen,
        Self::NameConstraints,
        Self::BadSignature,
        Self::UnsupportedAlgorithm,
        Self::BadEncoding,
        Self::BadChain,
    ];

    /// The stable reason code: metric label and audit `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadEku => "bad_eku",
            Self::Revoked => "revoked",
            Self::RevocationUnknown => "revocation_unknown",
            Self::ProtocolError => "protocol_error",
            Self::Timeout => "timeout",
            Self::ChainTooLong => "chain_too_long",
            Self::CaAsLeaf => "ca_as_leaf",
            Self::LeafAsCa => "leaf_as_ca",
            Self::PathLen => "path_len",
            Self::NameConstraints => "name_constraints",
            Self::BadSignature => "bad_signature",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::BadEncoding => "bad_encoding",
            Self::BadChain => "bad_chain",
        }
    }

    /// Position in [`HandshakeFailure::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// One sentence for the audit line's `error` field and the user docs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoClientCert => "the client presented no certificate",
            Self::UnknownCa => "the certificate does not chain to a configured trust bundle",
            Self::Expired => "the certificate or one in its chain is expired or not yet valid",
            Self::BadEku => "the certificate does not carry the clientAuth extended key usage",
            Self::Revoked => "the certificate or one in its chain is revoked",
            Self::RevocationUnknown => "the revocation status of the certificate is unknown",
            Self::ProtocolError => "the TLS exchange failed before the certificate was judged",
            Self::Timeout => "the handshake did not finish in time",
            Self::ChainTooLong => "the presented chain exceeds max_chain_depth or max_chain_bytes",
            Self::CaAsLeaf => "a CA certificate was presented as the client certificate",
            Self::LeafAsCa => "an end-entity certificate was used as an issuer in the chain",
            Self::PathLen => "the chain has more intermediates than a CA's pathLen allows",
            Self::NameConstraints => {
                "a name in the certificate is outside an issuer's name constraints, \
                 or is a URI or directory name under a constraint on that form, \
                 which is not evaluated and so refused"
            }
            Self::BadSignature => "a signature in the chain does not verify",
            Self::UnsupportedAlgorithm => "a signature algorithm in the chain is not accepted",
            Self::BadEncoding => "a certificate in the chain is malformed",
            Self::BadChain => "the chain's structure is invalid",
        }
    }

    /// Classifies a rustls error raised while verifying the peer. certgate's verifier hands
    /// webpki's chain-structure errors through `CertificateError::Other`; those are classified by
    /// [`HandshakeFailure::from_webpki`].
    pub fn from_rustls(error: &Error) -> Self {
        match error {
            Error::NoCertificatesPresented => Self::NoClientCert,
            Error::InvalidCertificate(c) => Self::from_certificate_error(c),
            _ => Self::ProtocolError,
        }
    }

    /// [`HandshakeFailure::from_rustls`] for the certificate part alone.
    pub fn from_certificate_error(error: &CertificateError) -> Self {
        match error {
            CertificateError::UnknownIssuer => Self::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::Expired,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::BadEku
            }
            CertificateError::Revoked => Self::Revoked,
            // Raised by certgate's verifier for its chain bounds only.
            CertificateError::ApplicationVerificationFailure => Self::ChainTooLong,
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => Self::RevocationUnknown,
            CertificateError::BadSignature => Self::BadSignature,
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                Self::UnsupportedAlgorithm
            }
            CertificateError::BadEncoding => Self::BadEncoding,
            CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(e) => Self::from_webpki(e),
                None => Self::BadChain,
            },
            _ => Self::BadChain,
        }
    }

    /// Classifies webpki's verdict on a chain. Exhaustive over what a certificate path can fail
    /// on; anything webpki adds later lands in `bad_chain`, never in an unlisted code.
    pub fn from_webpki(error: &webpki::Error) -> Self {
        use webpki::Error as E;
        match error {
            E::UnknownIssuer => Self::UnknownCa,
            E::CertExpired { .. } | E::CertNotValidYet { .. } | E::InvalidCertValidity => {
                Self::Expired
            }
            E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => Self::BadEku,
            E::CertRevoked => Self::Revoked,
            E::UnknownRevocationStatus => Self::RevocationUnknown,
            E::CaUsedAsEndEntity => Self::CaAsLeaf,
            E::EndEntityUsedAsCa => Self::LeafAsCa,
            E::PathLenConstraintViolated => Self::PathLen,
            E::NameConstraintViolation
            | E::MalformedNameConstraint
            | E::InvalidNetworkMaskConstraint
            | E::UnsupportedNameType => Self::NameConstraints,
            E::InvalidSignatureForPublicKey => Self::BadSignature,
            E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
            | E::SignatureAlgorithmMismatch => Self::UnsupportedAlgorithm,
            E::BadDer
            | E::BadDerTime
            | E::TrailingData(_)
            | E::MalformedExtensions
            | E::ExtensionValueInvalid
            | E::InvalidSerialNumber
            | E::UnsupportedCertVersion => Self::BadEncoding,
            _ => Self::BadChain,
        }
    }
}

/// A failed handshake: its category and, where there is one, the underlying error for the log.
#[derive(Debug, thiserror::Error)]
#[error("tls handshake failed ({})", kind.as_str())]
pub struct HandshakeError {
    pub kind: HandshakeFailure,
    #[source]
    pub source: Option<std::io::Error>,
    /// The client's certificate, when the verifier refused it: what the audit line reports the
    /// refusal was about. `None` when no certificate was presented or judged.
    pub leaf: Option<CertificateDer<'static>>,
}

/// How long a refused connection stays open for its alert to arrive, at most.
const LINGER: Duration = Duration::from_secs(1);
/// How much a refused client may still send meanwhile; the rest is not waited for.
const LINGER_BYTES: usize = 64 * 1024;

/// A refused handshake: why, and the connection, kept open until [`Refused::close`].
#[derive(Debug)]
pub struct Refused<IO> {
    pub error: HandshakeError,
    /// `None` after a timeout: the handshake was abandoned mid-way and has no alert to deliver.
    io: Option<IO>,
}

impl<IO> Refused<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The connection, unless the handshake timed out.
    pub fn io_mut(&mut self) -> Option<&mut IO> {
        self.io.as_mut()
    }

    /// Closes the connection without losing the alert rustls sent. In TLS 1.3 the client checks
    /// nothing more after its Finished and at once sends its first bytes (an HTTP/2 preface, a
    /// request), which the server, refusing its certificate only then, never reads. Closing a
    /// socket with unread data makes the kernel send a reset, and a reset makes the client's kernel
    /// drop the alert it has not read yet: curl then reports "connection reset" instead of
    /// "certificate revoked" (six times in ten over HTTP/2 against the demo). So the write side
    /// is shut first (alert, then FIN), and whatever the client still sends is read and dropped
    /// until it closes its side, for at most [`LINGER`] and [`LINGER_BYTES`].
    pub async fn close(self) {
        let Some(mut io) = self.io else { return };
        let drain = async {
            io.shutdown().await?;
            let mut buf = [0u8; 4096];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match io.read(&mut buf).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            Ok::<_, std::io::Error>(())
        };
        // An error or the deadline ends the wait the same way: the socket is dropped.
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Runs the server side of the handshake, giving up after `timeout`.
///
/// # Errors
/// The classified failure, with the connection: the client has been sent the matching alert by
/// rustls, and [`Refused::close`] lets it arrive.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, Refused<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut accepting = acceptor.accept(io).into_fallible();
    let mut leaf = None;
    // The verifier runs inside one of these polls and, when it refuses, leaves the leaf in a
    // thread-local slot; it is taken before another task can run on this thread. Clearing the
    // slot first drops a leaf left by a verifier call outside any handshake.
    let watched = std::future::poll_fn(|cx| {
        drop(super::verifier::take_refused_leaf());
        let polled = std::pin::Pin::new(&mut accepting).poll(cx);
        if let Some(refused) = super::verifier::take_refused_leaf() {
            leaf = Some(refused);
        }
        polled
    });
    let outcome = tokio::time::timeout(timeout, watched).await;
    match outcome {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err((e, io))) => {
            let kind = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Error>())
                .map_or(
                    HandshakeFailure::ProtocolError,
                    HandshakeFailure::from_rustls,
                );
            Err(Refused {
                error: HandshakeError {
                    kind,
                    source: Some(e),
                    leaf,
                },
                io: Some(io),
            })
        }
        Err(_) => Err(Refused {
            error: HandshakeError {
                kind: HandshakeFailure::Timeout,
                source: None,
                leaf: None,
            },
            io: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_in_all_in_place_with_its_own_reason_code() {
        let codes = assert_all_lists_every_variant!(HandshakeFailure:
            HandshakeFailure::NoClientCert,
            HandshakeFailure::UnknownCa,
            HandshakeFailure::Expired,
            HandshakeFailure::BadEku,
            HandshakeFailure::Revoked,
            HandshakeFailure::RevocationUnknown,
            HandshakeFailure::ProtocolError,
            HandshakeFailure::Timeout,
            HandshakeFailure::ChainTooLong,
            HandshakeFailure::CaAsLeaf,
            HandshakeFailure::LeafAsCa,
            HandshakeFailure::PathLen,
            HandshakeFailure::NameConstraints,
            HandshakeFailure::BadSignature,
            HandshakeFailure::UnsupportedAlgorithm,
            HandshakeFailure::BadEncoding,
            HandshakeFailure::BadChain,
        );
        assert_eq!(codes.len(), HandshakeFailure::ALL.len());
        for (i, f) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f:?} is out of place in ALL");
        }
    }
}
