//! Signed DER structures, for CRLs and OCSP alike: splitting them into the exact bytes a
//! signature covers, splitting a SubjectPublicKeyInfo, and verifying the signature.
//!
//! Signatures are over the original encoding of `tbsCertList` / `tbsResponseData` /
//! `tbsCertificate`, so they are sliced out of the input (with the `der` crate's `SliceReader`,
//! which does not allocate) instead of being re-encoded from decoded values.

use der::asn1::BitStringRef;
use der::{Decode, Header, Reader, SliceReader, Tag, TagNumber};

/// A `SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING, [0] EXPLICIT SEQUENCE OF ANY OPTIONAL }`,
/// the shape shared by `Certificate`, `CertificateList` and `BasicOCSPResponse`.
pub(crate) struct Signed<'a> {
    /// The full TLV of the signed part.
    pub(crate) tbs: &'a [u8],
    /// The contents (without tag and length) of the signature AlgorithmIdentifier, which is the
    /// form `rustls_pki_types::AlgorithmIdentifier` holds.
    pub(crate) signature_alg: &'a [u8],
    pub(crate) signature: &'a [u8],
    /// The TLVs of the `[0]` certificates (BasicOCSPResponse only; empty for certificates and
    /// CRLs, which must refuse it).
    pub(crate) certs: Vec<&'a [u8]>,
}

/// A `SubjectPublicKeyInfo` split the way `SignatureVerificationAlgorithm` wants it.
pub(crate) struct Spki<'a> {
    /// Contents of the AlgorithmIdentifier, comparable with `public_key_alg_id()`.
    pub(crate) alg: &'a [u8],
    /// The subjectPublicKey BIT STRING's contents.
    pub(crate) key: &'a [u8],
}

/// Splits `der` (which must be consumed entirely) into its signed parts.
pub(crate) fn split_signed(der: &[u8]) -> der::Result<Signed<'_>> {
    let mut reader = SliceReader::new(der)?;
    let signed = reader.sequence(|r| {
        let tbs = r.tlv_bytes()?;
        let signature_alg = sequence_contents(r)?;
        let signature = bit_string_bytes(r)?;
        let mut certs = Vec::new();
        if !r.is_finished() {
            let explicit = Header::decode(r)?;
            explicit.tag.assert_eq(Tag::ContextSpecific {
                constructed: true,
                number: TagNumber::N0,
            })?;
            r.read_nested(explicit.length, |r| {
                r.sequence(|r| {
                    while !r.is_finished() {
                        certs.push(r.tlv_bytes()?);
                    }
                    Ok(())
                })
            })?;
        }
        Ok(Signed {
            tbs,
            signature_alg,
            signature,
            certs,
        })
    })?;
    reader.finish(signed)
}

/// Splits a full `SubjectPublicKeyInfo` TLV.
pub(crate) fn split_spki(der: &[u8]) -> der::Result<Spki<'_>> {
    let mut reader = SliceReader::new(der)?;
    let spki = reader.sequence(|r| {
        let alg = sequence_contents(r)?;
        let key = bit_string_bytes(r)?;
        Ok(Spki { alg, key })
    })?;
    reader.finish(spki)
}

/// Why [`verify`] refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureError {
    /// No algorithm of the set pairs this signature algorithm with this key type.
    Unsupported,
    /// The signature does not verify.
    Bad,
}

/// Verifies `signature` over `message` with `key`, using the aws-lc-rs algorithms rustls itself
/// uses, so CRLs and OCSP accept exactly the algorithms the handshake does. `signature_alg` and
/// `key.alg` are AlgorithmIdentifier contents.
pub(crate) fn verify(
    key: &Spki<'_>,
    signature_alg: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    let mut supported = false;
    for alg in algs.iter().filter(|alg| {
        alg.signature_alg_id().as_ref() == signature_alg
            && alg.public_key_alg_id().as_ref() == key.alg
    }) {
        supported = true;
        if alg.verify_signature(key.key, message, signature).is_ok() {
            return Ok(());
        }
    }
    Err(if supported {
        SignatureError::Bad
    } else {
        SignatureError::Unsupported
    })
}

fn sequence_contents<'a, R: Reader<'a>>(r: &mut R) -> der::Result<&'a [u8]> {
    let header = Header::decode(r)?;
    header.tag.assert_eq(Tag::Sequence)?;
    r.read_slice(header.length)
}

/// Signatures and keys are whole octets; a BIT STRING with unused bits is malformed here.
fn bit_string_bytes<'a, R: Reader<'a>>(r: &mut R) -> der::Result<&'a [u8]> {
    let bits = BitStringRef::decode(r)?;
    bits.as_bytes()
        .ok_or_else(|| der::Tag::BitString.value_error())
}
