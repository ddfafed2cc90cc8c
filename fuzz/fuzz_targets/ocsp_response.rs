//! `verify_response` on arbitrary bytes, two ways.
//!
//! Framed input (what `ocsp_seeds.py` writes from real `openssl ocsp` responses):
//!
//! ```text
//! u16 BE len | issuer DER | u16 BE len | leaf DER | u64 BE now (Unix seconds) | response DER
//! ```
//!
//! builds the request for that leaf and issuer (`PreparedRequest::new`, AIA URL first) and
//! verifies the response at that time. The seeds are validly signed, so mutations explore the
//! whole validator: signer lookup by name and key, delegated-responder checks, signature
//! algorithms, CertID matching, the time window and the status. Whatever it accepts must be
//! self-consistent: inside the time window, and naming the leaf and issuer (their CertID hashes
//! and serial, computed here independently, occur in the response).
//!
//! Every response (the whole input when it is not a frame) is also checked against a fixed
//! request for the demo partner certificate: never accepted, since nothing here is signed by the
//! demo CA's key.
//!
//! `CERTGATE_FUZZ_VERBOSE=1` prints each input's result to stderr (run the binary on seed files
//! to see how far each one gets).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use certgate::revocation::ocsp::{verify_response, PreparedRequest, CLOCK_SKEW};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha1::{Digest, Sha1};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Year 10000: later `now` values wrap, so `SystemTime` arithmetic stays in range.
const MAX_NOW: u64 = 253_402_300_800;

fn demo_request() -> &'static PreparedRequest {
    static REQ: OnceLock<PreparedRequest> = OnceLock::new();
    REQ.get_or_init(|| {
        let ca = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-ca.pem"))
            .expect("demo CA");
        let leaf = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-acme.pem"))
            .expect("demo leaf");
        PreparedRequest::new(&leaf, &ca, Some("http://ocsp.invalid/")).expect("request")
    })
}

fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("CERTGATE_FUZZ_VERBOSE").is_some())
}

struct Frame<'a> {
    issuer: &'a [u8],
    leaf: &'a [u8],
    now: SystemTime,
    response: &'a [u8],
}

fn take(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn frame(data: &[u8]) -> Option<Frame<'_>> {
    let (issuer, rest) = take(data)?;
    let (leaf, rest) = take(rest)?;
    let (now, response) = rest.split_first_chunk::<8>()?;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(*now) % MAX_NOW);
    Some(Frame {
        issuer,
        leaf,
        now,
        response,
    })
}

/// `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An OCTET STRING holding `bytes` (short form; SHA-1 hashes are 20 bytes).
fn octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut tlv = vec![0x04, bytes.len() as u8];
    tlv.extend_from_slice(bytes);
    tlv
}

fn framed(f: &Frame<'_>) {
    let request = PreparedRequest::new(f.leaf, f.issuer, None)
        .or_else(|_| PreparedRequest::new(f.leaf, f.issuer, Some("http://ocsp.invalid/")));
    let Ok(request) = request else {
        if verbose() {
            eprintln!("frame: no request: {:?}", request.err());
        }
        return;
    };
    let result = verify_response(&request, f.response, f.now);
    if verbose() {
        eprintln!("frame: {result:?}");
    }
    let Ok(verified) = result else { return };

    assert!(
        verified.this_update <= f.now + CLOCK_SKEW,
        "accepted before thisUpdate"
    );
    if let Some(next) = verified.next_update {
        assert!(next >= f.now, "accepted after nextUpdate");
    }
    // PreparedRequest::new parsed both, so x509-parser does too.
    let (_, issuer) = X509Certificate::from_der(f.issuer).expect("issuer parses");
    let (_, leaf) = X509Certificate::from_der(f.leaf).expect("leaf parses");
    let name_hash = Sha1::digest(issuer.subject().as_raw());
    let key_hash = Sha1::digest(&issuer.public_key().subject_public_key.data);
    assert!(
        contains(f.response, &octet_string(&name_hash)),
        "issuerNameHash absent"
    );
    assert!(
        contains(f.response, &octet_string(&key_hash)),
        "issuerKeyHash absent"
    );
    let serial = leaf.raw_serial();
    let mut serial_tlv = vec![0x02, serial.len() as u8];
    serial_tlv.extend_from_slice(serial);
    assert!(contains(f.response, &serial_tlv), "serial absent");
}

fuzz_target!(|data: &[u8]| {
    let frame = frame(data);
    let response = frame.as_ref().map_or(data, |f| f.response);
    // No valid signature by the demo CA can be forged by the fuzzer, so acceptance would be a bug.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let demo = verify_response(demo_request(), response, now);
    if verbose() && frame.is_none() {
        eprintln!("demo: {demo:?}");
    }
    assert!(demo.is_err());
    if let Some(f) = frame {
        framed(&f);
    }
});
