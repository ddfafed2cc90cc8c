//! `lifecycle::ca::check_csr` on arbitrary bytes, as `partner issue` and the enrolment API call
//! it: never panics; whatever it accepts, x509-parser independently reads as a CSR whose
//! signature verifies and whose names are exactly the registered identity; PEM and DER of the
//! same request get the same verdict.
#![no_main]

use certgate::lifecycle::ca::{check_csr, csr_pem};
use certgate::lifecycle::Identity;
use libfuzzer_sys::fuzz_target;
use x509_parser::prelude::*;

const SPIFFE: &str = "spiffe://partners.example.com/initech";
const DNS: &str = "api.initech.example";
const CN: &str = "initech-sync";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the identity the CSR is checked against; the rest is the CSR.
    let Some((&pick, csr)) = data.split_first() else {
        return;
    };
    let identity = match pick % 3 {
        0 => Identity::Spiffe(SPIFFE.into()),
        1 => Identity::Dns(DNS.into()),
        _ => Identity::Cn(CN.into()),
    };
    let verdict = check_csr(csr, &identity);
    let Ok(checked) = verdict else {
        return;
    };
    assert!(
        ["ECDSA P-256", "ECDSA P-384", "Ed25519"].contains(&checked.key.as_str())
            || checked.key.starts_with("RSA "),
        "{}",
        checked.key
    );

    // Accepted input as PEM: the same verdict through the PEM path.
    let pem = csr_pem(csr);
    let again = check_csr(pem.as_bytes(), &identity).map(|c| c.key);
    assert_eq!(again.as_deref().ok(), Some(checked.key.as_str()));
    if !csr.starts_with(b"-----") {
        let der = csr;

        // Independently: one DER CSR, nothing after it, a signature that verifies.
        let (rest, parsed) = X509CertificationRequest::from_der(der).expect("accepted CSR parses");
        assert!(rest.is_empty());
        assert!(parsed.verify_signature().is_ok());
        let mut names = Vec::new();
        for ext in parsed.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    names.push(match name {
                        GeneralName::URI(u) => format!("uri:{u}"),
                        GeneralName::DNSName(d) => format!("dns:{}", d.to_ascii_lowercase()),
                        other => format!("other:{other}"),
                    });
                }
            }
        }
        let cns: Vec<String> = parsed
            .certification_request_info
            .subject
            .iter_common_name()
            .filter_map(|c| c.as_str().ok().map(str::to_owned))
            .collect();
        match &identity {
            Identity::Spiffe(v) => {
                assert!(names.iter().all(|n| *n == format!("uri:{v}")), "{names:?}");
                assert!(!names.is_empty());
            }
            Identity::Dns(v) => {
                assert!(names.iter().all(|n| *n == format!("dns:{v}")), "{names:?}");
                assert!(!names.is_empty());
            }
            Identity::Cn(v) => {
                assert!(names.is_empty(), "{names:?}");
                assert_eq!(cns, [v.clone()]);
            }
        }
    }
});
