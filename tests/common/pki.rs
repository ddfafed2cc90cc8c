//! A test PKI on rcgen: root → intermediate → leaf, with knobs for EKU, SANs, validity and serial.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that can issue leaves, intermediates and CRLs.
pub struct Ca {
    pub name: String,
    pub pem: String,
    /// PEM of the chain above this CA, excluding the root (what a leaf must send along).
    pub chain_pem: String,
    /// The CA's private key (PKCS#8 PEM), for the `openssl` CLI acting as this CA.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued leaf certificate.
pub struct Leaf {
    pub pem: String,
    /// Leaf followed by the intermediates that issued it.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub serial: u64,
}

pub struct LeafBuilder<'a> {
    ca: &'a Ca,
    cn: String,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: u64,
}

pub fn ca_params(name: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "certgate tests");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365);
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

impl Ca {
    pub fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            name: name.to_owned(),
            pem: cert.pem(),
            chain_pem: String::new(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(name);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            name: name.to_owned(),
            pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, cn: &str) -> LeafBuilder<'_> {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x10_0000);
        let now = OffsetDateTime::now_utc();
        LeafBuilder {
            ca: self,
            cn: cn.to_owned(),
            sans: Vec::new(),
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(30),
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        self.leaf("localhost")
            .dns("localhost")
            .dns("api.example.com")
            .ip(std::net::Ipv4Addr::LOCALHOST.into())
            .server_auth_only()
            .issue()
    }

    /// A CRL from this CA revoking `serials`.
    pub fn crl(&self, serials: &[u64], number: u64) -> String {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

impl LeafBuilder<'_> {
    pub fn dns(mut self, name: &str) -> Self {
        self.sans.push(SanType::DnsName(name.try_into().unwrap()));
        self
    }
    pub fn ip(mut self, ip: std::net::IpAddr) -> Self {
        self.sans.push(SanType::IpAddress(ip));
        self
    }
    pub fn spiffe(mut self, uri: &str) -> Self {
        self.sans.push(SanType::URI(uri.try_into().unwrap()));
        self
    }
    pub fn server_auth_only(mut self) -> Self {
        self.ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(30);
        self.not_after = now - Duration::days(1);
        self
    }
    /// Valid until `not_after` (rcgen encodes whole seconds).
    pub fn valid_until(mut self, not_after: OffsetDateTime) -> Self {
        self.not_after = not_after;
        self
    }
    pub fn serial(mut self, serial: u64) -> Self {
        self.serial = serial;
        self
    }
    pub fn issue(self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, self.cn.as_str());
        p.distinguished_name
            .push(DnType::OrganizationName, "certgate tests");
        p.subject_alt_names = self.sans;
        p.extended_key_usages = self.ekus;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.serial_number = Some(SerialNumber::from(self.serial));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.ca.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.chain_pem),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: self.serial,
        }
    }
}

impl Leaf {
    /// Writes `<name>.pem` (the chain) and `<name>-key.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.chain_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    pub fn fingerprint_hex(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.der))
    }
}

/// A client leaf made from the PEM files a partner holds: `cert` (its certificate, then the
/// chain the issuer sent with it) and `key`. Its serial is not read (0).
pub fn leaf_from_files(cert: &std::path::Path, key: &std::path::Path) -> Leaf {
    use rustls::pki_types::pem::PemObject;
    let chain_pem = std::fs::read_to_string(cert).unwrap();
    let first = chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_owned();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(first.as_bytes())
        .unwrap()
        .to_vec();
    Leaf {
        pem: first,
        chain_pem,
        key_pem: std::fs::read_to_string(key).unwrap(),
        der,
        serial: 0,
    }
}
