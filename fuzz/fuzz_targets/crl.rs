//! The CRL loader on arbitrary bytes (DER or PEM), against the demo CA; and the allocation-free
//! `issuer_and_serial` reader differentially against x509-parser on the same bytes.
#![no_main]

use std::sync::OnceLock;

use certgate::revocation::{is_whole_tlv, issuer_and_serial, CaKey, CrlSet};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

fn cas() -> &'static [CaKey] {
    static CAS: OnceLock<Vec<CaKey>> = OnceLock::new();
    CAS.get_or_init(|| {
        let ca = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-ca.pem"))
            .expect("demo CA");
        CaKey::from_bundle(&[ca]).expect("demo CA key")
    })
}

fn strip(mut s: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = s {
        s = rest;
    }
    s
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sets) = CrlSet::parse_all(data, cas()) {
        for set in &sets {
            assert!(is_whole_tlv(set.issuer()));
            assert_eq!(set.len(), set.serials().count());
            for serial in set.serials() {
                assert!(set.is_revoked(serial));
            }
        }
    }
    // Where both read a certificate, they must read the same issuer and serial. The fast reader
    // may refuse more (x509-parser takes a primitive 0x10 tag for a SEQUENCE; webpki and
    // issuer_and_serial do not): a refusal there fails the handshake closed.
    if let Ok(([], cert)) = X509Certificate::from_der(data) {
        if !is_whole_tlv(cert.subject().as_raw()) {
            assert!(
                CaKey::from_der(0, data).is_err(),
                "a truncated subject became a CA key"
            );
        }
        if let Some((issuer, serial)) = issuer_and_serial(data) {
            // x509-parser returns a truncated raw Name when an RDN is malformed; the revocation
            // code refuses such names wherever it files a key (checked above for the subject).
            let raw = cert.issuer().as_raw();
            if is_whole_tlv(raw) {
                assert_eq!(issuer, raw);
            } else {
                assert!(issuer.starts_with(raw));
            }
            assert_eq!(serial, strip(cert.raw_serial()));
        }
    }
});
