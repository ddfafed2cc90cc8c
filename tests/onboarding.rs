//! Self-service onboarding: invitations with one-time enrolment tokens, the enrolment API, and
//! approval issuing the certificate from the submitted CSR. The `certgate` binary for every
//! operator command, `openssl` on the partner's side, `sqlite3` to read what the registry keeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use certgate::lifecycle::ca::{self, CsrError, FileSigner};
use certgate::lifecycle::commands::{self, CommandError, Enrol, Policy, Register};
use certgate::lifecycle::registry::{EnrolmentStatus, Identity};
use certgate::lifecycle::store::Store;
use certgate::lifecycle::StateDir;
use common::*;
use sha2::Digest as _;

// === helpers ===

struct Setup {
    _env: Env,
    config: PathBuf,
    state: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The standard test configuration with a lifecycle state folder `state/` beside it; `extra`
/// goes at the top level.
fn setup(upstream: SocketAddr, extra: &str) -> Setup {
    let env = Env::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = env
        .config(
            upstream,
            &format!("lifecycle:\n  state_dir: state\n{extra}"),
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{listen}\""),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let state = env.path("state");
    Setup {
        _env: env,
        config,
        state,
    }
}

impl Setup {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "certgate {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "certgate {args:?} should have been refused:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `partner invite ID … --json` by alice; returns the parsed answer.
    fn invite(&self, id: &str) -> serde_json::Value {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        let out = self.ok(&[
            "partner",
            "invite",
            id,
            "--owner",
            "dev@initech.example",
            "--scopes",
            "orders:read",
            "--spiffe",
            &spiffe,
            "--expires",
            "72h",
            "--json",
            "--actor",
            "alice",
        ]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn database(&self) -> PathBuf {
        self.state.join("registry.sqlite")
    }
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry with a CA in a temporary state folder, driven through the library's commands.
struct Registry {
    _dir: tempfile::TempDir,
    store: Store,
    signer: FileSigner,
    policy: Policy,
}

async fn registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    ca::init(&state, "test CA").unwrap();
    let store = Store::create(&state.database()).await.unwrap();
    let signer = FileSigner::load(&state).unwrap();
    Registry {
        _dir: dir,
        store,
        signer,
        policy: Policy {
            known_scopes: None,
            yaml_identities: Default::default(),
            max_validity_days: 90,
        },
    }
}

const INITECH: &str = "spiffe://partners.example.com/initech";

impl Registry {
    async fn invite(&mut self, id: &str, spiffe: &str, expires: Duration) -> String {
        let scopes = ["orders:read".to_owned()];
        let req = Register {
            id,
            owner: "dev@initech.example",
            scopes: &scopes,
            identity: Identity::Spiffe(spiffe.to_owned()),
        };
        commands::invite(&mut self.store, &self.policy, "alice", req, expires)
            .await
            .unwrap()
            .token
    }
}

/// A CSR for a SPIFFE ID, made with rcgen on a new P-256 key.
fn rcgen_csr(spiffe: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
    params
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

fn enrol<'a>(token: &'a str, csr: &'a [u8]) -> Enrol<'a> {
    Enrol {
        token,
        csr,
        contact: Some("dev@initech.example"),
        description: None,
    }
}

// === tests ===

#[test]
fn an_invitation_prints_a_one_time_token_and_the_registry_keeps_only_its_hash() {
    let s = setup(SocketAddr::from(([127, 0, 0, 1], 9)), "");
    s.ok(&["ca", "init"]);
    let answer = s.invite("initech");

    let keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["expires_at", "partner", "token"], "{answer}");
    assert_eq!(answer["partner"], "initech");
    let token = answer["token"].as_str().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .unwrap();
    assert!(raw.len() * 8 >= 128, "{} random bits", raw.len() * 8);
    let expires = time::OffsetDateTime::parse(
        answer["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::hours(71) && left <= time::Duration::hours(72),
        "{left}"
    );

    // The database holds the token's SHA-256 and never the token.
    let dump = sqlite3(&s.database(), ".dump");
    assert!(!dump.contains(token));
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    assert!(dump.contains(&hash));

    let history = s.ok(&["partner", "history", "initech"]);
    assert!(history.contains("invite by alice"), "{history}");
    assert!(s
        .ok(&["partner", "show", "initech"])
        .contains("invitation: open until"));
    s.ok(&["registry", "verify"]);

    // An invitation goes through the same checks as a registration.
    let err = s.refused(&[
        "partner",
        "invite",
        "hooli",
        "--owner",
        "dev@hooli.example",
        "--scopes",
        "nope:write",
        "--cn",
        "hooli",
        "--actor",
        "alice",
    ]);
    assert!(err.contains("unknown scope(s) `nope:write`"), "{err}");
    let err = s.refused(&[
        "partner",
        "invite",
        "hooli",
        "--owner",
        "dev@hooli.example",
        "--scopes",
        "orders:read",
        "--cn",
        "hooli",
        "--expires",
        "31d",
        "--actor",
        "alice",
    ]);
    assert!(err.contains("must expire within 720 hours"), "{err}");
}

#[tokio::test]
async fn a_token_is_single_use_survives_a_refused_csr_and_expires() {
    let mut r = registry().await;
    let token = r
        .invite("initech", INITECH, Duration::from_secs(3600))
        .await;

    let err = commands::enrol(&mut r.store, "api", enrol("not-the-token", b""))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidToken), "{err}");

    // A CSR for someone else is refused by the same check as `partner issue`; the token stays.
    let wrong = rcgen_csr("spiffe://partners.example.com/acme");
    let err = commands::enrol(&mut r.store, "api", enrol(&token, &wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Csr(CsrError::IdentityMismatch(_))),
        "{err}"
    );

    let csr = rcgen_csr(INITECH);
    let done = commands::enrol(&mut r.store, "api", enrol(&token, &csr))
        .await
        .unwrap();
    assert_eq!(done.partner, "initech");
    assert_eq!(done.outcome.event.action, "enrol");
    let err = commands::enrol(&mut r.store, "api", enrol(&token, &csr))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::TokenUsed(ref id) if id == "initech"),
        "{err}"
    );

    // The status secret opens the request; a wrong one is told apart from nothing.
    let (_, e) = commands::enrolment(&mut r.store, &done.id, &done.secret)
        .await
        .unwrap();
    assert_eq!(e.status, EnrolmentStatus::Pending);
    let err = commands::enrolment(&mut r.store, &done.id, "guess")
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NoEnrolment));

    let short = r
        .invite(
            "hooli",
            "spiffe://partners.example.com/hooli",
            Duration::from_secs(1),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let csr = rcgen_csr("spiffe://partners.example.com/hooli");
    let err = commands::enrol(&mut r.store, "api", enrol(&short, &csr))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::TokenExpired { .. }), "{err}");
}

#[tokio::test]
async fn approving_an_enrolment_issues_from_its_csr_and_rejecting_gives_the_reason() {
    let mut r = registry().await;
    let token = r
        .invite("initech", INITECH, Duration::from_secs(3600))
        .await;
    let csr = rcgen_csr(INITECH);
    let done = commands::enrol(&mut r.store, "api", enrol(&token, &csr))
        .await
        .unwrap();

    // Plain approval cannot leave the request behind, and the inviter cannot approve.
    let err = commands::approve(&mut r.store, "bob", "initech")
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::EnrolmentNeedsCa(_)), "{err}");
    let err = commands::approve_issuing(&mut r.store, &r.policy, &r.signer, "alice", "initech", 30)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::SameActor { .. }), "{err}");

    let approved =
        commands::approve_issuing(&mut r.store, &r.policy, &r.signer, "bob", "initech", 30)
            .await
            .unwrap();
    let chain = approved.chain_pem.unwrap();
    let (record, e) = commands::enrolment(&mut r.store, &done.id, &done.secret)
        .await
        .unwrap();
    assert_eq!(e.status, EnrolmentStatus::Issued);
    let cert = &record.certificates[0];
    assert_eq!(e.serial.as_deref(), Some(cert.serial.as_str()));
    assert!(chain.starts_with(&cert.pem));
    assert_eq!(record.partner.unwrap().scopes, ["orders:read"]);

    let token = r
        .invite(
            "hooli",
            "spiffe://partners.example.com/hooli",
            Duration::from_secs(3600),
        )
        .await;
    let csr = rcgen_csr("spiffe://partners.example.com/hooli");
    let done = commands::enrol(&mut r.store, "api", enrol(&token, &csr))
        .await
        .unwrap();
    commands::reject(&mut r.store, "bob", "hooli", "unknown company")
        .await
        .unwrap();
    let (_, e) = commands::enrolment(&mut r.store, &done.id, &done.secret)
        .await
        .unwrap();
    assert_eq!(e.status, EnrolmentStatus::Rejected);
    assert_eq!(e.reason.as_deref(), Some("unknown company"));
}
