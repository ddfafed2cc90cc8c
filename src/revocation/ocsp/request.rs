//! Building the OCSP request for one (leaf, issuer) pair.

use der::asn1::{Null, OctetString};
use der::{Decode, Encode};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use spki::AlgorithmIdentifierOwned;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;

use super::{CertRole, OcspError};

/// `id-sha1`: RFC 6960 responders are only required to understand SHA-1 CertIDs, and OpenSSL
/// and most CAs index them that way. SHA-1 here is an identifier, not a signature.
const ID_SHA1: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");

/// Fixed-size cache key of a certificate: SHA-256 over its issuer's raw DN and its raw serial.
///
/// Fixed size so that a lookup needs no allocation; issuer + serial (rather than the leaf's
/// bytes) because that is what revocation is about, for CRLs and OCSP alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertKey([u8; 32]);

/// An encoded OCSP request plus what is needed to validate its answer. Built once per
/// certificate and kept by the cache for refreshes.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub(super) key: CertKey,
    /// The responder's URL (already checked to be `http://`).
    pub(super) url: http::Uri,
    /// DER of the `OCSPRequest`.
    pub(super) body: bytes::Bytes,
    pub(super) cert_id: CertId,
    pub(super) issuer_der: Vec<u8>,
    pub(super) issuer_dn: Vec<u8>,
    pub(super) serial: Vec<u8>,
}

// === impl CertKey ===

impl CertKey {
    /// The key of the certificate with this issuer DN (raw DER) and serial (INTEGER contents).
    pub fn new(issuer_dn: &[u8], serial: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        // The length prefix keeps (dn, serial) pairs from colliding by moving bytes across.
        hasher.update((issuer_dn.len() as u64).to_be_bytes());
        hasher.update(issuer_dn);
        hasher.update(serial);
        Self(hasher.finalize().into())
    }

    /// The key of a DER certificate.
    ///
    /// # Errors
    /// [`OcspError::Certificate`] when `leaf_der` is not a certificate.
    pub fn from_leaf_der(leaf_der: &[u8]) -> Result<Self, OcspError> {
        let leaf = parse_cert(leaf_der, CertRole::Leaf)?;
        Ok(Self::of(&leaf))
    }

    pub(super) fn of(cert: &X509Certificate<'_>) -> Self {
        Self::new(cert.issuer().as_raw(), cert.raw_serial())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// === impl PreparedRequest ===

impl PreparedRequest {
    /// Builds the request for `leaf_der`, issued by `issuer_der`, sent to `responder` if given,
    /// else to the leaf's AIA OCSP URL.
    ///
    /// # Errors
    /// A certificate does not parse, the issuer is not the leaf's issuer, there is no usable
    /// `http://` responder URL, or the request cannot be encoded.
    pub fn new(
        leaf_der: &[u8],
        issuer_der: &[u8],
        responder: Option<&str>,
    ) -> Result<Self, OcspError> {
        let leaf = parse_cert(leaf_der, CertRole::Leaf)?;
        let issuer = parse_cert(issuer_der, CertRole::Issuer)?;
        if leaf.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(OcspError::IssuerMismatch);
        }

        let url = match responder {
            Some(url) => parse_http_url(url)?,
            None => aia_ocsp_url(&leaf)?,
        };

        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: octets(&Sha1::digest(issuer.subject().as_raw()))?,
            issuer_key_hash: octets(&Sha1::digest(&issuer.public_key().subject_public_key.data))?,
            serial_number: serial_number(leaf.raw_serial())?,
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                ..TbsRequest::default()
            },
            optional_signature: None,
        };
        let body = request.to_der().map_err(OcspError::Encode)?;

        Ok(Self {
            key: CertKey::of(&leaf),
            url,
            body: body.into(),
            cert_id,
            issuer_der: issuer_der.to_vec(),
            issuer_dn: leaf.issuer().as_raw().to_vec(),
            serial: leaf.raw_serial().to_vec(),
        })
    }

    pub fn key(&self) -> CertKey {
        self.key
    }

    pub fn url(&self) -> &http::Uri {
        &self.url
    }

    /// The DER `OCSPRequest`.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

pub(super) fn parse_cert(der: &[u8], role: CertRole) -> Result<X509Certificate<'_>, OcspError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(OcspError::Certificate {
            role,
            source: x509_parser::error::X509Error::InvalidCertificate,
        }),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => {
            Err(OcspError::Certificate { role, source: e })
        }
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(OcspError::Certificate {
            role,
            source: x509_parser::error::X509Error::InvalidCertificate,
        }),
    }
}

fn octets(bytes: &[u8]) -> Result<OctetString, OcspError> {
    OctetString::new(bytes).map_err(OcspError::Encode)
}

/// The serial exactly as the leaf encodes it (sign and leading zero included), so the responder
/// sees the same INTEGER its index holds.
fn serial_number(contents: &[u8]) -> Result<SerialNumber, OcspError> {
    let len = u8::try_from(contents.len())
        .ok()
        .filter(|len| *len < 0x80)
        .ok_or(OcspError::Encode(der::ErrorKind::Overlength.into()))?;
    let mut tlv = Vec::with_capacity(contents.len() + 2);
    tlv.extend_from_slice(&[0x02, len]);
    tlv.extend_from_slice(contents);
    SerialNumber::from_der(&tlv).map_err(OcspError::Encode)
}

/// The first `http://` OCSP URL of the leaf's AIA. A leaf with OCSP URLs but none over plain HTTP
/// is reported as [`OcspError::UnsupportedUrl`] rather than as having no responder.
fn aia_ocsp_url(leaf: &X509Certificate<'_>) -> Result<http::Uri, OcspError> {
    let mut first_unsupported = None;
    for ext in leaf.extensions() {
        let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() else {
            continue;
        };
        for desc in aia.iter() {
            if desc.access_method != OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                continue;
            }
            if let GeneralName::URI(uri) = desc.access_location {
                match parse_http_url(uri) {
                    Ok(url) => return Ok(url),
                    Err(e) => {
                        first_unsupported.get_or_insert(e);
                    }
                }
            }
        }
    }
    Err(first_unsupported.unwrap_or(OcspError::NoResponder))
}

fn parse_http_url(url: &str) -> Result<http::Uri, OcspError> {
    let unsupported = || OcspError::UnsupportedUrl {
        url: url.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| unsupported())?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.host().is_none() {
        return Err(unsupported());
    }
    Ok(uri)
}
