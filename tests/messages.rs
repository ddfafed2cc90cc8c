//! What `certgate check` tells an operator about a broken certificate setup: each problem on one
//! line, naming the file, giving its cause once, and dates in RFC 3339.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

/// `certgate check` on `env`'s standard config: its exit code and its `error:` lines.
fn check(env: &Env) -> (Option<i32>, Vec<String>) {
    let config = write_file(
        env.dir.path(),
        "certgate.yaml",
        &env.config("127.0.0.1:9".parse().unwrap(), ""),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_owned)
        .collect();
    (out.status.code(), errors)
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_missing_key_file_is_named_with_its_cause_once() {
    let env = Env::new();
    let key = env.path("server-key.pem");
    std::fs::remove_file(&key).unwrap();
    let (code, errors) = check(&env);
    assert_eq!(code, Some(1));
    assert_eq!(
        errors,
        [format!(
            "error: cannot read {}: No such file or directory (os error 2)",
            shown(&key)
        )]
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_named_once() {
    let env = Env::new();
    let key = env.path("server-key.pem");
    std::fs::write(&key, env.root.server().key_pem).unwrap();
    let (code, errors) = check(&env);
    assert_eq!(code, Some(1));
    assert_eq!(
        errors,
        [format!(
            "error: {}: the private key does not match the certificate {}",
            shown(&key),
            shown(&env.path("server.pem"))
        )]
    );
}

#[test]
fn an_encrypted_pkcs8_key_says_so_and_how_to_decrypt_it() {
    let env = Env::new();
    let key = env.path("server-key.pem");
    let encrypted = env.path("server-key.enc.pem");
    let made = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-in",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::rename(&encrypted, &key).unwrap();
    let (code, errors) = check(&env);
    assert_eq!(code, Some(1));
    let key = shown(&key);
    assert_eq!(
        errors,
        [format!(
            "error: {key}: the private key is encrypted; certgate needs it unencrypted: decrypt \
             it with `openssl pkey -in {key} -out <new file>` (asks for the passphrase), keep the \
             new file readable by certgate only, and point the config at it"
        )]
    );
}

#[test]
fn an_expired_trust_anchor_is_dated_in_rfc_3339() {
    let env = Env::new();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "Old CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // 2020-01-01T00:00:00Z and 2024-06-30T23:59:59Z.
    p.not_before = OffsetDateTime::from_unix_timestamp(1_577_836_800).unwrap();
    p.not_after = OffsetDateTime::from_unix_timestamp(1_719_791_999).unwrap();
    let old = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let ca = env.path("ca.pem");
    std::fs::write(&ca, old.pem()).unwrap();
    let (code, errors) = check(&env);
    assert_eq!(code, Some(1));
    assert_eq!(
        errors,
        [format!(
            "error: {}: certificate #0 (CN=Old CA) is refused as a trust anchor: it expired at \
             2024-06-30T23:59:59Z",
            shown(&ca)
        )]
    );
}
