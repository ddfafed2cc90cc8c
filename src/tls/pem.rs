//! PEM loading for certificates and keys, with errors that name the file.
//!
//! Each error's message names the file and says what is wrong with it; the underlying cause (an
//! I/O or PEM error) is its `source`, printed after it by [`crate::error_chain`], so it appears
//! once.
//!
//! Uses `rustls-pki-types`' `PemObject` (rustls-pemfile is unmaintained, RUSTSEC-2025-0134).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid PEM", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{}: no certificate found (expected a PEM `CERTIFICATE` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found (expected PKCS#8, SEC1 or PKCS#1 PEM)", path.display())]
    NoKey { path: PathBuf },
    /// certgate does not hold passphrases: a key must be stored decrypted, readable by certgate
    /// alone.
    #[error(
        "{}: the private key is encrypted; certgate needs it unencrypted: decrypt it with \
         `openssl pkey -in {} -out <new file>` (asks for the passphrase), keep the new file \
         readable by certgate only, and point the config at it",
        path.display(),
        path.display()
    )]
    EncryptedKey { path: PathBuf },
}

impl PemError {
    /// The file the problem is in, for located diagnostics.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Parse { path, .. }
            | Self::NoCertificate { path }
            | Self::NoKey { path }
            | Self::EncryptedKey { path } => path,
        }
    }
}

/// Reads every certificate in a PEM file, in order.
///
/// # Errors
/// The file is unreadable, holds invalid PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path)?;
    certs_from_pem(&bytes, path)
}

/// Parses every certificate from PEM bytes; `path` is only used to name the source in errors.
///
/// # Errors
/// Invalid PEM, or no certificate at all.
pub fn certs_from_pem(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
///
/// # Errors
/// The file is unreadable, holds invalid PEM, holds no key, or holds only an encrypted one.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound if is_encrypted_key(&bytes) => PemError::EncryptedKey {
            path: path.to_owned(),
        },
        pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        source => PemError::Parse {
            path: path.to_owned(),
            source,
        },
    })
}

/// Whether the PEM holds an encrypted key, which the PEM parser skips as an unknown section: PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or a traditional OpenSSL key with a `Proc-Type: 4,ENCRYPTED` header.
fn is_encrypted_key(pem: &[u8]) -> bool {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}
