//! Splitting signed DER structures into the exact bytes a signature covers.
//!
//! Signatures are over the original encoding of `tbsResponseData` / `tbsCertificate`, so they are
//! sliced out of the input instead of being re-encoded from decoded values.

use der::asn1::BitStringRef;
use der::{Decode, Header, Reader, SliceReader, Tag, TagNumber};

/// A `SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING, [0] EXPLICIT SEQUENCE OF ANY OPTIONAL }`,
/// the shape shared by `Certificate` and `BasicOCSPResponse`.
pub(super) struct Signed<'a> {
    /// The full TLV of the signed part.
    pub(super) tbs: &'a [u8],
    /// The contents (without tag and length) of the signature AlgorithmIdentifier, which is the
    /// form `rustls_pki_types::AlgorithmIdentifier` holds.
    pub(super) signature_alg: &'a [u8],
    pub(super) signature: &'a [u8],
    /// The TLVs of the `[0]` certificates (BasicOCSPResponse only; empty for certificates).
    pub(super) certs: Vec<&'a [u8]>,
}

/// A `SubjectPublicKeyInfo` split the way `SignatureVerificationAlgorithm` wants it.
pub(super) struct Spki<'a> {
    /// Contents of the AlgorithmIdentifier, comparable with `public_key_alg_id()`.
    pub(super) alg: &'a [u8],
    /// The subjectPublicKey BIT STRING's contents.
    pub(super) key: &'a [u8],
}

/// Splits `der` (which must be consumed entirely) into its signed parts.
pub(super) fn split_signed(der: &[u8]) -> der::Result<Signed<'_>> {
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
pub(super) fn split_spki(der: &[u8]) -> der::Result<Spki<'_>> {
    let mut reader = SliceReader::new(der)?;
    let spki = reader.sequence(|r| {
        let alg = sequence_contents(r)?;
        let key = bit_string_bytes(r)?;
        Ok(Spki { alg, key })
    })?;
    reader.finish(spki)
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
