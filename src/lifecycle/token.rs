//! Bearer secrets of the enrolment flow: the invitation token and the status URL's secret.
//!
//! Both are random, shown once, and stored only as their SHA-256: a copy of the registry does not
//! let anyone enrol or read a request. Presented secrets are compared with stored hashes in
//! constant time, so response timing tells nothing about how much of a guess was right.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::ca::CaError;

/// Random bytes in an enrolment token: 256 bits, far beyond guessing under any rate limit.
pub const TOKEN_BYTES: usize = 32;

/// A new secret: the text handed out once, and the hash the registry keeps.
#[derive(Debug, Clone)]
pub struct Secret {
    /// base64url without padding.
    pub text: String,
    /// SHA-256 of `text`, lower-case hex.
    pub sha256: String,
}

/// A new random secret of `TOKEN_BYTES`.
///
/// # Errors
/// The system's random source failed.
pub fn generate() -> Result<Secret, CaError> {
    let bytes = random::<TOKEN_BYTES>()?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let sha256 = sha256_hex(&text);
    Ok(Secret { text, sha256 })
}

/// `N` bytes from the aws-lc-rs generator rustls already uses.
///
/// # Errors
/// The system's random source failed.
pub fn random<const N: usize>() -> Result<[u8; N], CaError> {
    let mut bytes = [0u8; N];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    Ok(bytes)
}

/// SHA-256 of a presented secret, lower-case hex: what is compared with the stored hash.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Whether two hashes are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_url_safe_long_and_stored_only_as_its_hash() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.text, b.text);
        assert_eq!(a.text.len(), 43, "32 bytes in base64url without padding");
        assert!(a
            .text
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(a.sha256, sha256_hex(&a.text));
        assert!(same(&a.sha256, &sha256_hex(&a.text)));
        assert!(!same(&a.sha256, &b.sha256));
        assert!(!same(&a.sha256, &a.sha256[..63]));
    }
}
