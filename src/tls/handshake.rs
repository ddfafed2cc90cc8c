//! The TLS handshake under a deadline, the fixed set of failure categories that logs and
//! metrics use, and the close of a refused connection that lets its alert arrive.

use std::time::Duration;

use rustls::{CertificateError, Error};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
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
    match tokio::time::timeout(timeout, acceptor.accept(io).into_fallible()).await {
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
                },
                io: Some(io),
            })
        }
        Err(_) => Err(Refused {
            error: HandshakeError {
                kind: HandshakeFailure::Timeout,
                source: None,
            },
            io: None,
        }),
    }
}
