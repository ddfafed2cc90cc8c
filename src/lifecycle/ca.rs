//! The partner-issuing CA: creating or importing it, checking CSRs, and signing certificates and
//! CRLs.
//!
//! Signing goes through the [`Signer`] trait only, so the CA key can later live in an HSM or a KMS
//! (an implementation whose `sign_*` calls the device) without touching the checks or the
//! commands. [`FileSigner`] keeps the key in a 0600 PEM file in the state folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::prelude::*;

use super::registry::Identity;
use super::StateDir;

/// How long a CA made by `ca init` is valid.
const CA_VALIDITY_DAYS: i64 = 10 * 365;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: already exists; refusing to overwrite a CA", .0.display())]
    Exists(PathBuf),
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("signing failed")]
    Sign(#[source] rcgen::Error),
    #[error("the system's random source failed")]
    Random,
}

/// Why a CSR was refused. Each names what the operator must ask the partner to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("not a PKCS#10 certificate signing request (PEM or DER)")]
    Parse,
    #[error("the CSR's signature does not verify: it was not made with the key it carries, or it was altered")]
    BadSignature,
    #[error("weak key: {0}")]
    WeakKey(String),
    #[error("identity mismatch: {0}")]
    IdentityMismatch(String),
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
}

/// The CA operations the lifecycle needs. An HSM or KMS implementation signs with a key it never
/// hands out; everything else (checks, serials, validity, the registry) stays the same.
pub trait Signer: Send + Sync {
    /// The CA certificate that issued certificates chain to.
    fn certificate(&self) -> &CertificateDer<'static>;

    /// Signs a certificate for `subject_key` with `params`.
    ///
    /// # Errors
    /// The signature could not be made.
    fn sign_certificate(
        &self,
        params: &CertificateParams,
        subject_key: &SubjectPublicKeyInfo,
    ) -> Result<CertificateDer<'static>, CaError>;

    /// Signs a CRL.
    ///
    /// # Errors
    /// The signature could not be made.
    fn sign_crl(&self, params: &CertificateRevocationListParams) -> Result<Vec<u8>, CaError>;
}

/// A CA whose key is a PKCS#8 PEM file.
pub struct FileSigner {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A CSR whose signature verified and whose key is strong enough.
#[derive(Debug)]
pub struct CheckedCsr {
    pub public_key: SubjectPublicKeyInfo,
    /// `ECDSA P-256`, `RSA 3072`, …: for the event log.
    pub key: String,
}

/// How far before its issue a partner certificate's notBefore lies.
pub const LEAF_BACKDATE: ::time::Duration = ::time::Duration::minutes(1);

// === impl FileSigner ===

impl FileSigner {
    /// Loads the CA of a state folder.
    ///
    /// # Errors
    /// A file is missing or does not hold a CA certificate and its key.
    pub fn load(state: &StateDir) -> Result<Self, CaError> {
        let cert_path = state.ca_cert();
        let key_path = state.ca_key();
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Invalid {
                path: cert_path.clone(),
                reason: format!("no certificate: {e}"),
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
        Self::from_parts(cert, key, &cert_path)
    }

    fn from_parts(
        cert: CertificateDer<'static>,
        key: KeyPair,
        cert_path: &Path,
    ) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::Invalid {
            path: cert_path.to_owned(),
            reason,
        };
        let (_, parsed) =
            X509Certificate::from_der(&cert).map_err(|e| invalid(format!("not X.509: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                "the private key does not belong to this certificate".into(),
            ));
        }
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                "not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        if let Ok(Some(ku)) = parsed.key_usage() {
            if !ku.value.key_cert_sign() || !ku.value.crl_sign() {
                return Err(invalid(
                    "the CA's key usage must allow keyCertSign and cRLSign".into(),
                ));
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| invalid(format!("cannot issue with it: {e}")))?;
        Ok(Self { cert, issuer })
    }
}

impl Signer for FileSigner {
    fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    fn sign_certificate(
        &self,
        params: &CertificateParams,
        subject_key: &SubjectPublicKeyInfo,
    ) -> Result<CertificateDer<'static>, CaError> {
        params
            .signed_by(subject_key, &self.issuer)
            .map(|c| c.der().clone())
            .map_err(CaError::Sign)
    }

    fn sign_crl(&self, params: &CertificateRevocationListParams) -> Result<Vec<u8>, CaError> {
        params
            .signed_by(&self.issuer)
            .map(|c| c.der().to_vec())
            .map_err(CaError::Sign)
    }
}

/// Creates a new ECDSA P-256 CA in `state`: the key with mode 0600, then the certificate.
///
/// # Errors
/// Either file already exists, or writing failed.
pub fn init(state: &StateDir, common_name: &str) -> Result<(), CaError> {
    refuse_existing(state)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Path length 0: this CA signs partner leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - ::time::Duration::minutes(5);
    params.not_after = now + ::time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(CaError::Sign)?;
    write_ca(state, &cert.pem(), &key.serialize_pem())
}

/// Installs an existing CA (an intermediate, typically) from `cert` and `key` PEM files.
///
/// # Errors
/// Either target file exists, the inputs do not read, or the key does not match a CA certificate.
pub fn import(state: &StateDir, cert: &Path, key: &Path) -> Result<(), CaError> {
    refuse_existing(state)?;
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Invalid {
            path: cert.to_owned(),
            reason: format!("no certificate: {e}"),
        })?;
    let pair = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
        path: key.to_owned(),
        reason: format!("not a usable private key: {e}"),
    })?;
    FileSigner::from_parts(der.clone(), pair, cert)?;
    let pem = pem_of("CERTIFICATE", &der);
    write_ca(state, &pem, &key_pem)
}

fn refuse_existing(state: &StateDir) -> Result<(), CaError> {
    for path in [state.ca_cert(), state.ca_key()] {
        if path.exists() {
            return Err(CaError::Exists(path));
        }
    }
    Ok(())
}

fn write_ca(state: &StateDir, cert_pem: &str, key_pem: &str) -> Result<(), CaError> {
    let key_path = state.ca_key();
    let dir = key_path.parent().unwrap_or(state.root());
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_owned(),
        source,
    })?;
    // The key first, created 0600 and never replaced: `create_new` fails on an existing file, so
    // two racing `ca init`s cannot both write one.
    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    write_new(&state.ca_cert(), cert_pem.as_bytes(), 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CaError::Exists(path.to_owned()),
        _ => CaError::Write {
            path: path.to_owned(),
            source,
        },
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| CaError::Write {
            path: path.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A random, positive serial of 16 bytes (at least 120 random bits; RFC 5280 allows up to 20
/// octets), from the aws-lc-rs generator rustls already uses.
///
/// # Errors
/// The system's random source failed.
pub fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and of a fixed length: the top bit clear, the next one set.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// PEM text of one DER object.
pub fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Checks a CSR for `identity`: its signature verifies with the key it carries, the key is
/// strong, and every name it asks for is the partner's registered identity.
///
/// The CSR's requested extensions are never copied: the issued certificate's names, key usage
/// and constraints come from the registry alone.
///
/// # Errors
/// The first reason to refuse it.
pub fn check_csr(bytes: &[u8], identity: &Identity) -> Result<CheckedCsr, CsrError> {
    let der = csr_der(bytes);
    let (rest, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|_| CsrError::Parse)?;
    if !rest.is_empty() {
        return Err(CsrError::Parse);
    }
    let info = &csr.certification_request_info;
    // Strength first: a weak key is refused for what it is, and its signature (RSA under 2048
    // bits) would not even be checked by the verifier.
    let key = key_strength(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check_names(&csr, identity)?;
    let public_key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
    Ok(CheckedCsr { public_key, key })
}

/// A CSR given as PEM or DER, as DER.
fn csr_der(bytes: &[u8]) -> CertificateSigningRequestDer<'static> {
    match CertificateSigningRequestDer::from_pem_slice(bytes) {
        Ok(der) => der,
        Err(_) => CertificateSigningRequestDer::from(bytes.to_vec()),
    }
}

/// A CSR given as PEM or DER, as PEM: the one form the registry keeps.
pub fn csr_pem(bytes: &[u8]) -> String {
    pem_of("CERTIFICATE REQUEST", csr_der(bytes).as_ref())
}

fn key_strength(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, CsrError> {
    use x509_parser::public_key::PublicKey;
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(CsrError::WeakKey(format!(
                    "RSA {bits} bits; at least 2048 are required"
                )));
            }
            Ok(format!("RSA {bits}"))
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok("ECDSA P-256".into()),
                "1.3.132.0.34" => Ok("ECDSA P-384".into()),
                other => Err(CsrError::WeakKey(format!(
                    "elliptic curve {other} is not accepted; use P-256, P-384 or Ed25519"
                ))),
            }
        }
        _ if alg == "1.3.101.112" => Ok("Ed25519".into()),
        _ => Err(CsrError::UnsupportedKey(format!(
            "algorithm {alg}; use ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048"
        ))),
    }
}

fn check_names(csr: &X509CertificationRequest<'_>, identity: &Identity) -> Result<(), CsrError> {
    let mut sans: Vec<(&'static str, String)> = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    sans.push(match name {
                        GeneralName::URI(u) => ("uri", (*u).to_owned()),
                        GeneralName::DNSName(d) => ("dns", d.to_ascii_lowercase()),
                        other => ("other", other.to_string()),
                    });
                }
            }
        }
    }
    let cns: Vec<String> = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    let (want_kind, want) = match identity {
        Identity::Spiffe(v) => ("uri", v.clone()),
        Identity::Dns(v) => ("dns", v.to_ascii_lowercase()),
        Identity::Cn(v) => ("cn", v.clone()),
    };
    for (kind, value) in &sans {
        if *kind != want_kind || *value != want {
            return Err(CsrError::IdentityMismatch(format!(
                "the CSR asks for {kind} name `{value}`; the partner is registered as {identity}"
            )));
        }
    }
    match identity {
        Identity::Cn(v) => match cns.as_slice() {
            [cn] if cn == v => Ok(()),
            _ => Err(CsrError::IdentityMismatch(format!(
                "the CSR's subject CN is {cns:?}; the partner is registered as {identity}"
            ))),
        },
        Identity::Spiffe(_) | Identity::Dns(_) => {
            if !sans.iter().any(|(k, v)| *k == want_kind && *v == want) {
                return Err(CsrError::IdentityMismatch(format!(
                    "the CSR has no {want_kind} name `{want}` (registered as {identity})"
                )));
            }
            // A DNS partner's CN, when given, must be its name; a SPIFFE partner's subject is
            // not used (certgate writes it), but a CN naming someone else is still refused.
            match cns.as_slice() {
                [] => Ok(()),
                [cn] if cn.eq_ignore_ascii_case(&want) => Ok(()),
                [cn] if matches!(identity, Identity::Spiffe(_)) && !cn.contains(':') => {
                    Err(CsrError::IdentityMismatch(format!(
                        "the CSR's subject CN `{cn}` is not the partner's identity ({identity}); leave the CN out"
                    )))
                }
                _ => Err(CsrError::IdentityMismatch(format!(
                    "the CSR's subject CN is {cns:?}; the partner is registered as {identity}"
                ))),
            }
        }
    }
}

/// Whether an issued certificate still conforms for promotion to production: the clientAuth
/// extended key usage, an accepted key, exactly the registered identity, and at least
/// `min_days_left` days before it expires. `Ok` describes it for the event log; `Err` lists every
/// problem.
///
/// # Errors
/// Every way the certificate falls short.
pub fn conformance(
    cert_pem: &str,
    identity: &Identity,
    min_days_left: u32,
) -> Result<String, Vec<String>> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| vec![format!("not a PEM certificate: {e}")])?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| vec![format!("not X.509: {e}")])?;
    let mut problems = Vec::new();
    let client_auth = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        problems.push("no clientAuth extended key usage".to_owned());
    }
    let key = key_strength(cert.public_key()).unwrap_or_else(|e| {
        problems.push(e.to_string());
        String::new()
    });
    let names: Vec<(&'static str, String)> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => ("uri", (*u).to_owned()),
                    GeneralName::DNSName(d) => ("dns", d.to_ascii_lowercase()),
                    other => ("other", other.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let carries = match identity {
        Identity::Spiffe(v) => names == [("uri", v.clone())],
        Identity::Dns(v) => names == [("dns", v.to_ascii_lowercase())],
        Identity::Cn(v) => {
            names.is_empty()
                && cert
                    .subject()
                    .iter_common_name()
                    .filter_map(|c| c.as_str().ok())
                    .eq([v.as_str()])
        }
    };
    if !carries {
        problems.push(format!("does not carry exactly the identity {identity}"));
    }
    let left = cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc();
    if left < ::time::Duration::days(i64::from(min_days_left)) {
        problems.push(format!(
            "expires in {} days; promotion needs more than {min_days_left}",
            left.whole_days()
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "clientAuth, {key}, identity {identity}, {} days left",
            left.whole_days()
        ))
    } else {
        Err(problems)
    }
}

/// The parameters of a partner certificate: clientAuth only, the registered identity, a random
/// serial, AKI and SKI, `days` of validity from now.
pub fn leaf_params(
    partner_id: &str,
    identity: &Identity,
    days: u32,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let ia5 = |v: &str| v.parse::<rcgen::string::Ia5String>().map_err(CaError::Sign);
    match identity {
        Identity::Cn(cn) => dn.push(DnType::CommonName, cn.as_str()),
        Identity::Dns(name) => {
            dn.push(DnType::CommonName, name.as_str());
            params.subject_alt_names = vec![SanType::DnsName(ia5(name)?)];
        }
        Identity::Spiffe(uri) => {
            dn.push(DnType::OrganizationName, partner_id);
            params.subject_alt_names = vec![SanType::URI(ia5(uri)?)];
        }
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    // A minute back: a partner whose clock runs a little behind can use it at once.
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + ::time::Duration::days(i64::from(days));
    Ok(params)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A CSR for `names` (`uri:…`, `dns:…`) and an optional CN, signed with a new `alg` key.
    fn csr(alg: &'static rcgen::SignatureAlgorithm, cn: Option<&str>, names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.split_once(':') {
                Some(("uri", v)) => SanType::URI(v.try_into().unwrap()),
                Some(("dns", v)) => SanType::DnsName(v.try_into().unwrap()),
                _ => panic!("{n}"),
            })
            .collect();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    const SPIFFE: &str = "spiffe://partners.example.com/initech";

    #[test]
    fn p256_p384_and_ed25519_keys_are_accepted_and_named() {
        let id = Identity::Spiffe(SPIFFE.into());
        let uri = format!("uri:{SPIFFE}");
        for (alg, name) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384"),
            (&rcgen::PKCS_ED25519, "Ed25519"),
        ] {
            let checked = check_csr(&csr(alg, None, &[&uri]), &id).unwrap();
            assert_eq!(checked.key, name);
        }
    }

    #[test]
    fn a_curve_other_than_p256_or_p384_is_a_weak_key() {
        let id = Identity::Spiffe(SPIFFE.into());
        let uri = format!("uri:{SPIFFE}");
        let err = check_csr(&csr(&rcgen::PKCS_ECDSA_P521_SHA512, None, &[&uri]), &id).unwrap_err();
        assert!(
            matches!(err, CsrError::WeakKey(ref m) if m.contains("1.3.132.0.35")),
            "{err}"
        );
    }

    #[test]
    fn each_identity_kind_needs_exactly_its_name() {
        let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
        let cn = Identity::Cn("globex-sync".into());
        check_csr(&csr(p256, Some("globex-sync"), &[]), &cn).unwrap();
        for wrong in [
            csr(p256, Some("acme-billing"), &[]),
            csr(p256, None, &[]),
            csr(p256, Some("globex-sync"), &["dns:globex.example"]),
        ] {
            assert!(matches!(
                check_csr(&wrong, &cn),
                Err(CsrError::IdentityMismatch(_))
            ));
        }

        let dns = Identity::Dns("api.globex.example".into());
        check_csr(&csr(p256, None, &["dns:API.globex.example"]), &dns).unwrap();
        check_csr(
            &csr(
                p256,
                Some("api.globex.example"),
                &["dns:api.globex.example"],
            ),
            &dns,
        )
        .unwrap();
        for wrong in [
            csr(p256, None, &["dns:api.acme.example"]),
            csr(p256, None, &["dns:api.globex.example", "dns:other.example"]),
            csr(p256, Some("acme"), &["dns:api.globex.example"]),
        ] {
            assert!(matches!(
                check_csr(&wrong, &dns),
                Err(CsrError::IdentityMismatch(_))
            ));
        }

        let spiffe = Identity::Spiffe(SPIFFE.into());
        let uri = format!("uri:{SPIFFE}");
        for wrong in [
            csr(p256, None, &[]),
            csr(p256, Some("acme-billing"), &[&uri]),
            csr(
                p256,
                None,
                &[&uri, "uri:spiffe://partners.example.com/acme"],
            ),
        ] {
            assert!(matches!(
                check_csr(&wrong, &spiffe),
                Err(CsrError::IdentityMismatch(_))
            ));
        }
    }

    #[test]
    fn the_certificate_carries_only_what_certgate_sets() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        init(&state, "test CA").unwrap();
        assert!(matches!(init(&state, "again"), Err(CaError::Exists(_))));
        let signer = FileSigner::load(&state).unwrap();
        let id = Identity::Spiffe(SPIFFE.into());
        let checked = check_csr(
            &csr(
                &rcgen::PKCS_ECDSA_P256_SHA256,
                None,
                &[&format!("uri:{SPIFFE}")],
            ),
            &id,
        )
        .unwrap();
        let params = leaf_params("initech", &id, 30).unwrap();
        let der = signer
            .sign_certificate(&params, &checked.public_key)
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(!cert.is_ca());
        assert!(cert.raw_serial().len() >= 8);
        assert_eq!(cert.subject().to_string(), "O=initech");
        let (_, ca) = X509Certificate::from_der(signer.certificate()).unwrap();
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        let ext = |oid: &str| {
            cert.extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == oid)
        };
        assert!(ext("2.5.29.35") && ext("2.5.29.14"), "AKI and SKI");
    }
}
