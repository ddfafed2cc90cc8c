//! Self-service onboarding: invitations with one-time enrolment tokens, the enrolment API, and
//! approval issuing the certificate from the submitted CSR. The `certgate` binary for every
//! operator command and as the running gateway and API, `openssl` and `curl` on the partner's
//! side, `sqlite3` to read what the registry keeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    env: Env,
    config: PathBuf,
    state: PathBuf,
    listen: SocketAddr,
    api: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The standard test configuration with a lifecycle state folder `state/` beside it and the
/// enrolment API on a free port; `limits` are more `onboarding:` keys (indented by two).
fn setup(upstream: SocketAddr, limits: &str) -> Setup {
    let env = Env::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // A sandbox route (continuing the standard `routes:` list) on a sandbox upstream.
    let extra = format!(
        "  - name: sandbox-orders\n    path_prefix: /sandbox/orders\n    scope: orders:read\n    upstream: sandbox\n    environment: sandbox\n\
         lifecycle:\n  state_dir: state\nonboarding:\n  listen: \"{api}\"\n{limits}"
    );
    let yaml = env
        .config(upstream, &extra)
        .replacen(
            "upstreams:\n",
            &format!(
                "upstreams:\n  sandbox:\n    environment: sandbox\n    endpoints: [\"http://{upstream}\"]\n"
            ),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{listen}\""),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let state = env.path("state");
    Setup {
        env,
        config,
        state,
        listen,
        api,
    }
}

impl Setup {
    fn ok(&self, args: &[&str]) -> String {
        common::cli::ok(&self.config, args)
    }

    fn refused(&self, args: &[&str]) -> String {
        common::cli::refused(&self.config, args)
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

    /// A P-256 key and CSR for `san` made by `openssl req`; returns (csr, key).
    fn csr(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let key = self.env.path(&format!("{name}-key.pem"));
        let csr = self.env.path(&format!("{name}.csr"));
        common::openssl::partner_csr(&key, &csr, san);
        (csr, key)
    }

    fn database(&self) -> PathBuf {
        self.state.join("registry.sqlite")
    }

    /// The enrolment API's base URL, by the name the test server certificate carries.
    fn api_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// `curl` for a request to the enrolment API; `body` is sent as JSON when given.
    fn curl_api(&self, method: &str, url: &str, body: Option<&[u8]>) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-w", "\n%{http_code}", "-X", method, "--cacert"])
            .arg(self.env.path("ca.pem"))
            .arg(url);
        if let Some(body) = body {
            let file = self.env.path(&format!("body-{}.json", free_port()));
            std::fs::write(&file, body).unwrap();
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        cmd
    }

    /// One API call: (status, JSON body).
    fn call(&self, method: &str, url: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
        answer(self.curl_api(method, url, body).output().unwrap())
    }

    fn submit(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let body = body.to_string();
        self.call(
            "POST",
            &self.api_url("/v1/enrolments"),
            Some(body.as_bytes()),
        )
    }
}

/// curl's output (`-w "\n%{http_code}"`) as (status, JSON body).
fn answer(out: Output) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code.parse().unwrap(), json)
}

/// A `certgate serve` process, killed on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `certgate serve` and waits for the partner port and the enrolment API.
fn serve(s: &Setup) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&s.config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [s.listen, s.api] {
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "certgate did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    served
}

/// A submission for `token` with the CSR file at `csr`.
fn submission(token: &str, csr: &Path) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "csr_pem": std::fs::read_to_string(csr).unwrap(),
        "contact": "dev@initech.example",
        "description": "order sync",
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl_ok(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let store = Store::create(&certgate::config::model::Database::Sqlite(state.database()))
        .await
        .unwrap();
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
fn an_enrolment_through_the_api_is_approved_downloaded_and_calls_the_gateway() {
    let up = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let up = rt.block_on(Upstream::start());
        (rt, up)
    })
    .join()
    .unwrap();
    let s = setup(up.1.addr, "");
    // Promotion needs 3 successful sandbox calls and none refused in the latest 2; the sandbox
    // route takes GET only, so a POST there is a refused sandbox call.
    let yaml = std::fs::read_to_string(&s.config)
        .unwrap()
        .replacen(
            "lifecycle:\n  state_dir: state\n",
            "lifecycle:\n  state_dir: state\n  promotion:\n    min_calls: 3\n    clean_calls: 2\n",
            1,
        )
        .replacen(
            "    upstream: sandbox\n    environment: sandbox\n",
            "    upstream: sandbox\n    environment: sandbox\n    methods: [GET]\n",
            1,
        );
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = yaml.replacen(
        "admin:\n  listen: \"127.0.0.1:0\"",
        &format!("admin:\n  listen: \"{admin}\""),
        1,
    );
    assert!(yaml.contains("clean_calls: 2") && yaml.contains("methods: [GET]\n"));
    assert!(yaml.contains(&admin.to_string()));
    std::fs::write(&s.config, yaml).unwrap();
    s.ok(&["ca", "init"]);
    let token = s.invite("initech")["token"].as_str().unwrap().to_owned();
    let _served = serve(&s);

    // Refusals first, each with its code; none spends the token.
    let (ghost_csr, _) = s.csr("ghost", "URI:spiffe://partners.example.com/acme");
    let (status, body) = s.submit(&submission(&token, &ghost_csr));
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("csr_identity_mismatch")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("spiffe://partners.example.com/acme"));
    let (status, body) = s.submit(&serde_json::json!({"token": token, "csr_pem": "hello"}));
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("csr_unparseable")),
        "{body}"
    );
    let (status, body) = s.call("POST", &s.api_url("/v1/enrolments"), Some(b"{\"token\": 1"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let big = vec![b' '; 70 * 1024];
    let (status, body) = s.call("POST", &s.api_url("/v1/enrolments"), Some(&big));
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );

    let (csr, key) = s.csr("initech", "URI:spiffe://partners.example.com/initech");
    let (status, body) = s.submit(&submission("not-a-token", &csr));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    let (status, body) = s.submit(&submission(&token, &csr));
    assert_eq!(status, 202, "{body}");
    let status_url = body["status_url"].as_str().unwrap().to_owned();
    assert!(
        status_url.starts_with(&s.api_url("/v1/enrolments/")),
        "{status_url}"
    );
    assert!(status_url.contains(body["id"].as_str().unwrap()));
    let (status, body) = s.submit(&submission(&token, &csr));
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("token_used")),
        "{body}"
    );
    // A second invitation whose token expires unused.
    let expiring = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut store = Store::open(&certgate::config::model::Database::Sqlite(s.database()))
            .await
            .unwrap();
        let scopes = ["orders:read".to_owned()];
        let req = Register {
            id: "hooli",
            owner: "dev@hooli.example",
            scopes: &scopes,
            identity: Identity::Spiffe("spiffe://partners.example.com/hooli".into()),
        };
        let policy = Policy {
            known_scopes: None,
            yaml_identities: Default::default(),
            max_validity_days: 90,
        };
        commands::invite(&mut store, &policy, "alice", req, Duration::from_secs(1))
            .await
            .unwrap()
            .token
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (hooli_csr, _) = s.csr("hooli", "URI:spiffe://partners.example.com/hooli");
    let (status, body) = s.submit(&submission(&expiring, &hooli_csr));
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("token_expired")),
        "{body}"
    );

    let (status, body) = s.call("GET", &status_url, None);
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    let (wrong, _) = status_url.rsplit_once('/').unwrap();
    let (status, body) = s.call("GET", &format!("{wrong}/guessed"), None);
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);
    let (status, body) = s.call("GET", &status_url, None);
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("issued")),
        "{body}"
    );
    let cert = s.env.path("initech.pem");
    std::fs::write(
        &cert,
        format!(
            "{}{}",
            body["certificate_pem"].as_str().unwrap(),
            body["chain_pem"].as_str().unwrap()
        ),
    )
    .unwrap();
    let verified = openssl_ok(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        path(&s.state.join("ca/ca.pem")),
        path(&cert),
    ]);
    assert!(verified.contains(": OK"), "{verified}");

    // The gateway picks up the published partner and serves the downloaded certificate, on
    // sandbox routes only.
    let call_with = |method: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(s.env.path("ca.pem"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://localhost:{}{path}", s.listen.port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let call = |path: &str| call_with("GET", path);
    let until_200 = |path: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while call(path) != "200" {
            assert!(
                Instant::now() < deadline,
                "the gateway never served initech {path}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until_200("/sandbox/orders/7");
    assert_eq!(call("/v1/orders/7"), "403", "production before promotion");
    assert!(s
        .ok(&["partner", "show", "initech"])
        .contains("sandbox only until promoted"));

    // Promotion: not by the inviter or the owner, and only with a conforming certificate.
    let err = s.refused(&["partner", "promote", "initech", "--actor", "alice"]);
    assert!(err.contains("cannot promote it"), "{err}");
    let err = s.refused(&[
        "partner",
        "promote",
        "initech",
        "--actor",
        "dev@initech.example",
    ]);
    assert!(err.contains("cannot promote it"), "{err}");
    let err = s.refused(&[
        "partner",
        "promote",
        "initech",
        "--min-days",
        "120",
        "--actor",
        "carol",
    ]);
    assert!(err.contains("promotion needs more than 120"), "{err}");
    assert_eq!(call("/v1/orders/7"), "403");

    // Sandbox calls, as the gateway records them (flushed to the state folder every 10 s): one
    // successful so far; a refused one resets the clean streak.
    assert_eq!(call_with("POST", "/sandbox/orders/7"), "405");
    let promote_until = |done: &dyn Fn(Result<&str, &str>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let out = common::cli::run(
                &s.config,
                &["partner", "promote", "initech", "--actor", "carol"],
            );
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            let result = if out.status.success() {
                Ok(text.as_str())
            } else {
                Err(text.as_str())
            };
            if done(result) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "promotion never got there: {text}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let err = promote_until(&|r| r.is_err_and(|e| e.contains("a refused sandbox call")));
    assert!(
        err.contains("`orders:read`: 1 of 3 successful sandbox calls")
            && err
                .contains("`orders:read`: a refused sandbox call among the latest 2 (0 since it)"),
        "{err}"
    );
    // Production calls are not sandbox calls and count for nothing.
    assert_eq!(call("/v1/orders/7"), "403");
    assert_eq!(call("/sandbox/orders/7"), "200");
    let err = promote_until(&|r| r.is_err_and(|e| e.contains("2 of 3")));
    assert!(err.contains("(1 since it)"), "{err}");
    assert_eq!(call("/sandbox/orders/8"), "200");
    promote_until(&|r| {
        assert!(
            r.is_ok() || r.is_err_and(|e| e.contains("2 of 3") || e.contains("1 since it")),
            "{r:?}"
        );
        r.is_ok()
    });
    until_200("/v1/orders/7");
    assert_eq!(
        call("/sandbox/orders/7"),
        "200",
        "production includes the sandbox"
    );
    let history = s.ok(&["partner", "history", "initech"]);
    assert!(
        history.contains("promote by carol: certificate"),
        "{history}"
    );
    assert!(
        history.contains("sandbox calls: `orders:read` 3 successful of 4 (1 refused)"),
        "{history}"
    );
    assert!(history.contains("clientAuth, ECDSA P-256"), "{history}");

    let history = s.ok(&["partner", "history", "initech"]);
    assert!(
        history.contains("enrol by enrolment-api 127.0.0.1"),
        "{history}"
    );
    assert!(history.contains("approve by bob"), "{history}");
    s.ok(&["registry", "verify"]);

    // The onboarding metrics of that serving process.
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let metrics = String::from_utf8(out.stdout).unwrap();
    for line in [
        r#"certgate_onboarding_enrolments_failed_total{reason="csr_identity_mismatch"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="csr_unparseable"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="bad_request"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="body_too_large"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="invalid_token"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="token_used"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="token_expired"} 1"#,
        r#"certgate_onboarding_enrolments_failed_total{reason="csr_weak_key"} 0"#,
        r#"certgate_onboarding_tokens_total{event="issued"} 2"#,
        r#"certgate_onboarding_tokens_total{event="used"} 1"#,
        r#"certgate_onboarding_tokens_total{event="expired"} 1"#,
        "certgate_onboarding_enrolled_to_first_sandbox_call_seconds_count 1",
        "certgate_onboarding_first_sandbox_call_to_production_seconds_count 1",
        "certgate_onboarding_issued_to_first_call_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
}

#[test]
fn twenty_parallel_submissions_of_one_token_get_exactly_one_202() {
    let s = setup(
        SocketAddr::from(([127, 0, 0, 1], 9)),
        "  per_address_per_minute: 100\n  per_token_per_minute: 100\n",
    );
    s.ok(&["ca", "init"]);
    let token = s.invite("initech")["token"].as_str().unwrap().to_owned();
    let _served = serve(&s);
    let (csr, _) = s.csr("initech", "URI:spiffe://partners.example.com/initech");
    let body = submission(&token, &csr).to_string();
    let children: Vec<Child> = (0..20)
        .map(|_| {
            s.curl_api("POST", &s.api_url("/v1/enrolments"), Some(body.as_bytes()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let answers: Vec<(u16, serde_json::Value)> = children
        .into_iter()
        .map(|c| answer(c.wait_with_output().unwrap()))
        .collect();
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(accepted, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(
            (*status, body["error"].as_str()),
            (409, Some("token_used")),
            "{body}"
        );
    }
    let history = s.ok(&["partner", "history", "initech"]);
    assert_eq!(history.matches(" enrol by ").count(), 1, "{history}");
}

#[test]
fn submissions_are_rate_limited_per_token_and_per_address() {
    let s = setup(
        SocketAddr::from(([127, 0, 0, 1], 9)),
        "  per_address_per_minute: 4\n  per_token_per_minute: 2\n",
    );
    s.ok(&["ca", "init"]);
    let token = s.invite("initech")["token"].as_str().unwrap().to_owned();
    let _served = serve(&s);
    let bad = serde_json::json!({"token": token, "csr_pem": "not a CSR"});
    let code = |(status, body): (u16, serde_json::Value)| {
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(code(s.submit(&bad)), (422, "csr_unparseable".into()));
    assert_eq!(code(s.submit(&bad)), (422, "csr_unparseable".into()));
    assert_eq!(code(s.submit(&bad)), (429, "rate_limited".into()));
    let other = serde_json::json!({"token": "other", "csr_pem": "not a CSR"});
    assert_eq!(code(s.submit(&other)), (401, "invalid_token".into()));
    assert_eq!(code(s.submit(&other)), (429, "rate_limited".into()));
}

#[test]
fn the_api_needs_the_lifecycle_and_every_error_code_is_documented() {
    let env = Env::new();
    let yaml = env.config(
        SocketAddr::from(([127, 0, 0, 1], 9)),
        "onboarding:\n  listen: \"127.0.0.1:0\"\n",
    );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("onboarding") && text.contains("add a `lifecycle:` section"),
        "{text}"
    );

    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/onboarding.md"),
    )
    .unwrap();
    for code in certgate::onboarding::Code::ALL {
        assert!(
            docs.contains(&format!(
                "| `{}` | {} |",
                code.as_str(),
                code.status().as_u16()
            )),
            "docs/onboarding.md does not list `{}`",
            code.as_str()
        );
    }
}

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

#[test]
fn environments_are_checked_where_they_are_written() {
    let env = Env::new();
    let check = |yaml: &str| {
        let config = write_file(env.dir.path(), "certgate.yaml", yaml);
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let up = SocketAddr::from(([127, 0, 0, 1], 9));
    let route = |env_line: &str, scope: &str| {
        format!(
            "  - name: sandbox-orders\n    path_prefix: /sandbox\n    scope: {scope}\n    upstream: orders\n{env_line}"
        )
    };

    let (ok, text) = check(&env.config(up, &route("    environment: staging\n", "orders:read")));
    assert!(
        !ok && text.contains("unknown environment `staging`"),
        "{text}"
    );
    let (ok, text) = check(&env.config(up, &route("    environment: sandbox\n", "orders:read")));
    assert!(
        !ok && text
            .contains("a sandbox route cannot forward to upstream `orders`, which is production"),
        "{text}"
    );
    let (ok, text) = check(&env.config(up, &route("", "orders:read@sandbox")));
    assert!(!ok && text.contains("must not end in `@sandbox`"), "{text}");

    // Production is the default, and a sandbox route on a sandbox upstream is valid.
    let yaml = env
        .config(up, &route("    environment: sandbox\n", "orders:read"))
        .replace("upstream: orders\n    environment: sandbox", "upstream: sandbox\n    environment: sandbox")
        .replacen(
            "upstreams:\n",
            "upstreams:\n  sandbox:\n    environment: sandbox\n    endpoints: [\"http://127.0.0.1:9\"]\n",
            1,
        );
    let (ok, text) = check(&yaml);
    assert!(ok, "{text}");
}

#[test]
fn promotion_thresholds_are_checked_where_they_are_written() {
    let env = Env::new();
    let check = |promotion: &str| {
        let yaml = env.config(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            &format!("lifecycle:\n  state_dir: state\n  promotion:\n{promotion}"),
        );
        let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // A valid configuration with a lifecycle needs the CA's published files.
    check("    min_calls: 5\n    clean_calls: 0\n");
    common::cli::ok(&env.path("certgate.yaml"), &["ca", "init"]);
    let (ok, text) = check("    min_calls: 5\n    clean_calls: 0\n");
    assert!(ok, "clean_calls: 0 turns the refusal check off: {text}");

    let (ok, text) = check("    min_calls: 0\n");
    assert!(!ok, "{text}");
    assert!(
        text.contains("lifecycle.promotion.min_calls") && text.contains("greater than zero"),
        "{text}"
    );
    let (ok, text) = check("    min_call: 5\n");
    assert!(
        !ok && text.contains("lifecycle.promotion.min_call: unknown field"),
        "{text}"
    );
}

/// `curl` to the enrolment API's EST re-enrolment path with `cert`/`key` (if any) and the base64
/// CSR in `body`; returns (HTTP status, body). Status 0: the TLS handshake failed.
fn simplereenroll(s: &Setup, client: Option<(&Path, &Path)>, body: &Path) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.env.path("ca.pem"));
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.args(["-H", "content-type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(s.api_url("/.well-known/est/simplereenroll"));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_partner_renews_over_mtls_with_est_and_the_old_certificate_is_superseded_after_the_grace() {
    let up = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let up = rt.block_on(Upstream::start());
        (rt, up)
    })
    .join()
    .unwrap();
    // A grace far beyond the test: the old certificate goes because the new one is used.
    let s = setup(up.1.addr, "  renewal_grace: 1h\n");
    s.ok(&["ca", "init"]);
    s.ok(&[
        "partner",
        "register",
        "initech",
        "--owner",
        "dev@initech.example",
        "--scopes",
        "orders:read",
        "--spiffe",
        INITECH,
        "--actor",
        "alice",
    ]);
    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);
    let (csr, old_key) = s.csr("old", &format!("URI:{INITECH}"));
    let old = s.env.path("old.pem");
    s.ok(&[
        "partner",
        "issue",
        "initech",
        "--csr",
        path(&csr),
        "--out",
        path(&old),
        "--actor",
        "bob",
    ]);
    let _served = serve(&s);
    let gateway = |cert: &Path, key: &Path| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.env.path("ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!("https://localhost:{}/v1/orders/7", s.listen.port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(gateway(&old, &old_key), "200");

    // EST's wire format: the CSR's DER in base64 (what the PEM body is), the answer a base64
    // PKCS#7 certs-only that openssl reads.
    let (new_csr, new_key) = s.csr("new", &format!("URI:{INITECH}"));
    let pem = std::fs::read_to_string(&new_csr).unwrap();
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let body = s.env.path("new.b64");
    std::fs::write(&body, &b64).unwrap();

    // Without a client certificate, or with one the embedded CA did not issue: refused.
    let (status, answer) = simplereenroll(&s, None, &body);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("client_certificate_required"), "{answer}");
    s.env.acme().write(s.env.dir.path(), "acme");
    let (status, _) = simplereenroll(
        &s,
        Some((&s.env.path("acme.pem"), &s.env.path("acme-key.pem"))),
        &body,
    );
    assert_eq!(status, 0, "a foreign certificate fails the handshake");

    let (status, answer) = simplereenroll(&s, Some((&old, &old_key)), &body);
    assert_eq!(status, 200, "{answer}");
    let p7 = s.env.path("new.p7.pem");
    std::fs::write(
        &p7,
        format!(
            "-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n",
            answer.trim()
        ),
    )
    .unwrap();
    let printed = openssl_ok(&["pkcs7", "-print_certs", "-in", path(&p7)]);
    let begin = printed.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end =
        printed.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let new = s.env.path("new.pem");
    std::fs::write(&new, format!("{}\n", &printed[begin..end])).unwrap();
    let text = openssl_ok(&["x509", "-noout", "-text", "-in", path(&new)]);
    assert!(text.contains(INITECH), "same identity: {text}");
    let verified = openssl_ok(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        path(&s.state.join("ca/ca.pem")),
        path(&new),
    ]);
    assert!(verified.contains(": OK"), "{verified}");

    // Both work until the new one is used; then the old one is revoked as superseded and cut.
    assert_eq!(gateway(&old, &old_key), "200");
    assert_eq!(gateway(&new, &new_key), "200");
    let deadline = Instant::now() + Duration::from_secs(40);
    while gateway(&old, &old_key) == "200" {
        assert!(
            Instant::now() < deadline,
            "the old certificate was never superseded"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(gateway(&new, &new_key), "200");
    let history = s.ok(&["partner", "history", "initech"]);
    assert!(
        history.contains("renew by est 127.0.0.1 for initech"),
        "{history}"
    );
    assert!(
        history.contains("revoke by est renewal: superseded"),
        "{history}"
    );

    // The revoked certificate still chains to the CA, and the registry refuses it.
    let (status, answer) = simplereenroll(&s, Some((&old, &old_key)), &body);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("certificate_not_valid") && answer.contains("revoked"),
        "{answer}"
    );
    s.ok(&["registry", "verify"]);
}

#[tokio::test]
async fn a_renewal_over_est_supersedes_its_predecessor_when_used_or_after_the_grace() {
    let mut r = registry().await;
    let scopes = ["orders:read".to_owned()];
    let req = Register {
        id: "initech",
        owner: "dev@initech.example",
        scopes: &scopes,
        identity: Identity::Spiffe(INITECH.to_owned()),
    };
    commands::register(&mut r.store, &r.policy, "alice", req)
        .await
        .unwrap();
    commands::approve(&mut r.store, "bob", "initech")
        .await
        .unwrap();
    let first = commands::issue(
        &mut r.store,
        &r.policy,
        &r.signer,
        "bob",
        "initech",
        &rcgen_csr(INITECH),
        30,
    )
    .await
    .unwrap();
    let old = first.record.certificates[0].serial.clone();
    let unused = |_: &str, _: &str| false;

    // Within the grace and unused: the old certificate stays.
    let renewed = commands::reenroll(
        &mut r.store,
        &r.policy,
        &r.signer,
        "est",
        "initech",
        &rcgen_csr(INITECH),
        30,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let new = renewed
        .record
        .certificates
        .iter()
        .find(|c| c.renews.as_deref() == Some(old.as_str()))
        .unwrap()
        .serial
        .clone();
    let due = commands::supersede_due(&mut r.store, "est", &unused).await;
    assert_eq!(due.unwrap(), 0);
    // Its successor seen in use: revoked as superseded, once.
    let seen = new.clone();
    let used = move |p: &str, s: &str| p == "initech" && s == seen;
    let due = commands::supersede_due(&mut r.store, "est", &used).await;
    assert_eq!(due.unwrap(), 1);
    let due = commands::supersede_due(&mut r.store, "est", &used).await;
    assert_eq!(due.unwrap(), 0);
    let record = r.store.record("initech").await.unwrap();
    let c = record
        .certificates
        .iter()
        .find(|c| c.serial == old)
        .unwrap();
    assert_eq!(c.revocation_reason.as_deref(), Some("superseded"));

    // A zero grace: due at the next look, used or not; the successor stays.
    commands::reenroll(
        &mut r.store,
        &r.policy,
        &r.signer,
        "est",
        "initech",
        &rcgen_csr(INITECH),
        30,
        Duration::ZERO,
    )
    .await
    .unwrap();
    let due = commands::supersede_due(&mut r.store, "est", &unused).await;
    assert_eq!(due.unwrap(), 1);
    let record = r.store.record("initech").await.unwrap();
    let valid: Vec<&str> = record
        .certificates
        .iter()
        .filter(|c| c.status == certgate::lifecycle::registry::CertStatus::Valid)
        .map(|c| c.serial.as_str())
        .collect();
    assert_eq!(valid.len(), 1, "{valid:?}");
    assert_ne!(valid[0], new, "the renewed one went, its successor stayed");
}
