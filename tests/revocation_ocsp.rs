//! OCSP for client certificates, against the real `openssl ocsp` responder logic.
//!
//! Each test builds a small PKI with rcgen, writes an `openssl ca`-style `index.txt`, and runs a
//! loopback-only HTTP server that answers every POSTed request by running
//! `openssl ocsp -index … -reqin … -respout …` (OpenSSL's own `-port` server listens on every
//! interface, so it is not used). Verdicts come from certgate's code, never from OpenSSL's
//! printed status.

// Test fixtures: a failed setup step should panic loudly, not be handled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use certgate::config::model::{Ocsp, OcspMode};
use certgate::revocation::ocsp::{
    decide, verify_response, CertKey, OcspCache, OcspError, OcspStatus, OcspVerdict,
    PreparedRequest, RefuseReason, SignerProblem,
};
use der::{Decode, Encode};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GOOD_SERIAL: &str = "1001";
const REVOKED_SERIAL: &str = "1002";
const UNKNOWN_SERIAL: &str = "1003";

// === test PKI ===

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "certgate-ocsp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Signer::Ca => ("ca.pem", "ca.key"),
            Signer::Delegated | Signer::DelegatedByKey => ("rsigner.pem", "rsigner.key"),
            Signer::DelegatedWithoutEku => ("noeku.pem", "noeku.key"),
            Signer::OtherCa => ("other-rsigner.pem", "other-rsigner.key"),
            Signer::Impostor => ("impostor.pem", "impostor.key"),
        }
    }
}

struct Pki {
    dir: TempDir,
    ca_der: Vec<u8>,
    good: Vec<u8>,
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
    /// A CA, leaves whose AIA points at `ocsp_url`, every kind of responder, and an index in which
    /// GOOD_SERIAL is valid, REVOKED_SERIAL is revoked and UNKNOWN_SERIAL is absent.
    fn new(ocsp_url: &str) -> Self {
        let dir = TempDir::new();
        let write =
            |name: &str, contents: &str| std::fs::write(dir.0.join(name), contents).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let ca_params = authority_params("certgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        write("ca.pem", &ca_cert.pem());
        write("ca.key", &ca_key.serialize_pem());
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
            params.signed_by(&key, &ca).unwrap().der().to_vec()
        };
        let good = leaf(GOOD_SERIAL, true);
        let revoked = leaf(REVOKED_SERIAL, true);
        let unknown = leaf(UNKNOWN_SERIAL, true);
        let no_aia = leaf("1004", false);

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

        let pki = Self {
            dir,
            ca_der: ca_cert.der().to_vec(),
            good,
            revoked,
            unknown,
            no_aia,
        };
        pki.write_index(&[REVOKED_SERIAL]);
        pki
    }

    /// Writes index.txt: GOOD_SERIAL and the no-AIA leaf valid, `revoked` revoked.
    fn write_index(&self, revoked: &[&str]) {
        let mut index = String::new();
        for serial in [GOOD_SERIAL, REVOKED_SERIAL, "1004"] {
            if revoked.contains(&serial) {
                index.push_str(&format!(
                    "R\t301231235959Z\t240101000000Z\t{serial}\tunknown\t/CN=client {serial}\n"
                ));
            } else {
                index.push_str(&format!(
                    "V\t301231235959Z\t\t{serial}\tunknown\t/CN=client {serial}\n"
                ));
            }
        }
        std::fs::write(self.dir.0.join("index.txt"), index).unwrap();
    }
}

// === loopback OCSP responder ===

struct Responder {
    url: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ResponderState {
    dir: PathBuf,
    signer: Signer,
    delay: Duration,
    requests: Arc<AtomicUsize>,
    next_file: AtomicUsize,
}

/// A bound loopback listener, so certificates can name its URL before the server runs.
async fn loopback() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ocsp", listener.local_addr().unwrap());
    (listener, url)
}

fn serve(listener: TcpListener, pki: &Pki, signer: Signer, delay: Duration) -> Responder {
    let url = format!("http://{}/ocsp", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(ResponderState {
        dir: pki.dir.0.clone(),
        signer,
        delay,
        requests: Arc::clone(&requests),
        next_file: AtomicUsize::new(0),
    });
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(answer(socket, Arc::clone(&state)));
        }
    });
    Responder {
        url,
        requests,
        task,
    }
}

/// Reads one HTTP/1.1 POST, answers it with `openssl ocsp`, closes the connection.
async fn answer(mut socket: TcpStream, state: Arc<ResponderState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_start = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
    assert!(head.starts_with("post "), "responder got {head:?}");
    assert!(head.contains("content-type: application/ocsp-request"));
    let len: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < body_start + len {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = buf[body_start..body_start + len].to_vec();
    state.requests.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(state.delay).await;

    let state2 = Arc::clone(&state);
    let response = tokio::task::spawn_blocking(move || run_openssl(&state2, &request))
        .await
        .unwrap();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        response.len()
    )
    .into_bytes();
    out.extend_from_slice(&response);
    let _ = socket.write_all(&out).await;
    let _ = socket.shutdown().await;
}

fn run_openssl(state: &ResponderState, request: &[u8]) -> Vec<u8> {
    let n = state.next_file.fetch_add(1, Ordering::SeqCst);
    let req = state.dir.join(format!("req-{n}.der"));
    let resp = state.dir.join(format!("resp-{n}.der"));
    std::fs::write(&req, request).unwrap();
    let (cert, key) = state.signer.files();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(&state.dir).args([
        "ocsp",
        "-index",
        "index.txt",
        "-CA",
        "ca.pem",
        "-rsigner",
        cert,
        "-rkey",
        key,
        "-ndays",
        "1",
    ]);
    if matches!(state.signer, Signer::DelegatedByKey) {
        cmd.arg("-resp_key_id");
    }
    cmd.arg("-reqin").arg(&req).arg("-respout").arg(&resp);
    let output = cmd.output().expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl ocsp failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&resp).unwrap()
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
async fn setup(signer: Signer, delay: Duration) -> (Pki, Responder) {
    let (listener, url) = loopback().await;
    let pki = Pki::new(&url);
    let responder = serve(listener, &pki, signer, delay);
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
    let (listener, url) = loopback().await;
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
    assert_eq!(responder.requests.load(Ordering::SeqCst), 1);
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

    assert_eq!(responder.requests.load(Ordering::SeqCst), 1);
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
    assert_eq!(responder.requests.load(Ordering::SeqCst), 1);
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
    pki.write_index(&[REVOKED_SERIAL, GOOD_SERIAL]);

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
    assert_eq!(responder.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_configured_responder_overrides_the_aia_url() {
    let (pki, responder) = setup(Signer::Delegated, Duration::ZERO).await;
    let cache = OcspCache::new(&config(OcspMode::HardFail, Some(&responder.url)));
    let result = cache.query(&pki.no_aia, &pki.ca_der).await;
    assert_eq!(result.ok(), Some(OcspStatus::Good));
    assert_eq!(responder.requests.load(Ordering::SeqCst), 1);
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
    let path: &Path = &pki.dir.0.join("ours.der");
    std::fs::write(path, request.body()).unwrap();
    let output = Command::new("openssl")
        .args(["ocsp", "-req_text", "-reqin"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
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
    let state = ResponderState {
        dir: pki.dir.0.clone(),
        signer: Signer::Ca,
        delay: Duration::ZERO,
        requests: Arc::default(),
        next_file: AtomicUsize::new(0),
    };
    let response = run_openssl(&state, request.body());
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
