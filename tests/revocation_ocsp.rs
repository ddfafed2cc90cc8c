//! OCSP for client certificates, against the real `openssl ocsp` responder logic.
//!
//! Each test builds a small PKI with rcgen, records its leaves in `openssl ca`'s database, and
//! runs a loopback-only HTTP server that answers every POSTed request by running
//! `openssl ocsp -index … -reqin … -respout …` (tests/common/openssl.rs; OpenSSL's own `-port`
//! server listens on every interface, so it is not used). Verdicts come from certgate's code,
//! never from OpenSSL's printed status.

// Test fixtures: a failed setup step should panic loudly, not be handled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use certgate::config::model::{Ocsp, OcspMode};
use certgate::revocation::ocsp::{
    decide, verify_response, CertKey, OcspCache, OcspError, OcspStatus, OcspVerdict,
    PreparedRequest, RefuseReason, SignerProblem,
};
use common::openssl::{ocsp_listener, openssl, OcspResponder, OcspSigner, OpenSslCa};
use der::{Decode, Encode};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SerialNumber,
};

const GOOD_SERIAL: &str = "1001";
const REVOKED_SERIAL: &str = "1002";
const UNKNOWN_SERIAL: &str = "1003";

// === test PKI (the openssl CA and responder are tests/common/openssl.rs) ===

/// Who signs the responder's answers.
#[derive(Clone, Copy, Debug)]
enum Signer {
    /// The CA itself.
    Ca,
    /// A certificate issued by the CA with the OCSPSigning EKU.
    Delegated,
    /// Same, with the responder identified by key hash instead of name.
    DelegatedByKey,
    /// Issued by the CA but without the OCSPSigning EKU.
    DelegatedWithoutEku,
    /// Issued by another CA, with the OCSPSigning EKU.
    OtherCa,
    /// Self-signed, carrying the CA's own name, with the OCSPSigning EKU.
    Impostor,
}

impl Signer {
    /// The files [`Pki::new`] wrote for this signer.
    fn signing(self) -> OcspSigner {
        let (cert, key) = match self {
            Signer::Ca => return OcspSigner::CA,
            Signer::Delegated | Signer::DelegatedByKey => ("rsigner.pem", "rsigner.key"),
            Signer::DelegatedWithoutEku => ("noeku.pem", "noeku.key"),
            Signer::OtherCa => ("other-rsigner.pem", "other-rsigner.key"),
            Signer::Impostor => ("impostor.pem", "impostor.key"),
        };
        OcspSigner {
            cert,
            key,
            by_key_id: matches!(self, Signer::DelegatedByKey),
        }
    }
}

struct Pki {
    /// `openssl ca` acting for the CA: its folder holds the responders' certificates and keys.
    ca: OpenSslCa,
    ca_der: Vec<u8>,
    good: Vec<u8>,
    /// The good leaf in PEM, to revoke it later.
    good_pem: String,
    revoked: Vec<u8>,
    unknown: Vec<u8>,
    no_aia: Vec<u8>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn serial(hex_serial: &str) -> SerialNumber {
    SerialNumber::from(hex::decode(hex_serial).unwrap())
}

/// DER of an AuthorityInfoAccess with one OCSP URL.
fn aia_ocsp(url: &str) -> CustomExtension {
    let mut description = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    description.extend_from_slice(&[0x86, u8::try_from(url.len()).unwrap()]);
    description.extend_from_slice(url.as_bytes());
    let mut access = vec![0x30, u8::try_from(description.len()).unwrap()];
    access.extend_from_slice(&description);
    let mut aia = vec![0x30, u8::try_from(access.len()).unwrap()];
    aia.extend_from_slice(&access);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], aia)
}

fn authority_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

fn responder_params(name: &str, eku: bool) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(name);
    if eku {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    }
    params
}

impl Pki {
    /// A CA, leaves whose AIA points at `ocsp_url`, every kind of responder, and a CA database in
    /// which GOOD_SERIAL is valid, REVOKED_SERIAL is revoked and UNKNOWN_SERIAL is absent.
    fn new(ocsp_url: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let ca_params = authority_params("certgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let openssl_ca = OpenSslCa::from_pem(&ca_cert.pem(), &ca_key.serialize_pem());
        let write = |name: &str, contents: &str| {
            std::fs::write(openssl_ca.dir().join(name), contents).unwrap();
        };
        let ca = Issuer::new(ca_params, ca_key);

        let leaf = |serial_hex: &str, with_aia: bool| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
            params.distinguished_name = dn(&format!("client {serial_hex}"));
            params.serial_number = Some(serial(serial_hex));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if with_aia {
                params.custom_extensions.push(aia_ocsp(ocsp_url));
            }
            params.signed_by(&key, &ca).unwrap()
        };
        let good = leaf(GOOD_SERIAL, true);
        let revoked = leaf(REVOKED_SERIAL, true);
        let unknown = leaf(UNKNOWN_SERIAL, true);
        let no_aia = leaf("1004", false);
        openssl_ca.valid(good.pem().as_str());
        openssl_ca.revoke(revoked.pem().as_str());
        openssl_ca.valid(no_aia.pem().as_str());

        let issue = |params: CertificateParams, issuer: &Issuer<'_, KeyPair>, stem: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{stem}.pem"), &cert.pem());
            write(&format!("{stem}.key"), &key.serialize_pem());
        };
        issue(
            responder_params("certgate OCSP responder", true),
            &ca,
            "rsigner",
        );
        issue(
            responder_params("certgate no-EKU responder", false),
            &ca,
            "noeku",
        );

        let other_key = KeyPair::generate().unwrap();
        let other_params = authority_params("some other CA");
        other_params.self_signed(&other_key).unwrap();
        let other = Issuer::new(other_params, other_key);
        issue(
            responder_params("other OCSP responder", true),
            &other,
            "other-rsigner",
        );

        let impostor_key = KeyPair::generate().unwrap();
        let impostor = responder_params("certgate test CA", true)
            .self_signed(&impostor_key)
            .unwrap();
        write("impostor.pem", &impostor.pem());
        write("impostor.key", &impostor_key.serialize_pem());

        Self {
            ca: openssl_ca,
            ca_der: ca_cert.der().to_vec(),
            good: good.der().to_vec(),
            good_pem: good.pem(),
            revoked: revoked.der().to_vec(),
            unknown: unknown.der().to_vec(),
            no_aia: no_aia.der().to_vec(),
        }
    }
}

// === helpers ===

fn config(mode: OcspMode, responder: Option<&str>) -> Ocsp {
    Ocsp {
        mode,
        responder: responder.map(str::to_owned),
        timeout: Duration::from_secs(5),
        max_cache_age: Duration::from_secs(3600),
    }
}

/// A PKI whose leaves point at a responder signing with `signer`.
async fn setup(signer: Signer, delay: Duration) -> (Pki, OcspResponder) {
    let (listener, url) = ocsp_listener().await;
    let pki = Pki::new(&url);
    let responder = OcspResponder::serve(listener, &pki.ca, signer.signing(), delay);
    (pki, responder)
}

async fn query_with(signer: Signer, leaf: fn(&Pki) -> &[u8]) -> Result<OcspStatus, OcspError> {
    let (pki, _responder) = setup(signer, Duration::ZERO).await;
    let cache = OcspCache::new(&config(OcspMode::HardFail, None));
    cache.query(leaf(&pki), &pki.ca_der).await
}

fn good(pki: &Pki) -> &[u8] {
    &pki.good
}

/// (issuer DN, serial) as the revocation hook reports them.
type IssuerAndSerial = (Vec<u8>, Vec<u8>);

// === tests ===

#[tokio::test]
async fn a_valid_certificate_is_good_and_allowed() {
    let result = query_with(Signer::Delegated, good).await;
    assert_eq!(result.as_ref().ok(), Some(&OcspStatus::Good), "{result:?}");
    assert_eq!(decide(OcspMode::HardFail, &result), OcspVerdict::Allow);
    assert_eq!(decide(OcspMode::SoftFail, &result), OcspVerdict::Allow);
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_in_both_modes() {
    let result = query_with(Signer::Delegated, |pki| &pki.revoked).await;
    assert_eq!(
        result.as_ref().ok(),
        Some(&OcspStatus::Revoked),
        "{result:?}"
    );
    let refused = OcspVerdict::Refuse(RefuseReason::Revoked);
    assert_eq!(decide(OcspMode::HardFail, &result), refused);
    assert_eq!(decide(OcspMode::SoftFail, &result), refused);
    assert_eq!(decide(OcspMode::Off, &result), OcspVerdict::Allow);
}

#[tokio::test]
async fn a_serial_missing_from_the_index_is_unknown() {
    let result = query_with(Signer::Delegated, |pki| &pki.unknown).await;
    assert_eq!(
        result.as_ref().ok(),
        Some(&OcspStatus::Unknown),
        "{result:?}"
    );
    assert_eq!(
        decide(OcspMode::HardFail, &result),
        OcspVerdict::Refuse(RefuseReason::Unknown)
    );
    assert_eq!(decide(OcspMode::SoftFail, &result), OcspVerdict::Allow);
}

#[tokio::test]
async fn a_response_signed_by_the_ca_itself_is_accepted() {
    let result = query_with(Signer::Ca, good).await;
    assert_eq!(result.ok(), Some(OcspStatus::Good));
    let result = query_with(Signer::Ca, |pki| &pki.revoked).await;
    assert_eq!(result.ok(), Some(OcspStatus::Revoked));
}

#[tokio::test]
async fn a_delegated_responder_named_by_key_hash_is_accepted() {
    let result = query_with(Signer::DelegatedByKey, good).await;
    assert_eq!(result.ok(), Some(OcspStatus::Good));
}

#[tokio::test]
async fn a_responder_issued_by_another_ca_is_rejected() {
    let result = query_with(Signer::OtherCa, |pki| &pki.revoked).await;
    assert!(
        matches!(
            result,
            Err(OcspError::UnauthorizedSigner(
                SignerProblem::NotIssuedByIssuer
            ))
        ),
        "{result:?}"
    );
    assert_eq!(
        decide(OcspMode::HardFail, &result),
        OcspVerdict::Refuse(RefuseReason::Unknown)
    );
}

#[tokio::test]
async fn a_self_signed_responder_using_the_ca_name_is_rejected() {
    let result = query_with(Signer::Impostor, good).await;
    assert!(matches!(result, Err(OcspError::BadSignature)), "{result:?}");
}

#[tokio::test]
async fn a_delegated_responder_without_ocsp_signing_is_rejected() {
    let result = query_with(Signer::DelegatedWithoutEku, good).await;
    assert!(
        matches!(
            result,
            Err(OcspError::UnauthorizedSigner(
                SignerProblem::NoOcspSigningEku
            ))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_responder_that_is_down_refuses_under_hard_fail_and_allows_under_soft_fail() {
    let (listener, url) = ocsp_listener().await;
    let pki = Pki::new(&url);
    drop(listener); // nothing listens on the leaf's OCSP URL any more

    let cache = OcspCache::new(&config(OcspMode::HardFail, None));
    let started = Instant::now();
    let result = cache.query(&pki.good, &pki.ca_der).await;
    assert!(matches!(result, Err(OcspError::Http(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache.errors(), 1);

    assert_eq!(
        cache.decide(OcspMode::HardFail, &result),
        OcspVerdict::Refuse(RefuseReason::Unknown)
    );
    assert_eq!(cache.soft_fail_allowed(), 0);
    assert_eq!(
        cache.decide(OcspMode::SoftFail, &result),
        OcspVerdict::Allow
    );
    assert_eq!(
        cache.decide(OcspMode::SoftFail, &result),
        OcspVerdict::Allow
    );
    assert_eq!(cache.soft_fail_allowed(), 2);

    // Errors are not cached: the next query asks again.
    let again = cache.query(&pki.good, &pki.ca_der).await;
    assert!(again.is_err());
    assert_eq!(cache.queries_sent(), 2);
}

#[tokio::test]
async fn a_slow_responder_fails_within_the_timeout() {
    let (pki, responder) = setup(Signer::Delegated, Duration::from_secs(3)).await;
    let timeout = Duration::from_millis(300);
    let cache = OcspCache::new(&Ocsp {
        timeout,
        ..config(OcspMode::HardFail, None)
    });
    let started = Instant::now();
    let result = cache.query(&pki.good, &pki.ca_der).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(OcspError::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(responder.requests(), 1);
}

#[tokio::test]
async fn a_cached_answer_avoids_a_second_query() {
    let (pki, responder) = setup(Signer::Delegated, Duration::ZERO).await;
    let cache = OcspCache::new(&config(OcspMode::HardFail, None));
    let key = CertKey::from_leaf_der(&pki.good).unwrap();
    assert_eq!(cache.cached(&key, Instant::now()), None);

    assert_eq!(
        cache.query(&pki.good, &pki.ca_der).await.ok(),
        Some(OcspStatus::Good)
    );
    assert_eq!(
        cache.query(&pki.good, &pki.ca_der).await.ok(),
        Some(OcspStatus::Good)
    );
    assert_eq!(cache.cached(&key, Instant::now()), Some(OcspStatus::Good));

    assert_eq!(responder.requests(), 1);
    assert_eq!(cache.queries_sent(), 1);
    assert_eq!(cache.cache_hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_for_one_certificate_share_one_request() {
    let (pki, responder) = setup(Signer::Delegated, Duration::from_millis(300)).await;
    let pki = Arc::new(pki);
    let cache = OcspCache::new(&config(OcspMode::HardFail, None));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            let pki = Arc::clone(&pki);
            tokio::spawn(async move { cache.query(&pki.revoked, &pki.ca_der).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().ok(), Some(OcspStatus::Revoked));
    }
    assert_eq!(responder.requests(), 1);
    assert_eq!(cache.queries_sent(), 1);
}

#[tokio::test]
async fn an_entry_expires_at_next_update_or_max_cache_age_whichever_is_first() {
    // `-ndays 1`: nextUpdate is a day after thisUpdate.
    let (pki, _responder) = setup(Signer::Delegated, Duration::ZERO).await;
    let key = CertKey::from_leaf_der(&pki.good).unwrap();
    let hour = Duration::from_secs(3600);

    let short = OcspCache::new(&Ocsp {
        max_cache_age: hour,
        ..config(OcspMode::HardFail, None)
    });
    short.query(&pki.good, &pki.ca_der).await.unwrap();
    let now = Instant::now();
    assert_eq!(
        short.cached(&key, now + Duration::from_secs(59 * 60)),
        Some(OcspStatus::Good)
    );
    assert_eq!(
        short.cached(&key, now + hour + Duration::from_secs(60)),
        None
    );

    let long = OcspCache::new(&Ocsp {
        max_cache_age: 7 * 24 * hour,
        ..config(OcspMode::HardFail, None)
    });
    long.query(&pki.good, &pki.ca_der).await.unwrap();
    let now = Instant::now();
    assert_eq!(long.cached(&key, now + 23 * hour), Some(OcspStatus::Good));
    assert_eq!(long.cached(&key, now + 25 * hour), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_reports_a_newly_revoked_certificate() {
    let (pki, responder) = setup(Signer::Delegated, Duration::ZERO).await;
    let cache = OcspCache::new(&Ocsp {
        max_cache_age: Duration::from_secs(2),
        ..config(OcspMode::HardFail, None)
    });
    let reported: Arc<Mutex<Vec<IssuerAndSerial>>> = Arc::default();
    let sink = Arc::clone(&reported);
    cache.set_on_revoked(move |revoked| {
        sink.lock()
            .unwrap()
            .push((revoked.issuer_dn.to_vec(), revoked.serial.to_vec()));
    });
    let refresher = cache.spawn_refresher(Duration::from_millis(100));

    let key = CertKey::from_leaf_der(&pki.good).unwrap();
    assert_eq!(
        cache.query(&pki.good, &pki.ca_der).await.ok(),
        Some(OcspStatus::Good)
    );
    pki.ca.revoke(pki.good_pem.as_str());

    // Refreshed in the last 20 % of its 2 s life, i.e. about 1.6 s after the query.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reported.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refresher.abort();

    let reported = reported.lock().unwrap().clone();
    let leaf = x509_parser::parse_x509_certificate(&pki.good).unwrap().1;
    assert_eq!(
        reported,
        vec![(leaf.issuer().as_raw().to_vec(), leaf.raw_serial().to_vec())]
    );
    assert_eq!(
        cache.cached(&key, Instant::now()),
        Some(OcspStatus::Revoked)
    );
    assert_eq!(responder.requests(), 2);
}

#[tokio::test]
async fn the_configured_responder_overrides_the_aia_url() {
    let (pki, responder) = setup(Signer::Delegated, Duration::ZERO).await;
    let cache = OcspCache::new(&config(OcspMode::HardFail, Some(&responder.url)));
    let result = cache.query(&pki.no_aia, &pki.ca_der).await;
    assert_eq!(result.ok(), Some(OcspStatus::Good));
    assert_eq!(responder.requests(), 1);
}

#[test]
fn requests_need_an_http_responder_and_the_right_issuer() {
    let pki = Pki::new("http://127.0.0.1:9/ocsp");
    let no_url = PreparedRequest::new(&pki.no_aia, &pki.ca_der, None);
    assert!(matches!(no_url, Err(OcspError::NoResponder)), "{no_url:?}");

    let https = PreparedRequest::new(&pki.good, &pki.ca_der, Some("https://ocsp.example/"));
    assert!(
        matches!(https, Err(OcspError::UnsupportedUrl { .. })),
        "{https:?}"
    );

    let wrong_issuer = PreparedRequest::new(&pki.good, &pki.good, None);
    assert!(
        matches!(wrong_issuer, Err(OcspError::IssuerMismatch)),
        "{wrong_issuer:?}"
    );

    let garbage = PreparedRequest::new(b"not a certificate", &pki.ca_der, None);
    assert!(
        matches!(garbage, Err(OcspError::Certificate { .. })),
        "{garbage:?}"
    );

    let request = PreparedRequest::new(&pki.good, &pki.ca_der, None).unwrap();
    assert_eq!(request.url().to_string(), "http://127.0.0.1:9/ocsp");
    assert_eq!(request.key(), CertKey::from_leaf_der(&pki.good).unwrap());
}

#[test]
fn openssl_reads_our_request_as_asking_for_the_leaf_serial() {
    let pki = Pki::new("http://127.0.0.1:9/ocsp");
    let request = PreparedRequest::new(&pki.good, &pki.ca_der, None).unwrap();
    std::fs::write(pki.ca.dir().join("ours.der"), request.body()).unwrap();
    let text = openssl(pki.ca.dir(), &["ocsp", "-req_text", "-reqin", "ours.der"]);
    assert!(text.contains("Hash Algorithm: sha1"), "{text}");
    assert!(
        text.contains(&format!("Serial Number: {GOOD_SERIAL}")),
        "{text}"
    );
}

#[test]
fn a_response_is_checked_for_freshness_and_integrity() {
    let pki = Pki::new("http://127.0.0.1:9/ocsp");
    let request = PreparedRequest::new(&pki.good, &pki.ca_der, None).unwrap();
    let response = pki.ca.ocsp_response(request.body(), &Signer::Ca.signing());
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);

    let verified = verify_response(&request, &response, now).unwrap();
    assert_eq!(verified.status, OcspStatus::Good);
    let next_update = verified.next_update.unwrap();
    assert!(next_update > now + day - Duration::from_secs(60));

    // Past nextUpdate (-ndays 1): stale.
    let stale = verify_response(&request, &response, now + day + Duration::from_secs(60));
    assert!(matches!(stale, Err(OcspError::Expired)), "{stale:?}");
    // thisUpdate more than the allowed skew ahead of our clock.
    let early = verify_response(&request, &response, now - Duration::from_secs(3600));
    assert!(matches!(early, Err(OcspError::NotYetValid)), "{early:?}");
    // Within the skew is fine.
    let skewed = verify_response(&request, &response, now - Duration::from_secs(60));
    assert!(skewed.is_ok(), "{skewed:?}");

    // Drop nextUpdate (as if to make the answer last forever): the signature no longer fits.
    let mut outer = x509_ocsp::OcspResponse::from_der(&response).unwrap();
    let bytes = outer.response_bytes.as_mut().unwrap();
    let mut basic = x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    // Re-encoding alone changes nothing: the failure below is the edit's doing.
    bytes.response = der::asn1::OctetString::new(basic.to_der().unwrap()).unwrap();
    assert!(verify_response(&request, &outer.to_der().unwrap(), now).is_ok());
    let bytes = outer.response_bytes.as_mut().unwrap();
    basic.tbs_response_data.responses[0].next_update = None;
    bytes.response = der::asn1::OctetString::new(basic.to_der().unwrap()).unwrap();
    let tampered = verify_response(&request, &outer.to_der().unwrap(), now);
    assert!(
        matches!(tampered, Err(OcspError::BadSignature)),
        "{tampered:?}"
    );

    // An answer about another certificate does not answer ours.
    let other = PreparedRequest::new(&pki.revoked, &pki.ca_der, None).unwrap();
    let mismatch = verify_response(&other, &response, now);
    assert!(
        matches!(mismatch, Err(OcspError::NoMatchingResponse)),
        "{mismatch:?}"
    );

    let garbage = verify_response(&request, b"\x30\x03\x0a\x01\x00", now);
    assert!(matches!(garbage, Err(OcspError::NotBasic)), "{garbage:?}");
    let try_later = verify_response(&request, b"\x30\x03\x0a\x01\x03", now);
    assert!(
        matches!(try_later, Err(OcspError::ResponseStatus(_))),
        "{try_later:?}"
    );
}
