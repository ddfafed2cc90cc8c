//! CRL revocation against real material: the `openssl ca` command is the CRL authority.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certgate::config::model::{BundleId, CrlExpiredPolicy, CrlSource, TrustBundle};
use certgate::revocation::{
    issuer_and_serial, BundleSpec, Checker, CrlError, FetchOptions, LoadFailure, Registry,
    Revocation, Verdict,
};
use common::openssl::{replace_by_rename, CrlServer, IssuedLeaf, OpenSslCa};
use common::{dead_url, eventually, Ca};
use rustls::CertificateError;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;

// === helpers (the openssl CA is tests/common/openssl.rs) ===

fn checker(ca: &OpenSslCa, crls: Vec<CrlSource>, policy: CrlExpiredPolicy) -> Arc<Checker> {
    Arc::new(
        Checker::new(
            vec![
                BundleSpec {
                    name: "partners".into(),
                    cas: ca.ca_der(),
                    crls,
                    crl_expired: policy,
                },
                BundleSpec {
                    name: "no-crl".into(),
                    cas: ca.ca_der(),
                    crls: vec![],
                    crl_expired: CrlExpiredPolicy::Reject,
                },
            ],
            Registry::new(),
        )
        .unwrap(),
    )
}

const B: BundleId = BundleId(0);
const NO_CRL: BundleId = BundleId(1);

fn verdict(checker: &Checker, leaf: &IssuedLeaf) -> Verdict {
    checker.check(B, &leaf.issuer, &leaf.serial, UnixTime::now())
}

fn file_source(path: &Path) -> CrlSource {
    CrlSource::File(path.to_path_buf())
}

// === verdicts ===

#[tokio::test]
async fn revoked_serial_is_revoked_and_other_serials_are_good_from_pem_and_der() {
    // Serials with the high bit set: DER pads them with 0x00, the lookup key does not.
    let ca = OpenSslCa::generate("Partner CA", "80000000000000A0");
    let bad = ca.issue();
    let good = ca.issue();
    assert_eq!(bad.serial[0] & 0x80, 0x80);
    ca.revoke(&bad);

    for (name, bytes) in [("crl.pem", ca.crl(&[])), ("crl.der", ca.crl_der())] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let checker = checker(&ca, vec![file_source(&path)], CrlExpiredPolicy::Reject);

        assert_eq!(verdict(&checker, &bad), Verdict::Unknown, "before any load");
        let problems = checker.load_initial(&FetchOptions::default()).await;
        assert!(problems.is_empty(), "{problems:?}");

        assert_eq!(verdict(&checker, &bad), Verdict::Revoked, "{name}");
        assert_eq!(verdict(&checker, &good), Verdict::Good, "{name}");
        let now = UnixTime::now();
        assert_eq!(
            checker.check(NO_CRL, &bad.issuer, &bad.serial, now),
            Verdict::NotChecked
        );
        assert_eq!(
            checker.check(BundleId(9), &bad.issuer, &bad.serial, now),
            Verdict::Unknown
        );
        // An issuer without any configured CRL: nothing to say once every source has loaded.
        assert_eq!(
            checker.check(B, b"\x30\x00", &bad.serial, now),
            Verdict::NotChecked
        );
        let status = checker.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].loaded);
        assert_eq!(status[0].crls[0].entries, 1);
        assert!(serde_json::to_string(&status).is_ok());
    }
}

#[tokio::test]
async fn a_source_that_never_loaded_fails_closed_for_every_issuer() {
    let ca = OpenSslCa::generate("Closed CA", "10");
    let leaf = ca.issue();
    let dir = tempfile::tempdir().unwrap();
    let checker = checker(
        &ca,
        vec![file_source(&dir.path().join("absent.pem"))],
        CrlExpiredPolicy::Reject,
    );
    let problems = checker.load_initial(&FetchOptions::default()).await;
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().contains("absent.pem"),
        "{}",
        problems[0]
    );
    assert!(matches!(problems[0].cause, LoadFailure::Read(_)));
    assert_eq!(verdict(&checker, &leaf), Verdict::Unknown);
    assert_eq!(
        checker.check(B, b"\x30\x00", &leaf.serial, UnixTime::now()),
        Verdict::Unknown
    );
}

#[tokio::test]
async fn crl_signed_by_a_different_ca_with_the_same_name_is_refused_and_the_good_one_kept() {
    let ca = OpenSslCa::generate("Twin CA", "20");
    let impostor = OpenSslCa::generate("Twin CA", "20");
    let leaf = ca.issue();
    ca.revoke(&leaf);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );

    checker.load_bytes(B, 0, &ca.crl(&[])).unwrap();
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);

    let err = checker.load_bytes(B, 0, &impostor.crl(&[])).unwrap_err();
    assert!(err.to_string().contains("/unused"), "{err}");
    assert!(
        matches!(
            err.cause,
            LoadFailure::Crl(CrlError::AuthorityKeyMismatch { .. } | CrlError::BadSignature { .. })
        ),
        "{err:?}"
    );
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked, "good CRL kept");
    let status = &checker.status()[0];
    assert!(status.loaded);
    assert_eq!(status.consecutive_failures, 1);
    assert!(status.last_error.is_some());
}

#[tokio::test]
async fn crl_from_a_ca_outside_the_bundle_is_refused() {
    let ca = OpenSslCa::generate("Bundle CA", "30");
    let stranger = OpenSslCa::generate("Stranger CA", "30");
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    let err = checker.load_bytes(B, 0, &stranger.crl(&[])).unwrap_err();
    assert!(
        matches!(err.cause, LoadFailure::Crl(CrlError::UnknownIssuer { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_is_refused_and_the_previous_crl_kept() {
    let ca = OpenSslCa::generate("Garbage CA", "40");
    let leaf = ca.issue();
    ca.revoke(&leaf);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &ca.crl_der()).unwrap();

    let mut truncated = ca.crl_der();
    truncated.truncate(truncated.len() - 10);
    let pem = ca.crl(&[]);
    for garbage in [
        &b"hello, world"[..],
        &b""[..],
        &truncated[..],
        &pem[..pem.len() / 2],
    ] {
        assert!(checker.load_bytes(B, 0, garbage).is_err());
        assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);
    }
}

#[tokio::test]
async fn unknown_critical_crl_extension_is_refused() {
    let ca = OpenSslCa::generate_with_crl_extensions(
        "Critical CA",
        "50",
        "authorityKeyIdentifier = keyid:always\n1.3.6.1.4.1.99999.1 = critical,ASN1:NULL\n",
    );
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    let err = checker.load_bytes(B, 0, &ca.crl(&[])).unwrap_err();
    assert!(
        matches!(
            err.cause,
            LoadFailure::Crl(CrlError::UnsupportedCriticalExtension { ref oid }) if oid == "1.3.6.1.4.1.99999.1"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_older_crl_does_not_replace_a_newer_one() {
    let ca = OpenSslCa::generate("Replay CA", "60");
    let leaf = ca.issue();
    let old = ca.crl(&[]);
    ca.revoke(&leaf);
    let new = ca.crl(&[]);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &new).unwrap();
    let err = checker.load_bytes(B, 0, &old).unwrap_err();
    assert!(matches!(err.cause, LoadFailure::Rollback { .. }), "{err:?}");
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);
}

#[tokio::test]
async fn expired_crl_is_refused_under_reject_and_used_under_allow_with_warning() {
    let ca = OpenSslCa::generate("Expired CA", "70");
    let bad = ca.issue();
    let good = ca.issue();
    ca.revoke(&bad);
    let expired = ca.expired_crl();

    let strict = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    strict.load_bytes(B, 0, &expired).unwrap();
    assert_eq!(verdict(&strict, &bad), Verdict::Unknown);
    assert_eq!(verdict(&strict, &good), Verdict::Unknown);
    assert!(strict.status()[0].crls[0].expired);

    let lenient = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::AllowWithWarning,
    );
    lenient.load_bytes(B, 0, &expired).unwrap();
    assert_eq!(verdict(&lenient, &bad), Verdict::Revoked);
    assert_eq!(verdict(&lenient, &good), Verdict::Good);
    assert_eq!(lenient.status()[0].expired_crl_uses, 2);

    // The same CRL is current at a time before its nextUpdate.
    let jan_1_2020_noon = UnixTime::since_unix_epoch(Duration::from_secs(1_577_880_000));
    assert_eq!(
        strict.check(B, &good.issuer, &good.serial, jan_1_2020_noon),
        Verdict::Good
    );
}

// === keeping CRLs fresh ===

#[tokio::test]
async fn file_replaced_by_rename_is_picked_up_and_garbage_in_between_is_ignored() {
    let ca = OpenSslCa::generate("Rename CA", "80");
    let leaf = ca.issue();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, ca.crl(&[])).unwrap();
    let checker = checker(&ca, vec![file_source(&path)], CrlExpiredPolicy::Reject);
    assert!(checker
        .load_initial(&FetchOptions::default())
        .await
        .is_empty());
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(FetchOptions::default(), shutdown);
    assert_eq!(tasks.len(), 1);
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    replace_by_rename(&path, b"garbage");
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .is_some())
        .await,
        "garbage noticed"
    );
    assert_eq!(verdict(&checker, &leaf), Verdict::Good, "last good kept");

    ca.revoke(&leaf);
    replace_by_rename(&path, &ca.crl_der());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "renamed CRL picked up"
    );
    assert!(checker.status()[0].last_error.is_none());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .expect("refresh tasks stop on shutdown");
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let ca = OpenSslCa::generate("Symlink CA", "90");
    let leaf = ca.issue();
    // /mount/crl.pem -> ..data/crl.pem, ..data -> ..v1: the layout of a Secret volume.
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    std::fs::create_dir(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/crl.pem"), ca.crl(&[])).unwrap();
    symlink("..v1", mount.join("..data")).unwrap();
    symlink("..data/crl.pem", mount.join("crl.pem")).unwrap();

    let checker = checker(
        &ca,
        vec![file_source(&mount.join("crl.pem"))],
        CrlExpiredPolicy::Reject,
    );
    assert!(checker
        .load_initial(&FetchOptions::default())
        .await
        .is_empty());
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(FetchOptions::default(), shutdown);
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    ca.revoke(&leaf);
    std::fs::create_dir(mount.join("..v2")).unwrap();
    std::fs::write(mount.join("..v2/crl.pem"), ca.crl(&[])).unwrap();
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();

    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "swapped CRL picked up"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .unwrap();
}

#[tokio::test]
async fn url_source_is_refreshed_and_failures_keep_the_last_good_crl() {
    let ca = OpenSslCa::generate("Url CA", "A0");
    let leaf = ca.issue();
    let server = CrlServer::start(ca.crl_der()).await;
    let url = server.url.clone();
    let checker = checker(
        &ca,
        vec![CrlSource::Url {
            url: url.clone(),
            refresh: Duration::from_millis(300),
        }],
        CrlExpiredPolicy::Reject,
    );
    let opts = FetchOptions {
        http_timeout: Duration::from_secs(5),
        min_refresh: Duration::from_millis(100),
        retry_after_failure: Duration::from_millis(100),
        ..FetchOptions::default()
    };
    assert!(checker.load_initial(&opts).await.is_empty());
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(opts, shutdown);

    // Server errors and garbage: recorded, last good kept.
    server.answer(500, b"oops".to_vec());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .is_some())
        .await
    );
    server.set(b"not a CRL".to_vec());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("invalid CRL")))
        .await
    );
    assert!(checker.status()[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains(&url));
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    ca.revoke(&leaf);
    server.set(ca.crl(&[]));
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "refreshed CRL picked up"
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_url_is_reported_with_its_source() {
    let ca = OpenSslCa::generate("Down CA", "B0");
    let url = dead_url("ca.crl");
    let checker = checker(
        &ca,
        vec![CrlSource::Url {
            url: url.clone(),
            refresh: Duration::from_secs(60),
        }],
        CrlExpiredPolicy::Reject,
    );
    let problems = checker.load_initial(&FetchOptions::default()).await;
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().contains(&url));
    assert!(matches!(problems[0].cause, LoadFailure::Fetch(_)));
}

// === live connections ===

#[tokio::test]
async fn a_new_crl_cuts_only_the_live_connections_it_newly_revokes() {
    let ca = OpenSslCa::generate("Live CA", "C0");
    let doomed = ca.issue();
    let spared = ca.issue();
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &ca.crl(&[])).unwrap();

    let registry = Arc::clone(checker.registry());
    let (_g1, mut doomed_signal) = registry.register(&doomed.issuer, &doomed.serial, 1);
    let (_g2, spared_signal) = registry.register(&spared.issuer, &spared.serial, 2);
    let gone = {
        let (guard, signal) = registry.register(&doomed.issuer, &doomed.serial, 3);
        drop(guard);
        signal
    };
    assert_eq!(registry.len(), 2);

    ca.revoke(&doomed);
    let report = checker.load_bytes(B, 0, &ca.crl(&[])).unwrap();
    assert_eq!(report.connections_cut, 1);
    tokio::time::timeout(Duration::from_secs(1), doomed_signal.revoked())
        .await
        .expect("the doomed connection is signalled");
    assert!(!spared_signal.is_revoked());
    assert!(
        !gone.is_revoked(),
        "an unregistered connection is not signalled"
    );

    // The OCSP hook cuts through the same registry.
    assert_eq!(registry.revoke(&spared.issuer, &spared.serial), 1);
    assert!(spared_signal.is_revoked());
}

// === scale ===

#[test]
fn a_million_entry_crl_loads_and_answers_lookups() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    const N: u64 = 1_000_000;

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "Big CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let ca_der = params.self_signed(&key).unwrap().der().clone();
    let issuer = Issuer::new(params, key);

    let serial = |i: u64| -> Vec<u8> {
        // 16-byte serials with the high bit set, like real CAs' random serials.
        let mut s = vec![0x80u8; 8];
        s.extend_from_slice(&(i * 2).to_be_bytes());
        s
    };
    let now = rcgen::date_time_ymd(2025, 1, 1);
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::from_secs(365 * 86_400 * 100),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (0..N)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial(i)),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let der = crl.der().to_vec();

    let checker = Checker::new(
        vec![BundleSpec {
            name: "big".into(),
            cas: vec![ca_der.clone()],
            crls: vec![CrlSource::File("/unused".into())],
            crl_expired: CrlExpiredPolicy::Reject,
        }],
        Registry::new(),
    )
    .unwrap();
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    let report = checker.load_bytes(B, 0, &der).unwrap();
    let load_time = started.elapsed();
    // Measured while `der` is still alive, so the growth is the set plus parser leftovers.
    let rss_after = rss_kib();
    drop(der);
    assert_eq!(report.entries, N as usize);
    eprintln!(
        "1M-entry CRL: loaded in {load_time:?} (debug build); RSS grew {} MiB",
        rss_after.saturating_sub(rss_before) / 1024
    );

    let (ca_name, _) = issuer_and_serial(&ca_der).unwrap();
    let now = UnixTime::now();
    for i in [0, 1, N / 2, N - 1] {
        assert_eq!(checker.check(B, ca_name, &serial(i), now), Verdict::Revoked);
        let mut odd = serial(i);
        *odd.last_mut().unwrap() |= 1;
        assert_eq!(checker.check(B, ca_name, &odd, now), Verdict::Good);
    }
    assert_eq!(checker.status()[0].crls[0].entries, N as usize);
}

/// Resident set size from /proc (Linux), 0 elsewhere: an indication, not an assertion.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// === the handshake lookup ===

/// The verifier's per-certificate lookup runs inside every handshake: whatever it answers (good,
/// revoked, or refused because no source covers the issuer) it must not allocate.
/// `allocation_counter` counts the calling thread only, so parallel tests do not disturb it.
#[test]
fn the_handshake_lookup_allocates_nothing_whatever_the_verdict() {
    let root = Ca::root("Lookup Root");
    let ca = OpenSslCa::new(&root);
    let good = root.leaf("good").issue();
    let revoked = root.leaf("revoked").issue();
    ca.revoke(&revoked);
    let uncovered = root
        .intermediate("Lookup Issuing")
        .leaf("uncovered")
        .issue();
    let bundle = TrustBundle {
        name: "partners".to_owned(),
        ca: "/unused".into(),
        crls: vec![CrlSource::File("/unused".into())],
        crl_expired: CrlExpiredPolicy::Reject,
        ocsp: None,
        revocation: Default::default(),
    };
    let revocation = Revocation::new(&[bundle], &[ca.ca_der()], Registry::new()).unwrap();
    revocation.crl().load_bytes(B, 0, &ca.crl(&[])).unwrap();
    let now = UnixTime::now();
    for (leaf, expected) in [
        (&good, Ok(())),
        (&revoked, Err(CertificateError::Revoked)),
        (&uncovered, Err(CertificateError::UnknownRevocationStatus)),
    ] {
        assert_eq!(revocation.check_cert(B, &leaf.der, true, now), expected);
        let info = allocation_counter::measure(|| {
            std::hint::black_box(revocation.check_cert(B, &leaf.der, true, now)).ok();
        });
        assert_eq!(info.count_total, 0, "{expected:?}");
    }
}
