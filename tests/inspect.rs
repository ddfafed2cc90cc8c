//! `certgate inspect --config`: the verdict the running gateway gives the same certificate, with
//! the same reason code, for a good, an expired, a revoked (CRL from the real `openssl ca`) and a
//! wrong-CA certificate, and for a partner's certificate that chains to another partner's CA.
//! Each case is put to a real gateway too, and the two answers must agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::openssl::{OcspResponder, OpenSslCa};
use common::*;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

/// What `inspect` said: exit code, first line of the text output, and the `--json` object.
#[derive(Debug)]
struct Inspected {
    code: i32,
    first_line: String,
    text: String,
    json: Value,
}

/// Runs `certgate inspect CERT --config CONFIG [extra…]`, once as text and once with `--json`.
async fn inspect(cert: &Path, config: &Path, extra: &[&str]) -> Inspected {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
        cmd.arg("inspect").arg(cert).arg("--config").arg(config);
        cmd.args(extra);
        if json {
            cmd.arg("--json");
        }
        cmd
    };
    let (mut text_cmd, mut json_cmd) = (run(false), run(true));
    let (text, json) = tokio::task::spawn_blocking(move || {
        (text_cmd.output().unwrap(), json_cmd.output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(
        text.status.code(),
        json.status.code(),
        "text and --json agree on the exit code"
    );
    let stdout = String::from_utf8_lossy(&text.stdout).into_owned();
    let json_out = String::from_utf8_lossy(&json.stdout);
    Inspected {
        code: text.status.code().unwrap(),
        first_line: stdout.lines().next().unwrap_or_default().to_owned(),
        json: serde_json::from_str(&json_out).unwrap_or_else(|e| {
            panic!(
                "--json printed no JSON ({e}): {json_out}{}",
                String::from_utf8_lossy(&json.stderr)
            )
        }),
        text: stdout,
    }
}

/// What the running gateway does with `leaf`: `accepted` when a GET on an `orders:read` route
/// reaches the upstream, else the reason code of its audit line (handshake) or JSON answer
/// (request).
async fn serve_verdict(env: &Env, gw: &certgate::runtime::Gateway, leaf: &Leaf) -> String {
    let log = audit();
    let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    let client: SocketAddr = tcp.local_addr().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let answer = async {
        let tls = tokio_rustls::TlsConnector::from(env.tls_config_for(leaf))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut sender = handshake_http(tls).await.map_err(|e| e.to_string())?;
        let resp = sender
            .send(get("/v1/orders/inspect"))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(read(resp).await)
    }
    .await;
    match answer {
        Ok(a) if a.status == 200 => "accepted".to_owned(),
        Ok(a) => a.reason(),
        Err(_) => {
            let lines = log.of("handshake_refused", client).await;
            let line = lines.first().expect("a refused handshake is audited");
            line["reason"].as_str().unwrap().to_owned()
        }
    }
}

/// The test config with the `partner-ca` bundle reading `partner-ca.crl`, written by the real
/// `openssl ca` for the test root with `revoked` recorded as revoked.
struct Case {
    env: Env,
    config: std::path::PathBuf,
    gw: certgate::runtime::Gateway,
    _up: Upstream,
}

impl Case {
    async fn new(revoked: &[&Leaf]) -> Self {
        Self::with(Env::new(), revoked, "").await
    }

    async fn with(env: Env, revoked: &[&Leaf], bundles: &str) -> Self {
        let ca = OpenSslCa::new(&env.root);
        for leaf in revoked {
            ca.revoke(*leaf);
        }
        std::fs::write(env.path("partner-ca.crl"), ca.crl(&[])).unwrap();
        let bundle = format!("        crl:\n          - path: partner-ca.crl\n{bundles}");
        Self::start(env, &bundle).await
    }

    /// The test config with `bundle` added to the `partner-ca` trust bundle.
    async fn start(env: Env, bundle: &str) -> Self {
        let up = Upstream::start().await;
        let yaml = env.config_with_bundle(up.addr, bundle, "");
        let gw = env.start(&yaml).await;
        let config = env.path("certgate.yaml");
        Case {
            env,
            config,
            gw,
            _up: up,
        }
    }

    /// Inspects `leaf` and asks the gateway; asserts both give the same verdict.
    async fn judge(&self, leaf: &Leaf, name: &str) -> Inspected {
        let (cert, _) = leaf.write(self.env.dir.path(), name);
        let inspected = inspect(&cert, &self.config, &[]).await;
        let served = serve_verdict(&self.env, &self.gw, leaf).await;
        let said = inspected.json["reason"]
            .as_str()
            .unwrap_or("accepted")
            .to_owned();
        assert_eq!(
            said, served,
            "inspect and the gateway disagree:\n{}",
            inspected.text
        );
        inspected
    }
}

fn assert_refused(i: &Inspected, reason: &str, stage: &str) {
    assert_eq!(i.code, 1, "{}", i.text);
    assert!(
        i.first_line.starts_with(&format!("REFUSED: {reason} — ")),
        "{}",
        i.text
    );
    assert_eq!(i.json["verdict"], "refused");
    assert_eq!(i.json["reason"], reason);
    assert_eq!(i.json["stage"], stage);
    assert!(i.json["why"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(
        i.json["routes"],
        serde_json::json!([]),
        "no routes when refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_certificate_is_accepted_with_its_partner_and_routes() {
    let case = Case::new(&[]).await;
    let i = case.judge(&case.env.acme(), "good").await;
    assert_eq!(i.code, 0, "{}", i.text);
    assert_eq!(
        i.first_line,
        "ACCEPTED as partner acme (routes: orders-read, hosted, broken)"
    );
    assert_eq!(i.json["verdict"], "accepted");
    assert_eq!(i.json["reason"], Value::Null);
    assert_eq!(i.json["partner"]["id"], "acme");
    assert_eq!(i.json["partner"]["matched_by"], "spiffe");
    assert_eq!(i.json["partner"]["trust_bundle"], "partner-ca");
    let routes: Vec<&str> = i.json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["orders-read", "hosted", "broken"]);
    assert_eq!(i.json["revocation"][0]["status"], "good");
    assert!(i.text.contains("revocation:   good (CRL "), "{}", i.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_as_expired() {
    let case = Case::new(&[]).await;
    let expired = acme_identity(&case.env.root).expired().issue();
    let i = case.judge(&expired, "expired").await;
    assert_refused(&i, "expired", "handshake");
    assert!(i.first_line.contains("expired at"), "{}", i.first_line);
    // The identity still maps to acme; the verdict says it does not get in.
    assert_eq!(i.json["partner"]["id"], "acme");
    assert!(
        i.text.contains("routes:       none (refused)"),
        "{}",
        i.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_in_the_crl_is_refused_as_revoked() {
    let env = Env::new();
    let revoked = env.acme();
    let case = Case::with(env, &[&revoked], "").await;
    let i = case.judge(&revoked, "revoked").await;
    assert_refused(&i, "revoked", "handshake");
    assert!(i.first_line.contains("partner-ca.crl"), "{}", i.first_line);
    assert_eq!(i.json["revocation"][0]["status"], "revoked");

    // Another certificate of the same partner, not in the CRL, still gets in.
    let fine = case.env.acme();
    assert_eq!(case.judge(&fine, "fine").await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_as_unknown_ca() {
    let case = Case::new(&[]).await;
    let other = Ca::root("some other CA");
    let stranger = acme_identity(&other).issue();
    let i = case.judge(&stranger, "stranger").await;
    assert_refused(&i, "unknown_ca", "handshake");
    assert!(
        i.first_line
            .contains("partner `acme` expects trust bundle `partner-ca`"),
        "{}",
        i.first_line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_certificate_no_partner_claims_is_refused_as_unknown_partner() {
    let case = Case::new(&[]).await;
    let nobody = case.env.root.leaf("nobody").issue();
    let i = case.judge(&nobody, "nobody").await;
    assert_refused(&i, "unknown_partner", "request");
    assert_eq!(i.json["partner"], Value::Null);
    assert!(i.first_line.contains("cn nobody"), "{}", i.first_line);
}

/// Two trust bundles: a certificate from the second bundle's CA that carries the first bundle's
/// partner's SPIFFE ID passes the handshake but is not that partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_identity_from_another_bundles_ca_is_refused_as_unknown_partner() {
    let env = Env::new();
    let other = Ca::root("second bundle CA");
    std::fs::write(env.path("other-ca.pem"), &other.pem).unwrap();
    let case = Case::with(
        env,
        &[],
        "      - name: other-ca\n        ca: other-ca.pem\n",
    )
    .await;
    let impostor = acme_identity(&other).issue();
    let i = case.judge(&impostor, "impostor").await;
    assert_refused(&i, "unknown_partner", "request");
    assert!(
        i.first_line
            .contains("maps to partner `acme` (by spiffe), but its chain does not verify under that partner's trust bundle `partner-ca`"),
        "{}",
        i.first_line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_given_with_chain_complete_the_path() {
    // Path building is the point here. The intermediate is not in the bundle, so no CRL of its
    // can be verified; the bundle lets certificates it issues through without one.
    let case = Case::with(
        Env::new(),
        &[],
        "        revocation: { unknown_issuer: allow }\n",
    )
    .await;
    let intermediate = case.env.root.intermediate("partner issuing CA");
    let leaf = acme_identity(&intermediate).issue();
    let leaf_only = write_file(case.env.dir.path(), "leaf-only.pem", &leaf.pem);
    let chain = write_file(case.env.dir.path(), "chain.pem", &intermediate.pem);

    let alone = inspect(&leaf_only, &case.config, &[]).await;
    assert_refused(&alone, "unknown_ca", "handshake");
    assert!(alone.first_line.contains("--chain"), "{}", alone.first_line);

    let chained = inspect(
        &leaf_only,
        &case.config,
        &["--chain", chain.to_str().unwrap()],
    )
    .await;
    assert_eq!(chained.code, 0, "{}", chained.text);
    assert!(
        chained.first_line.starts_with("ACCEPTED as partner acme"),
        "{}",
        chained.text
    );
    // The gateway agrees when the client sends the same chain.
    assert_eq!(serve_verdict(&case.env, &case.gw, &leaf).await, "accepted");
}

fn ocsp(mode: &str, responder: &str) -> String {
    format!("        ocsp:\n          mode: {mode}\n          responder: {responder}\n          timeout: 1s\n")
}

/// The bundle has OCSP: inspect asks the real responder (`openssl ocsp` over the CA's database),
/// as a connection does before its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_are_asked_live_and_judged_by_the_bundles_mode() {
    let env = Env::new();
    let ca = OpenSslCa::new(&env.root);
    let (good, revoked, unknown) = (env.acme(), env.acme(), env.acme());
    ca.valid(&good);
    ca.revoke(&revoked);
    let responder = OcspResponder::start(&ca).await;
    let case = Case::start(env, &ocsp("hard_fail", &responder.url)).await;

    let i = case.judge(&good, "ocsp-good").await;
    assert_eq!(i.code, 0, "{}", i.text);
    assert_eq!(i.json["revocation"][0]["status"], "good");
    assert!(
        i.text
            .contains(&format!("revocation:   good (OCSP {})", responder.url)),
        "{}",
        i.text
    );

    let before = responder.requests();
    let i = case.judge(&revoked, "ocsp-revoked").await;
    assert_refused(&i, "certificate_revoked", "request");
    assert!(responder.requests() > before, "inspect asked the responder");
    assert!(i.first_line.contains(&responder.url), "{}", i.first_line);

    // Not in the CA's database: the responder says unknown, which hard_fail refuses.
    let i = case.judge(&unknown, "ocsp-unknown").await;
    assert_refused(&i, "revocation_unknown", "request");
}

#[test]
fn a_certificate_that_cannot_be_read_exits_2() {
    let env = Env::new();
    let config = write_file(
        env.dir.path(),
        "c.yaml",
        &env.config("127.0.0.1:9".parse().unwrap(), ""),
    );
    let junk = write_file(env.dir.path(), "junk.pem", "not a certificate\n");
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("inspect")
        .arg(&junk)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.pem"));
}
