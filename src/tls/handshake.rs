//! The TLS handshake under a deadline, and the fixed set of failure categories that logs and
//! metrics use.

use std::time::Duration;

use rustls::{CertificateError, Error};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why a handshake failed, in the categories an SRE alerts on. Label values for metrics and the
/// `reason` field of the audit line come from [`HandshakeFailure::as_str`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownCa,
    Expired,
    BadEku,
    Revoked,
    RevocationUnknown,
    ProtocolError,
    Timeout,
    /// More intermediates than `max_chain_depth`, or more certificate bytes than
    /// `max_chain_bytes`: refused before any path building.
    ChainTooLong,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 9] = [
        Self::NoClientCert,
        Self::UnknownCa,
        Self::Expired,
        Self::BadEku,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::ProtocolError,
        Self::Timeout,
        Self::ChainTooLong,
    ];

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
        }
    }

    /// Classifies a rustls error raised while verifying the peer.
    pub fn from_rustls(error: &Error) -> Self {
        match error {
            Error::NoCertificatesPresented => Self::NoClientCert,
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Self::UnknownCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::Expired,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Self::BadEku,
                CertificateError::Revoked => Self::Revoked,
                // Raised by certgate's verifier for its chain bounds only.
                CertificateError::ApplicationVerificationFailure => Self::ChainTooLong,
                CertificateError::UnknownRevocationStatus
                | CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. } => Self::RevocationUnknown,
                _ => Self::ProtocolError,
            },
            _ => Self::ProtocolError,
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
}

/// Runs the server side of the handshake, giving up after `timeout`.
///
/// # Errors
/// The classified failure; the client has been sent the matching alert by rustls.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => {
            let kind = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Error>())
                .map_or(
                    HandshakeFailure::ProtocolError,
                    HandshakeFailure::from_rustls,
                );
            Err(HandshakeError {
                kind,
                source: Some(e),
            })
        }
        Err(_) => Err(HandshakeError {
            kind: HandshakeFailure::Timeout,
            source: None,
        }),
    }
}
