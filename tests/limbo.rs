//! x509-limbo conformance: every testcase of `tests/data/x509-limbo/limbo.json` through the code
//! certgate runs on a handshake.
//!
//! Per case: the trusted certificates become a trust bundle loaded by [`TrustStore::load_at`] (so
//! the anchor hygiene checks apply), the CRLs (if any) go through the revocation loader
//! ([`Checker::load_bytes`], the same parse-and-verify-once path a CRL file takes), the chain goes
//! through [`ClientVerifier`] (webpki chain + EKU, then revocation), and the leaf through
//! [`PeerIdentity::from_der`]. The case's validation time is honoured everywhere.
//!
//! Two modes:
//! - `as-written`: the case's own EKU (`required_if_present`, RFC 5280 semantics; serverAuth for a
//!   SERVER case without one). Server-name checks are not certgate's job and are not run.
//! - `client-auth`: clientAuth, exactly what the gateway requires of a partner.
//!
//! Every divergence from `expected_result` must be listed in `tests/limbo-exceptions.txt` with a
//! reason, and every listed exception must still diverge. `LIMBO_BLESS=1` rewrites the file,
//! keeping existing reasons and suggesting one for new entries (review them before committing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certgate::config::model::{BundleId, CrlExpiredPolicy, CrlSource, TrustBundle};
use certgate::identity::PeerIdentity;
use certgate::revocation::{Registry, Revocation};
use certgate::tls::trust::TrustStore;
use certgate::tls::verifier::ClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use webpki::{EndEntityCert, KeyUsage};

const EXCEPTIONS: &str = "tests/limbo-exceptions.txt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    AsWritten,
    ClientAuth,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::AsWritten, Mode::ClientAuth];

    fn name(self) -> &'static str {
        match self {
            Mode::AsWritten => "as-written",
            Mode::ClientAuth => "client-auth",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Why certgate refused a case, in enough detail to suggest an exception reason.
#[derive(Debug)]
enum Refusal {
    Input(String),
    Anchor(String),
    Revocation(String),
    /// The verifier's error, and the CRL load error if there was one.
    Chain(rustls::Error, Option<String>),
    Identity(String),
}

#[derive(Default)]
struct Totals {
    run: usize,
    expected_pass: usize,
    expected_fail: usize,
    agreed: usize,
    diverged: usize,
    excepted: usize,
    /// Cases refused by certgate's trust-anchor hygiene (agreeing or not).
    anchor_refused: usize,
}

fn limbo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/x509-limbo/limbo.json")
}

#[test]
fn x509_limbo() {
    let path = limbo_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "x509-limbo vectors are required at {} (committed with the tests; see \
             tests/data/x509-limbo/PROVENANCE.md): {e}. This test fails rather than skips so conformance is never silently \
             unchecked.",
            path.display()
        )
    });
    let doc: Value = serde_json::from_str(&text).expect("limbo.json is JSON");
    let cases = doc["testcases"].as_array().expect("testcases array");
    assert!(!cases.is_empty(), "limbo.json has no testcases");

    let exceptions_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXCEPTIONS);
    let listed = read_exceptions(&exceptions_path);

    let mut totals: BTreeMap<Mode, Totals> = BTreeMap::new();
    let mut found: BTreeMap<(Mode, String), String> = BTreeMap::new();
    for case in cases {
        let id = case["id"].as_str().expect("case id").to_owned();
        let expect_ok = match case["expected_result"].as_str() {
            Some("SUCCESS") => true,
            Some("FAILURE") => false,
            other => panic!("{id}: unknown expected_result {other:?}"),
        };
        for mode in Mode::ALL {
            let t = totals.entry(mode).or_default();
            t.run += 1;
            if expect_ok {
                t.expected_pass += 1;
            } else {
                t.expected_fail += 1;
            }
            let got = run_case(case, mode);
            if matches!(got, Err(Refusal::Anchor(_))) {
                t.anchor_refused += 1;
            }
            if got.is_ok() == expect_ok {
                t.agreed += 1;
                continue;
            }
            t.diverged += 1;
            if listed.contains_key(&(mode, id.clone())) {
                t.excepted += 1;
            }
            found.insert((mode, id.clone()), suggest_reason(case, mode, &got));
        }
    }

    for (mode, t) in &totals {
        println!(
            "limbo {:<11}: run {}, expected pass {} / fail {}, agreed {}, diverged {}, excepted {}, refused by anchor hygiene {}",
            mode.name(),
            t.run,
            t.expected_pass,
            t.expected_fail,
            t.agreed,
            t.diverged,
            t.excepted,
            t.anchor_refused
        );
    }

    if std::env::var_os("LIMBO_BLESS").is_some() {
        write_exceptions(&exceptions_path, &found, &listed);
        println!("wrote {}", exceptions_path.display());
        return;
    }

    let unlisted: Vec<_> = found
        .iter()
        .filter(|(k, _)| !listed.contains_key(*k))
        .map(|((mode, id), why)| format!("  {} | {id} | {why}", mode.name()))
        .collect();
    let stale: Vec<_> = listed
        .keys()
        .filter(|k| !found.contains_key(*k))
        .map(|(mode, id)| format!("  {} | {id}", mode.name()))
        .collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "limbo results changed.\nDivergences not in {EXCEPTIONS} ({}):\n{}\nListed exceptions \
         that no longer diverge ({}), remove them:\n{}\n(LIMBO_BLESS=1 rewrites the file; review \
         the reasons.)",
        unlisted.len(),
        unlisted.join("\n"),
        stale.len(),
        stale.join("\n"),
    );
}

/// Runs one case; `Ok` means certgate would accept the peer.
fn run_case(case: &Value, mode: Mode) -> Result<(), Refusal> {
    let now = match case["validation_time"].as_str() {
        Some(t) => parse_rfc3339(t).ok_or_else(|| Refusal::Input(format!("bad time {t}")))?,
        None => UnixTime::now(),
    };
    let trusted = pem_list(&case["trusted_certs"])?;
    let intermediates = pem_list(&case["untrusted_intermediates"])?;
    let leaf = CertificateDer::from_pem_slice(
        case["peer_certificate"]
            .as_str()
            .ok_or_else(|| Refusal::Input("no peer certificate".into()))?
            .as_bytes(),
    )
    .map_err(|e| Refusal::Input(format!("peer certificate PEM: {e}")))?;
    let crls: Vec<&str> = case["crls"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    let pems: Vec<&str> = case["trusted_certs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    std::fs::write(&ca_path, pems.join("\n")).expect("write CA file");
    let bundle = TrustBundle {
        name: "limbo".to_owned(),
        ca: ca_path,
        crls: if crls.is_empty() {
            Vec::new()
        } else {
            vec![CrlSource::File(dir.path().join("crls.pem"))]
        },
        crl_expired: CrlExpiredPolicy::Reject,
        ocsp: None,
        revocation: Default::default(),
    };
    let bundles = [bundle];

    let store = TrustStore::load_at(&bundles, now).map_err(|errors| {
        Refusal::Anchor(
            errors
                .iter()
                .map(|e| certgate::error_chain(e))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let cas: Vec<_> = store.bundles.iter().map(|b| b.certs.clone()).collect();
    debug_assert_eq!(cas[0].len(), trusted.len());
    let revocation = Revocation::new(&bundles, &cas, Registry::new())
        .map_err(|e| Refusal::Revocation(certgate::error_chain(&e)))?;
    let crl_error = if crls.is_empty() {
        None
    } else {
        // The same parse-and-verify a CRL file goes through. A refused CRL leaves the source
        // never loaded, so the lookup below fails closed (UnknownRevocationStatus).
        revocation
            .crl()
            .load_bytes(BundleId(0), 0, crls.join("\n").as_bytes())
            .err()
            .map(|e| certgate::error_chain(&e))
    };

    // The gateway's default chain bounds, as `serve` builds them.
    let defaults = certgate::config::model::Limits::default();
    let limits = certgate::tls::verifier::ChainLimits {
        max_intermediates: defaults.max_chain_depth,
        max_bytes: defaults.max_chain_bytes,
    };
    let verifier = ClientVerifier::new(Arc::new(store), Arc::new(revocation), limits);
    let usage = match mode {
        Mode::ClientAuth => KeyUsage::client_auth(),
        Mode::AsWritten => as_written_usage(case)?,
    };
    verifier
        .verify_for_bundle_with_usage(BundleId(0), &leaf, &intermediates, now, usage)
        .map_err(|e| Refusal::Chain(e, crl_error))?;
    PeerIdentity::from_der(&leaf).map_err(|e| Refusal::Identity(e.to_string()))?;
    Ok(())
}

fn as_written_usage(case: &Value) -> Result<KeyUsage, Refusal> {
    const SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];
    const CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];
    const CODE_SIGNING: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 3];
    const EMAIL: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 4];
    const TIME_STAMPING: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 8];
    const OCSP_SIGNING: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 9];
    let ekus: Vec<&str> = case["extended_key_usage"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let oid = match ekus.as_slice() {
        [] => match case["validation_kind"].as_str() {
            Some("CLIENT") => CLIENT_AUTH,
            _ => SERVER_AUTH,
        },
        [one] => match *one {
            "serverAuth" => SERVER_AUTH,
            "clientAuth" => CLIENT_AUTH,
            "codeSigning" => CODE_SIGNING,
            "emailProtection" => EMAIL,
            "timeStamping" => TIME_STAMPING,
            "OCSPSigning" => OCSP_SIGNING,
            other => return Err(Refusal::Input(format!("unknown EKU {other}"))),
        },
        many => return Err(Refusal::Input(format!("several EKUs {many:?}"))),
    };
    Ok(KeyUsage::required_if_present(oid))
}

fn pem_list(v: &Value) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|pem| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| Refusal::Input(format!("certificate PEM: {e}")))
        })
        .collect()
}

/// A one-sentence reason for a divergence, for `LIMBO_BLESS`. Heuristic: review before committing.
fn suggest_reason(case: &Value, mode: Mode, got: &Result<(), Refusal>) -> String {
    let features: Vec<&str> = case["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match got {
        Ok(()) => {
            if mode == Mode::AsWritten && name_check_fails(case) {
                return "expected failure is a server-name mismatch; server-name validation is not \
                        certgate's job"
                    .to_owned();
            }
            if case["max_chain_depth"].is_number() {
                return "expected failure comes from the harness's max_chain_depth limit, which \
                        certgate does not configure"
                    .to_owned();
            }
            if case["key_usage"].as_array().is_some_and(|a| !a.is_empty()) {
                return "expected failure comes from a harness-required keyUsage, which certgate \
                        does not check on the leaf"
                    .to_owned();
            }
            let f = if features.is_empty() {
                String::new()
            } else {
                format!(" ({})", features.join(", "))
            };
            format!("webpki accepts what limbo expects refused{f}: TODO classify")
        }
        Err(Refusal::Anchor(e)) => {
            let what = if e.contains("basicConstraints") {
                "a trust anchor without basicConstraints CA=true"
            } else if e.contains("keyCertSign") {
                "a trust anchor whose keyUsage lacks keyCertSign"
            } else if e.contains("expired") {
                "an expired trust anchor"
            } else if e.contains("not valid before") {
                "a trust anchor not yet valid"
            } else {
                "a trust anchor it cannot use"
            };
            format!("certgate's anchor hygiene refuses {what}, which limbo accepts")
        }
        Err(Refusal::Chain(rustls::Error::InvalidCertificate(c), _))
            if mode == Mode::ClientAuth
                && matches!(c, rustls::CertificateError::InvalidPurpose) =>
        {
            "the leaf is a serverAuth-only certificate and certgate requires clientAuth".to_owned()
        }
        Err(Refusal::Chain(e, crl)) => match crl {
            Some(crl) => format!("certgate refuses the CRL ({crl}), so revocation fails closed"),
            None => format!("webpki refuses the chain ({e}) where limbo expects success"),
        },
        Err(Refusal::Input(e)) => format!("the harness cannot read the case: {e}"),
        Err(Refusal::Revocation(e)) => format!("the revocation checker refuses the CAs: {e}"),
        Err(Refusal::Identity(e)) => format!("PeerIdentity::from_der refuses the leaf: {e}"),
    }
}

/// Whether webpki's own server-name check would refuse the case's expected peer name.
fn name_check_fails(case: &Value) -> bool {
    let Some(name) = case["expected_peer_name"]["value"].as_str() else {
        return false;
    };
    let Ok(leaf) = CertificateDer::from_pem_slice(
        case["peer_certificate"]
            .as_str()
            .unwrap_or_default()
            .as_bytes(),
    ) else {
        return false;
    };
    let Ok(ee) = EndEntityCert::try_from(&leaf) else {
        return false;
    };
    match ServerName::try_from(name) {
        Ok(server_name) => ee.verify_is_valid_for_subject_name(&server_name).is_err(),
        Err(_) => true,
    }
}

/// Lines `mode | case id | reason`; `#` starts a comment line.
fn read_exceptions(path: &Path) -> BTreeMap<(Mode, String), String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, '|').map(str::trim);
        let (Some(mode), Some(id), Some(reason)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!(
                "{}:{}: expected `mode | case id | reason`",
                path.display(),
                n + 1
            );
        };
        let mode = Mode::parse(mode)
            .unwrap_or_else(|| panic!("{}:{}: unknown mode {mode}", path.display(), n + 1));
        assert!(
            !reason.is_empty(),
            "{}:{}: a reason is required",
            path.display(),
            n + 1
        );
        let dup = out.insert((mode, id.to_owned()), reason.to_owned());
        assert!(
            dup.is_none(),
            "{}:{}: duplicate entry",
            path.display(),
            n + 1
        );
    }
    out
}

fn write_exceptions(
    path: &Path,
    found: &BTreeMap<(Mode, String), String>,
    listed: &BTreeMap<(Mode, String), String>,
) {
    let mut text = String::from(
        "# x509-limbo divergences of certgate's verifier (tests/limbo.rs), one per line:\n\
         # mode | case id | reason\n\
         # The test fails on a divergence missing here and on an entry that no longer diverges.\n",
    );
    let modes: BTreeSet<Mode> = found.keys().map(|(m, _)| *m).collect();
    for mode in modes {
        text.push_str(&format!("\n# --- {} ---\n", mode.name()));
        for ((m, id), why) in found.iter().filter(|((m, _), _)| *m == mode) {
            let reason = listed.get(&(*m, id.clone())).unwrap_or(why);
            text.push_str(&format!("{} | {id} | {reason}\n", m.name()));
        }
    }
    std::fs::write(path, text).expect("write exceptions");
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)`, the form limbo writes.
fn parse_rfc3339(s: &str) -> Option<UnixTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Fractional seconds are allowed and dropped (a validation time is not that precise).
    let mut tz_at = 19;
    if b.get(19) == Some(&b'.') {
        tz_at = 20 + b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    let offset = match s.get(tz_at..)? {
        "Z" => 0,
        tz if tz.len() == 6 => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (num(tz_at + 1..tz_at + 3)? * 3600 + num(tz_at + 4..tz_at + 6)? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).ok()?,
    )))
}

#[test]
fn rfc3339_parsing_matches_known_instants() {
    let t = |s| parse_rfc3339(s).map(|t| t.as_secs());
    assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(t("2024-01-01T00:00:00+00:00"), Some(1_704_067_200));
    assert_eq!(t("2024-01-01T01:00:00+01:00"), Some(1_704_067_200));
    assert_eq!(t("2000-02-29T12:00:00Z"), Some(951_825_600));
    assert_eq!(t("2024-04-01T00:00:00.005+00:00"), Some(1_711_929_600));
    assert_eq!(t("garbage"), None);
}
