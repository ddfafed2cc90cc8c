//! CRLs parsed and signature-checked once at load into an O(1) serial set.
//!
//! webpki's own CRL support re-verifies the CRL signature on every lookup and keeps serials in a
//! `BTreeMap`; with a million-entry CRL that is too slow for the handshake path. Here the signature
//! is checked once against the issuing CA from the trust bundle, and the serials land in a hash set
//! keyed by their big-endian bytes (leading zeros stripped), which the handshake path queries with a
//! borrowed slice, without allocating.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{ParsedExtension, X509Extension};
use x509_parser::oid_registry::{OID_X509_EXT_DELTA_CRL_INDICATOR, OID_X509_EXT_FRESHEST_CRL};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use super::der::{cert_issuer_and_serial, is_one_tlv, strip_leading_zeros};
use super::signed::{split_signed, split_spki, verify, SignatureError, Signed, Spki};

/// Why a CRL was refused. The caller wraps it with the source it came from.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("no CRL found (neither a PEM `X509 CRL` block nor DER)")]
    Empty,
    #[error("invalid PEM")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("malformed CRL")]
    Malformed(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("malformed CRL: {0}")]
    Framing(&'static str),
    #[error("CRL issuer {issuer} is not a CA certificate of this trust bundle")]
    UnknownIssuer { issuer: String },
    #[error("CA {issuer} may not sign CRLs: its keyUsage lacks cRLSign")]
    IssuerNotCrlSigner { issuer: String },
    #[error("CRL authority key identifier does not match CA {issuer}")]
    AuthorityKeyMismatch { issuer: String },
    #[error("CRL signature algorithm is not supported for CA {issuer}'s key")]
    UnsupportedSignatureAlgorithm { issuer: String },
    #[error("CRL signature does not verify against CA {issuer}")]
    BadSignature { issuer: String },
    #[error("CRL has an unsupported critical extension {oid}")]
    UnsupportedCriticalExtension { oid: String },
    #[error("CRL extension {oid} is malformed")]
    BadExtension { oid: String },
    #[error("CRLNumber is marked critical (RFC 5280 section 5.2.3 requires non-critical)")]
    CriticalCrlNumber,
    #[error("delta CRLs are not supported")]
    DeltaCrl,
    #[error("CRL scope is not supported: {0}")]
    UnsupportedScope(&'static str),
    #[error("CRL entry for serial {serial} names another certificate issuer (indirect CRL)")]
    IndirectEntry { serial: String },
    #[error("CRL thisUpdate/nextUpdate is before 1970")]
    BadTime,
    #[error("CA certificate #{index} of the trust bundle is malformed")]
    BadCa {
        index: usize,
        #[source]
        cause: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
}

/// What the CRL loader needs to know about one CA certificate of a trust bundle, extracted once.
#[derive(Clone)]
pub struct CaKey {
    /// Subject Name, raw DER (tag included).
    subject: Box<[u8]>,
    /// Human-readable subject, for errors and status.
    subject_text: String,
    /// The SPKI AlgorithmIdentifier's content bytes (as webpki's `public_key_alg_id()` has them).
    spki_alg: Box<[u8]>,
    /// The subjectPublicKey bits.
    spki_key: Box<[u8]>,
    /// subjectKeyIdentifier, if the certificate has one.
    ski: Option<Box<[u8]>>,
    /// `Some(crl_sign)` when the certificate has a keyUsage extension.
    crl_sign: Option<bool>,
}

/// A verified CRL: issuer, dates, CRL number, and the revoked serials.
pub struct CrlSet {
    issuer: Box<[u8]>,
    issuer_text: String,
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    /// CRLNumber as big-endian bytes, leading zeros stripped.
    crl_number: Option<Box<[u8]>>,
    serials: SerialSet,
    /// The signer's `subjectKeyIdentifier`, when it had one: tells same-named CAs apart in status.
    signer_ski: Option<Box<[u8]>>,
}

/// Revoked serials, stored inline: RFC 5280 caps serials at 20 octets, so a fixed 21-byte key
/// avoids one heap allocation per entry (a million-entry CRL takes about 46 MB instead of about
/// 66 MB as `HashSet<Box<[u8]>>`). Longer, non-conforming serials go to a boxed overflow set.
#[derive(Default)]
struct SerialSet {
    inline: HashSet<InlineSerial>,
    long: HashSet<Box<[u8]>>,
}

/// A serial of at most [`INLINE_SERIAL`] bytes. Hashes and compares as the `[u8]` it holds, so
/// the set can be queried with a borrowed slice.
#[derive(Clone, Copy)]
struct InlineSerial {
    len: u8,
    bytes: [u8; INLINE_SERIAL],
}

const INLINE_SERIAL: usize = 20;

// === impl CaKey ===

impl CaKey {
    /// Extracts the CRL-signing facts from a CA certificate.
    ///
    /// # Errors
    /// [`CrlError::BadCa`] when the certificate does not parse; `index` names it in the message.
    pub fn from_der(index: usize, der: &[u8]) -> Result<Self, CrlError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|cause| CrlError::BadCa { index, cause })?;
        // The subject becomes the key CRLs are filed under; a truncated one would never match
        // the issuer the handshake path reads from a certificate (see `is_whole_tlv`).
        if !is_whole_tlv(cert.subject().as_raw()) {
            return Err(CrlError::BadCa {
                index,
                cause: x509_parser::nom::Err::Failure(
                    x509_parser::error::X509Error::InvalidX509Name,
                ),
            });
        }
        let spki = cert.public_key().raw;
        let Spki {
            alg: spki_alg,
            key: spki_key,
        } = split_spki(spki).map_err(|_| CrlError::BadCa {
            index,
            cause: x509_parser::nom::Err::Failure(x509_parser::error::X509Error::InvalidSPKI),
        })?;
        let mut ski = None;
        let mut crl_sign = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.into()),
                ParsedExtension::KeyUsage(ku) => crl_sign = Some(ku.crl_sign()),
                _ => {}
            }
        }
        Ok(Self {
            subject: cert.subject().as_raw().into(),
            subject_text: cert.subject().to_string(),
            spki_alg: spki_alg.into(),
            spki_key: spki_key.into(),
            ski,
            crl_sign,
        })
    }

    /// Extracts every certificate of a bundle; errors name the certificate's position.
    ///
    /// # Errors
    /// The first certificate that does not parse.
    pub fn from_bundle(certs: &[CertificateDer<'_>]) -> Result<Vec<Self>, CrlError> {
        certs
            .iter()
            .enumerate()
            .map(|(i, c)| Self::from_der(i, c))
            .collect()
    }

    /// The subject Name, raw DER.
    pub fn subject(&self) -> &[u8] {
        &self.subject
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey")
            .field("subject", &self.subject_text)
            .field("ski", &self.ski.as_deref().map(hex::encode))
            .field("crl_sign", &self.crl_sign)
            .finish_non_exhaustive()
    }
}

// === impl CrlSet ===

impl CrlSet {
    /// Parses every CRL in `bytes` (one DER CRL, or one or more PEM `X509 CRL` blocks) and verifies
    /// each against `cas`. All or nothing: one bad CRL refuses the whole source, so a half-applied
    /// file never weakens what was loaded before.
    ///
    /// # Errors
    /// Anything [`CrlError`] lists; the first problem found.
    pub fn parse_all(bytes: &[u8], cas: &[CaKey]) -> Result<Vec<Self>, CrlError> {
        if looks_like_pem(bytes) {
            let mut out = Vec::new();
            for item in CertificateRevocationListDer::pem_slice_iter(bytes) {
                let der = item.map_err(CrlError::Pem)?;
                out.push(Self::from_der(&der, cas)?);
            }
            if out.is_empty() {
                return Err(CrlError::Empty);
            }
            Ok(out)
        } else if bytes.is_empty() {
            Err(CrlError::Empty)
        } else {
            Ok(vec![Self::from_der(bytes, cas)?])
        }
    }

    /// Parses one DER CRL and verifies its signature against the issuing CA among `cas`.
    ///
    /// The issuing CA is the one whose subject equals the CRL issuer byte for byte (as webpki
    /// compares names), whose keyUsage (if present) allows cRLSign, and whose subjectKeyIdentifier
    /// equals the CRL's authorityKeyIdentifier when both exist. If several CAs share the name (a
    /// re-keyed CA), any of them whose key verifies the signature will do.
    ///
    /// # Errors
    /// Anything [`CrlError`] lists.
    pub fn from_der(der: &[u8], cas: &[CaKey]) -> Result<Self, CrlError> {
        let signed = split_certificate_list(der)?;
        let (rest, crl) = CertificateRevocationList::from_der(der).map_err(CrlError::Malformed)?;
        if !rest.is_empty() {
            return Err(CrlError::Framing("trailing bytes after the CRL"));
        }
        if crl.tbs_cert_list.signature != crl.signature_algorithm {
            return Err(CrlError::Framing(
                "inner and outer signature algorithms differ",
            ));
        }
        let issuer_raw = crl.issuer().as_raw();
        if !is_whole_tlv(issuer_raw) {
            return Err(CrlError::Framing("malformed issuer Name"));
        }
        let issuer_text = crl.issuer().to_string();

        let mut aki: Option<&[u8]> = None;
        let mut crl_number = None;
        for ext in crl.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|k| k.0)
                }
                ParsedExtension::CRLNumber(_) if ext.critical => {
                    return Err(CrlError::CriticalCrlNumber)
                }
                ParsedExtension::CRLNumber(n) => {
                    crl_number = Some(strip_leading_zeros(&n.to_bytes_be()).into())
                }
                ParsedExtension::IssuingDistributionPoint(idp) => {
                    if idp.indirect_crl {
                        return Err(CrlError::UnsupportedScope("indirect CRL"));
                    }
                    if idp.only_some_reasons.is_some() {
                        return Err(CrlError::UnsupportedScope("onlySomeReasons"));
                    }
                    if idp.only_contains_attribute_certs {
                        return Err(CrlError::UnsupportedScope("onlyContainsAttributeCerts"));
                    }
                    // onlyContainsUserCerts / onlyContainsCACerts narrow what the CRL covers; a
                    // serial listed in it is revoked either way, which is all a lookup asks.
                }
                _ if ext.oid == OID_X509_EXT_DELTA_CRL_INDICATOR => return Err(CrlError::DeltaCrl),
                _ => check_critical(ext)?,
            }
        }

        let signer = verify_signature(issuer_raw, &issuer_text, aki, &signed, cas)?;

        let mut serials = SerialSet::with_capacity(crl.tbs_cert_list.revoked_certificates.len());
        for entry in crl.iter_revoked_certificates() {
            for ext in entry.extensions() {
                if ext.critical {
                    // certificateIssuer (the only critical entry extension RFC 5280 defines)
                    // moves the entry to another issuer: only indirect CRLs use it.
                    return Err(CrlError::IndirectEntry {
                        serial: hex::encode(entry.raw_serial()),
                    });
                }
            }
            serials.insert(strip_leading_zeros(entry.raw_serial()));
        }

        Ok(Self {
            issuer: issuer_raw.into(),
            issuer_text,
            this_update: unix_time(crl.last_update())?,
            next_update: crl.next_update().map(unix_time).transpose()?,
            crl_number,
            serials,
            signer_ski: signer.ski.clone(),
        })
    }

    /// Whether `serial` (big-endian, leading zeros stripped) is listed. No allocation.
    #[inline]
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.serials.contains(serial)
    }

    /// Whether nextUpdate has passed at `now`. A CRL without nextUpdate never expires.
    pub fn is_expired(&self, now: UnixTime) -> bool {
        self.next_update
            .is_some_and(|next| next.as_secs() < now.as_secs())
    }

    /// The issuer Name, raw DER, as it appears in the certificates it covers.
    pub fn issuer(&self) -> &[u8] {
        &self.issuer
    }

    /// The issuer Name in RFC 4514-ish text, for logs and status.
    pub fn issuer_text(&self) -> &str {
        &self.issuer_text
    }

    /// thisUpdate.
    pub fn this_update(&self) -> UnixTime {
        self.this_update
    }

    /// nextUpdate, when present.
    pub fn next_update(&self) -> Option<UnixTime> {
        self.next_update
    }

    /// CRLNumber, big-endian, leading zeros stripped.
    pub fn crl_number(&self) -> Option<&[u8]> {
        self.crl_number.as_deref()
    }

    /// Number of revoked serials.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// The revoked serials, in no particular order.
    pub fn serials(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.serials.iter()
    }

    /// The signer's subjectKeyIdentifier, when it has one.
    pub fn signer_ski(&self) -> Option<&[u8]> {
        self.signer_ski.as_deref()
    }

    /// Whether `self` is older than `other` from the same issuer: a lower CRL number, or an
    /// earlier thisUpdate. Used to refuse a replayed old CRL (URLs are plain http).
    pub fn is_older_than(&self, other: &CrlSet) -> bool {
        match (&self.crl_number, &other.crl_number) {
            (Some(a), Some(b)) => (a.len(), &**a) < (b.len(), &**b),
            _ => self.this_update.as_secs() < other.this_update.as_secs(),
        }
    }
}

impl fmt::Debug for CrlSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrlSet")
            .field("issuer", &self.issuer_text)
            .field("this_update", &self.this_update.as_secs())
            .field("next_update", &self.next_update.map(|t| t.as_secs()))
            .field("crl_number", &self.crl_number.as_deref().map(hex::encode))
            .field("entries", &self.serials.len())
            .finish()
    }
}

// === impl SerialSet ===

impl SerialSet {
    fn with_capacity(n: usize) -> Self {
        Self {
            inline: HashSet::with_capacity(n),
            long: HashSet::new(),
        }
    }

    fn insert(&mut self, serial: &[u8]) {
        match InlineSerial::new(serial) {
            Some(s) => self.inline.insert(s),
            None => self.long.insert(serial.into()),
        };
    }

    #[inline]
    fn contains(&self, serial: &[u8]) -> bool {
        if serial.len() <= INLINE_SERIAL {
            self.inline.contains(serial)
        } else {
            self.long.contains(serial)
        }
    }

    fn len(&self) -> usize {
        self.inline.len() + self.long.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.inline
            .iter()
            .map(InlineSerial::as_slice)
            .chain(self.long.iter().map(|s| &**s))
    }
}

// === impl InlineSerial ===

impl InlineSerial {
    fn new(serial: &[u8]) -> Option<Self> {
        let len = u8::try_from(serial.len()).ok()?;
        let mut bytes = [0u8; INLINE_SERIAL];
        bytes.get_mut(..serial.len())?.copy_from_slice(serial);
        Some(Self { len, bytes })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::borrow::Borrow<[u8]> for InlineSerial {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for InlineSerial {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must equal `<[u8] as Hash>::hash` for `Borrow<[u8]>` lookups to work.
        self.as_slice().hash(state);
    }
}

impl PartialEq for InlineSerial {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for InlineSerial {}

/// Issuer Name and serial number of a DER certificate, without allocating or running x509-parser.
///
/// Returns `(issuer Name raw DER including its tag, serial big-endian with leading zeros stripped)`,
/// the exact key [`CrlSet`] and the [`super::Checker`] use. The verifier calls this on every
/// handshake for each certificate of the chain, after webpki has validated the encoding; `None` means
/// the bytes are not a certificate (treat as a verification failure).
pub fn issuer_and_serial(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (issuer, serial) = cert_issuer_and_serial(cert_der)?;
    Some((issuer, strip_leading_zeros(serial)))
}

/// Whether `raw` is exactly one complete TLV.
///
/// x509-parser stops reading a Name at the first RelativeDistinguishedName it cannot parse and
/// returns the bytes read so far from `as_raw()`, without an error. Such a truncated Name must not
/// become a lookup key: [`issuer_and_serial`] reads the whole TLV from a certificate, so a CRL
/// filed under the truncated bytes would silently never apply. Callers refuse such Names.
pub fn is_whole_tlv(raw: &[u8]) -> bool {
    is_one_tlv(raw)
}

/// Splits `CertificateList` into its signed parts: the shape of any signed structure, without
/// the trailing `[0]` certificates only a BasicOCSPResponse may carry.
fn split_certificate_list(der: &[u8]) -> Result<Signed<'_>, CrlError> {
    let signed = split_signed(der).map_err(|_| {
        CrlError::Framing("not a DER CertificateList (tbsCertList, algorithm, signature)")
    })?;
    if !signed.certs.is_empty() {
        return Err(CrlError::Framing("extra fields after signatureValue"));
    }
    Ok(signed)
}

/// Finds the CA that signed the CRL and checks the signature. Returns that CA.
fn verify_signature<'c>(
    issuer: &[u8],
    issuer_text: &str,
    aki: Option<&[u8]>,
    signed: &Signed<'_>,
    cas: &'c [CaKey],
) -> Result<&'c CaKey, CrlError> {
    let named = || issuer_text.to_owned();
    // The most specific reason any candidate failed, reported if none succeeds.
    let mut failure = CrlError::UnknownIssuer { issuer: named() };
    for ca in cas.iter().filter(|ca| *ca.subject == *issuer) {
        if ca.crl_sign == Some(false) {
            failure = CrlError::IssuerNotCrlSigner { issuer: named() };
            continue;
        }
        if let (Some(aki), Some(ski)) = (aki, ca.ski.as_deref()) {
            if aki != ski {
                failure = CrlError::AuthorityKeyMismatch { issuer: named() };
                continue;
            }
        }
        let key = Spki {
            alg: &ca.spki_alg,
            key: &ca.spki_key,
        };
        failure = match verify(&key, signed.signature_alg, signed.tbs, signed.signature) {
            Ok(()) => return Ok(ca),
            Err(SignatureError::Bad) => CrlError::BadSignature { issuer: named() },
            Err(SignatureError::Unsupported) => {
                CrlError::UnsupportedSignatureAlgorithm { issuer: named() }
            }
        };
    }
    Err(failure)
}

/// Refuses a critical CRL extension this module does not implement, and any extension x509-parser
/// could not parse (a malformed AKI or IDP must not be silently ignored).
///
/// Called for extensions the caller did not handle itself; freshestCRL is the only one of those
/// RFC 5280 lets through (it points at delta CRLs, which are merely not used here).
fn check_critical(ext: &X509Extension<'_>) -> Result<(), CrlError> {
    if let ParsedExtension::ParseError { .. } = ext.parsed_extension() {
        return Err(CrlError::BadExtension {
            oid: ext.oid.to_id_string(),
        });
    }
    if ext.critical && ext.oid != OID_X509_EXT_FRESHEST_CRL {
        return Err(CrlError::UnsupportedCriticalExtension {
            oid: ext.oid.to_id_string(),
        });
    }
    Ok(())
}

fn unix_time(t: ASN1Time) -> Result<UnixTime, CrlError> {
    let secs = u64::try_from(t.timestamp()).map_err(|_| CrlError::BadTime)?;
    Ok(UnixTime::since_unix_epoch(Duration::from_secs(secs)))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..].starts_with(b"-----BEGIN")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    struct Ca {
        cert: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, usages: Vec<KeyUsagePurpose>) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = usages;
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn crl_signing_ca(name: &str) -> Ca {
        ca(
            name,
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        )
    }

    fn leaf(ca: &Ca, serial: &[u8]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["leaf.test".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn crl(ca: &Ca, serials: &[&[u8]], number: u64) -> Vec<u8> {
        crl_object(ca, serials, number).der().to_vec()
    }

    fn crl_object(ca: &Ca, serials: &[&[u8]], number: u64) -> rcgen::CertificateRevocationList {
        let now = rcgen::date_time_ymd(2025, 1, 1);
        CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::from_secs(86_400),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
    }

    #[test]
    fn issuer_and_serial_agrees_with_x509_parser() {
        let ca = crl_signing_ca("Serial Test CA");
        let serials: [&[u8]; 6] = [
            &[0x01],
            &[0x7f, 0xff],
            &[0x80],
            &[0xff, 0x00, 0x01],
            &[0x00, 0x00, 0x42],
            &[0x9a; 20],
        ];
        for serial in serials {
            let der = leaf(&ca, serial);
            let (issuer, got) = issuer_and_serial(&der).unwrap();
            let (_, parsed) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(issuer, parsed.issuer().as_raw());
            assert_eq!(got, strip_leading_zeros(parsed.raw_serial()));
            assert_eq!(got, strip_leading_zeros(serial), "serial {serial:02x?}");
        }
        // The CA itself: a v3 self-signed certificate with the [0] version field.
        let (issuer, _) = issuer_and_serial(&ca.cert).unwrap();
        let (_, parsed) = X509Certificate::from_der(&ca.cert).unwrap();
        assert_eq!(issuer, parsed.subject().as_raw());
    }

    #[test]
    fn serial_set_handles_inline_and_overlong_serials() {
        let mut set = SerialSet::default();
        set.insert(&[]);
        set.insert(&[1; 20]);
        set.insert(&[2; 21]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(&[]) && set.contains(&[1; 20]) && set.contains(&[2; 21]));
        assert!(!set.contains(&[1; 19]) && !set.contains(&[2; 20]) && !set.contains(&[1; 21]));
        let mut all: Vec<_> = set.iter().map(<[u8]>::len).collect();
        all.sort_unstable();
        assert_eq!(all, [0, 20, 21]);
    }

    #[test]
    fn issuer_and_serial_refuses_non_certificates() {
        assert!(issuer_and_serial(b"").is_none());
        assert!(issuer_and_serial(b"\x30\x03\x02\x01\x01").is_none());
        let ca = crl_signing_ca("Truncation CA");
        let der = leaf(&ca, &[5]);
        for cut in [1, 10, 40, der.len() / 2] {
            assert!(issuer_and_serial(&der[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn crl_from_the_issuing_ca_loads_and_finds_high_bit_serials() {
        let ca = crl_signing_ca("Good CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let der = crl(&ca, &[&[0x80, 0x01], &[0x05]], 7);
        let set = CrlSet::from_der(&der, &keys).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.crl_number(), Some(&[7u8][..]));
        let revoked = leaf(&ca, &[0x80, 0x01]);
        let (issuer, serial) = issuer_and_serial(&revoked).unwrap();
        assert_eq!(issuer, set.issuer());
        assert!(set.is_revoked(serial));
        assert!(!set.is_revoked(&[0x06]));
    }

    #[test]
    fn crl_signed_by_another_key_with_the_same_name_is_refused() {
        let real = crl_signing_ca("Twin CA");
        let impostor = crl_signing_ca("Twin CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&real.cert)).unwrap();
        let der = crl(&impostor, &[&[1]], 1);
        // rcgen puts the AKI of the impostor's key, so the AKI check refuses it first.
        let err = CrlSet::from_der(&der, &keys).unwrap_err();
        assert!(
            matches!(err, CrlError::AuthorityKeyMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn crl_from_an_issuer_outside_the_bundle_is_refused() {
        let ca = crl_signing_ca("Bundle CA");
        let other = crl_signing_ca("Other CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let err = CrlSet::from_der(&crl(&other, &[], 1), &keys).unwrap_err();
        assert!(matches!(err, CrlError::UnknownIssuer { .. }), "{err:?}");
    }

    #[test]
    fn ca_without_crl_sign_may_not_sign_crls() {
        let ca = crl_signing_ca("Signer CA");
        let der = crl(&ca, &[], 1);
        // Same name and key, but a certificate whose keyUsage lacks cRLSign.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Signer CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let no_crl_sign = params.self_signed(ca.issuer.key()).unwrap();
        let keys = CaKey::from_bundle(&[no_crl_sign.der().clone()]).unwrap();
        let err = CrlSet::from_der(&der, &keys).unwrap_err();
        assert!(
            matches!(err, CrlError::IssuerNotCrlSigner { .. }),
            "{err:?}"
        );
    }

    /// Re-encodes `der` with its CRLNumber extension marked critical and signs it again with the
    /// CA's key, so only the criticality is wrong.
    fn with_critical_crl_number(ca: &Ca, der: &[u8]) -> Vec<u8> {
        use rcgen::SigningKey;
        use x509_cert::der::{Decode, Encode};
        let mut list = x509_cert::crl::CertificateList::from_der(der).unwrap();
        let exts = list.tbs_cert_list.crl_extensions.as_mut().unwrap();
        let number = exts
            .iter_mut()
            .find(|e| e.extn_id.to_string() == "2.5.29.20")
            .expect("rcgen writes a CRLNumber");
        number.critical = true;
        let tbs = list.tbs_cert_list.to_der().unwrap();
        let signature = ca.issuer.key().sign(&tbs).unwrap();
        list.signature = x509_cert::der::asn1::BitString::from_bytes(&signature).unwrap();
        list.to_der().unwrap()
    }

    #[test]
    fn a_critical_crl_number_is_refused_and_a_non_critical_one_accepted() {
        let ca = crl_signing_ca("Number CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let der = crl(&ca, &[&[1]], 4);
        assert!(CrlSet::from_der(&der, &keys).is_ok());
        let critical = with_critical_crl_number(&ca, &der);
        let err = CrlSet::from_der(&critical, &keys).unwrap_err();
        assert!(matches!(err, CrlError::CriticalCrlNumber), "{err:?}");
    }

    #[test]
    fn a_crl_x509_parser_cannot_read_is_refused_not_taken_as_empty() {
        let ca = crl_signing_ca("Garbled CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let der = crl(&ca, &[&[1]], 1);
        // Truncations keep nothing: every cut is an error, never an empty, valid set.
        for cut in [der.len() - 1, der.len() / 2, 12, 3] {
            assert!(CrlSet::parse_all(&der[..cut], &keys).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn a_name_x509_parser_reads_only_in_part_is_not_a_whole_tlv() {
        // Name { SET { C=US }, SET { an OID whose length runs past its RDN } }: x509-parser keeps
        // the first RDN and returns a raw slice shorter than the Name's own length.
        let name: &[u8] = &[
            0x30, 0x14, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'U',
            b'S', 0x31, 0x05, 0x30, 0x03, 0x06, 0x09, 0x55,
        ];
        assert!(is_whole_tlv(name));
        let (_, parsed) = x509_parser::x509::X509Name::from_der(name).unwrap();
        assert!(parsed.as_raw().len() < name.len());
        assert!(!is_whole_tlv(parsed.as_raw()));
        let ca = crl_signing_ca("Whole CA");
        let (_, cert) = X509Certificate::from_der(&ca.cert).unwrap();
        assert!(is_whole_tlv(cert.subject().as_raw()));
    }

    #[test]
    fn tampered_crl_fails_the_signature_check() {
        let ca = crl_signing_ca("Tamper CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let mut der = crl(&ca, &[&[0x11, 0x22]], 1);
        let at = der
            .windows(2)
            .position(|w| w == [0x11, 0x22])
            .expect("serial bytes in the CRL");
        der[at + 1] = 0x23;
        let err = CrlSet::from_der(&der, &keys).unwrap_err();
        assert!(matches!(err, CrlError::BadSignature { .. }), "{err:?}");
    }

    #[test]
    fn pem_and_der_give_the_same_set_and_garbage_is_refused() {
        let ca = crl_signing_ca("Pem CA");
        let keys = CaKey::from_bundle(std::slice::from_ref(&ca.cert)).unwrap();
        let object = crl_object(&ca, &[&[9]], 3);
        let der = object.der().to_vec();
        // Two PEM blocks in one file: both are loaded.
        let pem_text = object.pem().unwrap().repeat(2);
        let from_pem = CrlSet::parse_all(pem_text.as_bytes(), &keys).unwrap();
        let from_der = CrlSet::parse_all(&der, &keys).unwrap();
        assert_eq!(from_pem.len(), 2);
        assert!(from_pem[0].is_revoked(&[9]) && from_der[0].is_revoked(&[9]));
        assert!(CrlSet::parse_all(b"", &keys).is_err());
        assert!(CrlSet::parse_all(b"not a crl at all", &keys).is_err());
        assert!(CrlSet::parse_all(
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            &keys
        )
        .is_err());
    }
}
