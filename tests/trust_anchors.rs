//! Trust-anchor hygiene: the loader refuses CA certificates webpki would take without a look at
//! their dates, basicConstraints or keyUsage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use certgate::config::model::{CrlExpiredPolicy, TrustBundle};
use certgate::tls::trust::{AnchorProblem, TrustError, TrustStore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::UnixTime;
use time::{Duration, OffsetDateTime};

struct CaSpec {
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl CaSpec {
    fn good() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(365),
        }
    }

    fn pem(self, cn: &str) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = self.is_ca;
        p.key_usages = self.key_usages;
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }
}

fn bundle(path: &Path) -> TrustBundle {
    TrustBundle {
        name: "partners".to_owned(),
        ca: path.to_owned(),
        crls: Vec::new(),
        crl_expired: CrlExpiredPolicy::Reject,
        ocsp: None,
        revocation: Default::default(),
    }
}

fn write(dir: &tempfile::TempDir, pems: &[String]) -> PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pems.concat()).unwrap();
    path
}

/// Loads a file holding one good CA followed by `bad`, and returns the single error.
fn refusal(bad: CaSpec) -> (TrustError, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &[CaSpec::good().pem("Good CA"), bad.pem("Bad CA")]);
    let mut errors = TrustStore::load(&[bundle(&path)]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    (errors.remove(0), path)
}

fn problem_of(err: &TrustError) -> &AnchorProblem {
    match err {
        TrustError::Hygiene { problem, .. } => problem,
        other => panic!("expected a hygiene refusal, got {other:?}"),
    }
}

#[test]
fn an_expired_ca_is_refused_naming_the_file_and_certificate() {
    let now = OffsetDateTime::now_utc();
    let (err, path) = refusal(CaSpec {
        not_before: now - Duration::days(30),
        not_after: now - Duration::days(1),
        ..CaSpec::good()
    });
    assert!(matches!(problem_of(&err), AnchorProblem::Expired { .. }));
    assert_eq!(err.path(), path);
    let text = err.to_string();
    assert!(text.contains("certificate #1"), "{text}");
    assert!(text.contains("CN=Bad CA"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn a_ca_not_yet_valid_is_refused() {
    let now = OffsetDateTime::now_utc();
    let (err, _) = refusal(CaSpec {
        not_before: now + Duration::days(1),
        not_after: now + Duration::days(30),
        ..CaSpec::good()
    });
    assert!(matches!(
        problem_of(&err),
        AnchorProblem::NotYetValid { .. }
    ));
}

#[test]
fn a_certificate_without_ca_basic_constraints_is_refused() {
    let (err, _) = refusal(CaSpec {
        is_ca: IsCa::NoCa,
        ..CaSpec::good()
    });
    assert_eq!(problem_of(&err), &AnchorProblem::NotCa);
    // basicConstraints present with CA=false.
    let (err, _) = refusal(CaSpec {
        is_ca: IsCa::ExplicitNoCa,
        ..CaSpec::good()
    });
    assert_eq!(problem_of(&err), &AnchorProblem::NotCa);
}

#[test]
fn a_ca_whose_key_usage_lacks_key_cert_sign_is_refused() {
    let (err, _) = refusal(CaSpec {
        key_usages: vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        ..CaSpec::good()
    });
    assert_eq!(problem_of(&err), &AnchorProblem::NoKeyCertSign);
}

#[test]
fn a_ca_without_key_usage_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &[CaSpec {
            key_usages: Vec::new(),
            ..CaSpec::good()
        }
        .pem("No KU CA")],
    );
    let store = TrustStore::load(&[bundle(&path)]).unwrap();
    assert_eq!(store.bundles[0].anchors.len(), 1);
}

#[test]
fn every_bad_certificate_is_reported_not_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &[
            CaSpec {
                is_ca: IsCa::NoCa,
                ..CaSpec::good()
            }
            .pem("Leaf"),
            CaSpec::good().pem("Good"),
            CaSpec {
                key_usages: vec![KeyUsagePurpose::DigitalSignature],
                ..CaSpec::good()
            }
            .pem("Signer"),
        ],
    );
    let errors = TrustStore::load(&[bundle(&path)]).unwrap_err();
    let indices: Vec<_> = errors
        .iter()
        .map(|e| match e {
            TrustError::Hygiene { index, .. } => *index,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(indices, [0, 2]);
}

#[test]
fn validity_is_judged_at_the_time_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &[CaSpec::good().pem("Dated CA")]);
    let later = UnixTime::since_unix_epoch(StdDuration::from_secs(
        UnixTime::now().as_secs() + 2 * 365 * 86_400,
    ));
    let errors = TrustStore::load_at(&[bundle(&path)], later).unwrap_err();
    assert!(matches!(
        problem_of(&errors[0]),
        AnchorProblem::Expired { .. }
    ));
    assert!(TrustStore::load_at(&[bundle(&path)], UnixTime::now()).is_ok());
}

#[test]
fn an_anchor_expiring_soon_still_loads() {
    let now = OffsetDateTime::now_utc();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &[CaSpec {
            not_after: now + Duration::days(3),
            ..CaSpec::good()
        }
        .pem("Short-lived CA")],
    );
    // The warning goes to tracing; the load itself succeeds.
    assert!(TrustStore::load(&[bundle(&path)]).is_ok());
}

#[test]
fn the_demo_ca_and_the_test_pki_still_load() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/demo-ca.pem");
    TrustStore::load(&[bundle(&demo)]).unwrap();

    let root = common::pki::Ca::root("Hygiene Root");
    let intermediate = root.intermediate("Hygiene Intermediate");
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &[root.pem.clone(), intermediate.pem.clone()]);
    let store = TrustStore::load(&[bundle(&path)]).unwrap();
    assert_eq!(store.bundles[0].anchors.len(), 2);
}
