//! `verify_response` on arbitrary bytes, answering a fixed request for the demo partner
//! certificate: never panics, and never accepts (nothing here is signed by the demo CA's key).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use certgate::revocation::ocsp::{verify_response, PreparedRequest};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

fn request() -> &'static PreparedRequest {
    static REQ: OnceLock<PreparedRequest> = OnceLock::new();
    REQ.get_or_init(|| {
        let ca = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-ca.pem"))
            .expect("demo CA");
        let leaf = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-acme.pem"))
            .expect("demo leaf");
        PreparedRequest::new(&leaf, &ca, Some("http://ocsp.invalid/")).expect("request")
    })
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // No valid signature can be forged by the fuzzer, so acceptance would be a bug.
    assert!(verify_response(request(), data, now).is_err());
});
