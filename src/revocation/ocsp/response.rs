//! Validating an OCSP response against the request it answers.

use std::time::SystemTime;

use der::{Decode, Encode};
use sha1::{Digest, Sha1};
use x509_ocsp::{CertId, CertStatus, OcspResponse, OcspResponseStatus, ResponderId, ResponseData};
use x509_parser::certificate::X509Certificate;

use super::request::{parse_cert, PreparedRequest};
use super::{CertRole, OcspError, OcspStatus, SignerProblem, CLOCK_SKEW};
use crate::revocation::signed::{self, split_signed, split_spki, SignatureError};

/// `id-pkix-ocsp-basic`, the only response type RFC 6960 defines.
const ID_PKIX_OCSP_BASIC: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");

/// A response that passed every check, reduced to what the cache needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedResponse {
    pub status: OcspStatus,
    pub this_update: SystemTime,
    pub next_update: Option<SystemTime>,
}

/// Checks `response_der` as the answer to `request` at time `now`.
///
/// Accepted only when: the response status is successful; it is a BasicOCSPResponse; it is
/// signed by the issuer itself, or by a certificate included in the response that the issuer
/// signed, that carries id-kp-OCSPSigning and that is valid at `now`; a SingleResponse matches the
/// request's CertID; its thisUpdate is not after `now` + [`CLOCK_SKEW`] and its nextUpdate, if
/// any, is not before `now`.
///
/// # Errors
/// The first check that fails, as an [`OcspError`].
pub fn verify_response(
    request: &PreparedRequest,
    response_der: &[u8],
    now: SystemTime,
) -> Result<VerifiedResponse, OcspError> {
    let response = OcspResponse::from_der(response_der).map_err(OcspError::Decode)?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::ResponseStatus(response.response_status));
    }
    let bytes = response.response_bytes.ok_or(OcspError::NotBasic)?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }

    let basic = split_signed(bytes.response.as_bytes()).map_err(OcspError::Decode)?;
    let data = ResponseData::from_der(basic.tbs).map_err(OcspError::Decode)?;

    let issuer = parse_cert(&request.issuer_der, CertRole::Issuer)?;
    let signer_spki = signer_spki(&data.responder_id, &issuer, &basic.certs, now)?;
    verify_signature(signer_spki, basic.signature_alg, basic.tbs, basic.signature)?;

    let single = data
        .responses
        .iter()
        .find(|single| same_cert(&single.cert_id, &request.cert_id))
        .ok_or(OcspError::NoMatchingResponse)?;

    let this_update = single.this_update.0.to_system_time();
    if this_update > now + CLOCK_SKEW {
        return Err(OcspError::NotYetValid);
    }
    let next_update = single.next_update.map(|t| t.0.to_system_time());
    if next_update.is_some_and(|next| next < now) {
        return Err(OcspError::Expired);
    }

    let status = match single.cert_status {
        CertStatus::Good(_) => OcspStatus::Good,
        CertStatus::Revoked(_) => OcspStatus::Revoked,
        CertStatus::Unknown(_) => OcspStatus::Unknown,
    };
    Ok(VerifiedResponse {
        status,
        this_update,
        next_update,
    })
}

/// Hash parameters are ignored: some responders encode SHA-1's absent parameters as NULL and
/// some omit them.
fn same_cert(answer: &CertId, asked: &CertId) -> bool {
    answer.hash_algorithm.oid == asked.hash_algorithm.oid
        && answer.issuer_name_hash == asked.issuer_name_hash
        && answer.issuer_key_hash == asked.issuer_key_hash
        && answer.serial_number == asked.serial_number
}

/// The SubjectPublicKeyInfo (full TLV) of the authorised signer named by `responder_id`.
fn signer_spki<'a>(
    responder_id: &ResponderId,
    issuer: &'a X509Certificate<'a>,
    certs: &[&'a [u8]],
    now: SystemTime,
) -> Result<&'a [u8], OcspError> {
    if names_cert(responder_id, issuer)? {
        return Ok(issuer.tbs_certificate.subject_pki.raw);
    }
    for der in certs {
        let cert = parse_cert(der, CertRole::Responder)?;
        if names_cert(responder_id, &cert)? {
            check_delegate(der, &cert, issuer, now)?;
            return Ok(cert.tbs_certificate.subject_pki.raw);
        }
    }
    Err(OcspError::UnauthorizedSigner(SignerProblem::NotFound))
}

fn names_cert(responder_id: &ResponderId, cert: &X509Certificate<'_>) -> Result<bool, OcspError> {
    Ok(match responder_id {
        ResponderId::ByName(name) => {
            name.to_der().map_err(OcspError::Decode)? == cert.subject().as_raw()
        }
        ResponderId::ByKey(hash) => {
            // RFC 6960: SHA-1 of the subjectPublicKey BIT STRING's value (excluding tag, length
            // and unused-bits octet).
            Sha1::digest(&cert.public_key().subject_public_key.data).as_slice() == hash.as_bytes()
        }
    })
}

/// RFC 6960 §4.2.2.2: a delegated responder is issued directly by the CA that issued the
/// certificate in question and carries id-kp-OCSPSigning.
fn check_delegate(
    der: &[u8],
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<(), OcspError> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(OcspError::UnauthorizedSigner(
            SignerProblem::NotIssuedByIssuer,
        ));
    }
    let signed = split_signed(der).map_err(OcspError::Decode)?;
    verify_signature(
        issuer.public_key().raw,
        signed.signature_alg,
        signed.tbs,
        signed.signature,
    )
    .map_err(|_| OcspError::UnauthorizedSigner(SignerProblem::BadIssuerSignature))?;

    let ocsp_signing = matches!(
        cert.extended_key_usage(),
        Ok(Some(eku)) if eku.value.ocsp_signing
    );
    if !ocsp_signing {
        return Err(OcspError::UnauthorizedSigner(
            SignerProblem::NoOcspSigningEku,
        ));
    }

    let now = unix_seconds(now);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(OcspError::UnauthorizedSigner(
            SignerProblem::OutsideValidity,
        ));
    }
    Ok(())
}

/// Verifies `signature` over `message` with the key in `spki_der` (see [`signed::verify`]).
fn verify_signature(
    spki_der: &[u8],
    signature_alg: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), OcspError> {
    let spki = split_spki(spki_der).map_err(OcspError::Decode)?;
    signed::verify(&spki, signature_alg, message, signature).map_err(|e| match e {
        SignatureError::Bad => OcspError::BadSignature,
        SignatureError::Unsupported => OcspError::UnsupportedAlgorithm,
    })
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}
