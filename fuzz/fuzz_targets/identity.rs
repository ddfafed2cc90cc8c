//! `PeerIdentity::from_der` on arbitrary bytes: never panics; what it returns is self-consistent.
#![no_main]

use certgate::identity::PeerIdentity;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = PeerIdentity::from_der(&CertificateDer::from(data)) {
        assert_eq!(id.fingerprint_hex().len(), 64);
        assert!(id
            .san_dns
            .iter()
            .all(|d| !d.bytes().any(|b| b.is_ascii_uppercase())));
        if let Some(spiffe) = &id.spiffe {
            assert!(id.san_uri.contains(spiffe));
        }
        assert!(id
            .serial
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()));
    }
});
