//! What a refused client certificate is refused for, and what the audit line says about it: a
//! stable reason for every class of chain fault (also the metric label), the clientAuth EKU
//! required to be present, the certificate and would-be partner named on the refusal, subjects
//! escaped as RFC 4514 (checked against `openssl -nameopt RFC2253`), and the route on a policy
//! refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use common::openssl::openssl;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use rustls::pki_types::ServerName;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

// === a small PKI on rcgen, for chains tests/common does not make ===

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(0x7700_0000);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// The shared test CA parameters with a serial of this file's own range, so the chains made here
/// never collide with tests/common's serials.
fn ca_params(name: &str) -> CertificateParams {
    let mut p = common::pki::ca_params(name);
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from(next_serial()));
    p
}

fn leaf_params(cn: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "certgate tests");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(30);
    p.use_authority_key_identifier_extension = true;
    p
}

/// A CA this file can sign with, and the PEM chain above it (without the root).
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    chain_pem: String,
}

fn root_of(env: &Env) -> Signer {
    let key = KeyPair::from_pem(&env.root.key_pem).unwrap();
    Signer {
        issuer: Issuer::from_ca_cert_pem(&env.root.pem, key).unwrap(),
        chain_pem: String::new(),
    }
}

impl Signer {
    /// A certificate signed by this CA from `params`, as a `Leaf` a client can present (with the
    /// chain above it) and the signer it would be if it signed in turn.
    fn sign(&self, params: CertificateParams) -> (Leaf, Signer) {
        let key = KeyPair::generate().unwrap();
        let serial = next_serial();
        let mut params = params;
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        let leaf = Leaf {
            pem: cert.pem(),
            chain_pem: chain_pem.clone(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial,
        };
        (
            leaf,
            Signer {
                issuer: Issuer::new(params, key),
                chain_pem,
            },
        )
    }
}

/// acme's identity (CN and SPIFFE ID), with `params` tweaked by `tweak`.
fn acme_params(tweak: impl FnOnce(&mut CertificateParams)) -> CertificateParams {
    let mut p = leaf_params("acme-billing");
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://partners.example.com/acme".try_into().unwrap(),
    )];
    tweak(&mut p);
    p
}

/// `nameConstraints` (critical) permitting only URIs in `host` (RFC 5280 §4.2.1.10): rcgen writes
/// every other name form but this one.
fn permitted_uri_constraint(host: &str) -> CustomExtension {
    let der = |tag: u8, content: &[u8]| {
        let mut v = vec![tag, u8::try_from(content.len()).unwrap()];
        v.extend_from_slice(content);
        v
    };
    let uri = der(0x86, host.as_bytes());
    let subtree = der(0x30, &uri);
    let permitted = der(0xa0, &subtree);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 30], der(0x30, &permitted));
    ext.set_criticality(true);
    ext
}

// === driving a refused handshake ===

/// Presents `leaf` to `gw` over TLS 1.3 and pokes the connection so the server judges it; returns
/// the client's address, by which the audit line is found.
async fn present(env: &Env, gw: &certgate::runtime::Gateway, leaf: &Leaf) -> SocketAddr {
    let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(env.client(Some(leaf), &[b"http/1.1"]));
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls
            .write_all(b"GET /v1/orders/1 HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        assert!(
            !String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
            "the certificate was accepted"
        );
    }
    local
}

/// The `handshake_refused` line for the connection from `client`.
async fn refusal_of(client: SocketAddr) -> serde_json::Value {
    let lines = audit().of("handshake_refused", client).await;
    assert_eq!(lines.len(), 1, "one refusal line for {client}: {lines:?}");
    lines.into_iter().next().unwrap()
}

/// Asserts the line gives `reason` in words of certgate's own, not a library's debug text.
fn assert_refused_for(line: &serde_json::Value, reason: &str) {
    assert_eq!(line["reason"], reason, "{line}");
    assert_eq!(line["decision"], "deny", "{line}");
    let error = line["error"].as_str().unwrap();
    assert!(
        !error.is_empty() && !error.contains("Other") && !error.contains('('),
        "the error must be a plain sentence: {line}"
    );
}

async fn counted(gw: &certgate::runtime::Gateway, reasons: &[&str]) {
    let expected: Vec<String> = reasons
        .iter()
        .map(|r| format!("certgate_tls_handshakes_total{{result=\"{r}\"}} 1"))
        .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    scrape_until(gw.admin_addr(), &expected).await;
}

// === tests ===

#[tokio::test]
async fn a_certificate_without_an_eku_extension_is_refused_unless_allowed() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let (no_eku, _) = root_of(&env).sign(acme_params(|p| p.extended_key_usages.clear()));

    let gw = env.start(&env.config(up.addr, "")).await;
    let client = present(&env, &gw, &no_eku).await;
    assert_refused_for(&refusal_of(client).await, "bad_eku");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;

    let yaml = env.config(up.addr, "").replace(
        "    trust_bundles:",
        "    allow_missing_eku: true\n    trust_bundles:",
    );
    let gw = env.start(&yaml).await;
    let answer = env
        .call_as(&gw, &no_eku, get("/v1/orders/1"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Allowing a missing extension does not allow a wrong one.
    let server_only = acme_identity(&env.root).server_auth_only().issue();
    let client = present(&env, &gw, &server_only).await;
    assert_refused_for(&refusal_of(client).await, "bad_eku");
    gw.shutdown().await;
}

#[tokio::test]
async fn every_chain_fault_is_refused_with_its_own_stable_reason_and_counted_under_it() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let root = root_of(&env);
    let mut cases: Vec<(&str, Leaf)> = Vec::new();

    // A CA certificate presented as the client's own.
    let (ca, _) = root.sign(ca_params("acme-billing"));
    cases.push(("ca_as_leaf", ca));

    // A partner's end-entity certificate issuing another one.
    let (_, leaf_signer) = root.sign(leaf_params("ordinary leaf"));
    let (under_leaf, _) = leaf_signer.sign(acme_params(|_| {}));
    cases.push(("leaf_as_ca", under_leaf));

    // pathLen 0 on the first intermediate, with a second intermediate below it.
    let mut first = ca_params("pathlen-0 intermediate");
    first.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let (_, first) = root.sign(first);
    let (_, second) = first.sign(ca_params("second intermediate"));
    let (too_deep, _) = second.sign(acme_params(|_| {}));
    cases.push(("path_len", too_deep));

    // A DNS name outside the intermediate's permitted DNS subtree.
    let mut constrained = ca_params("dns-constrained intermediate");
    constrained.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("allowed.example".into())],
        excluded_subtrees: Vec::new(),
    });
    let (_, constrained) = root.sign(constrained);
    let (outside, _) = constrained.sign(acme_params(|p| {
        p.subject_alt_names
            .push(SanType::DnsName("evil.example".try_into().unwrap()));
    }));
    cases.push(("name_constraints", outside));

    // A leaf naming the trusted root as its issuer, signed by another key under the same name.
    let forged_key = KeyPair::generate().unwrap();
    let mut forged_params = ca_params(&env.root.name);
    forged_params.serial_number = Some(SerialNumber::from(next_serial()));
    let forged = Signer {
        issuer: Issuer::new(forged_params, forged_key),
        chain_pem: String::new(),
    };
    let (forged_leaf, _) = forged.sign(acme_params(|_| {}));
    cases.push(("bad_signature", forged_leaf));

    let gw = env.start(&env.config(up.addr, "")).await;
    for (reason, leaf) in &cases {
        let client = present(&env, &gw, leaf).await;
        let line = refusal_of(client).await;
        assert_refused_for(&line, reason);
        assert_eq!(
            line["cert.sha256"],
            leaf.fingerprint_hex().as_str(),
            "{line}"
        );
    }
    assert_eq!(up.count(), 0);
    let reasons: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
    counted(&gw, &reasons).await;
    gw.shutdown().await;
}

/// webpki does not evaluate URI name constraints: a URI SAN under an intermediate that constrains
/// URIs is refused even when it lies inside the permitted subtree (fail closed). certgate names it
/// for what it is instead of a generic protocol error.
#[tokio::test]
async fn a_uri_san_under_a_uri_name_constraint_is_refused_as_name_constraints() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let mut constrained = ca_params("uri-constrained intermediate");
    constrained
        .custom_extensions
        .push(permitted_uri_constraint("partners.example.com"));
    let (_, constrained) = root_of(&env).sign(constrained);
    // spiffe://partners.example.com/acme: inside the permitted host.
    let (inside, _) = constrained.sign(acme_params(|_| {}));

    let gw = env.start(&env.config(up.addr, "")).await;
    let client = present(&env, &gw, &inside).await;
    let line = refusal_of(client).await;
    assert_refused_for(&line, "name_constraints");
    assert!(
        line["error"].as_str().unwrap().contains("URI"),
        "the sentence says URI constraints are not evaluated: {line}"
    );
    assert_eq!(line["partner"], "acme");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_handshake_names_the_certificate_and_the_partner_it_would_have_mapped_to() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let expired = acme_identity(&env.root).expired().issue();
    let gw = env.start(&env.config(up.addr, "")).await;

    let client = present(&env, &gw, &expired).await;
    let line = refusal_of(client).await;
    assert_refused_for(&line, "expired");
    assert_eq!(line["partner"], "acme", "{line}");
    assert_eq!(line["cert.sha256"], expired.fingerprint_hex().as_str());
    // What the certificate says, as openssl reads it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &expired.pem).unwrap();
    let read = |what: &str| {
        let out = openssl(
            dir.path(),
            &[
                "x509", "-in", "leaf.pem", "-noout", what, "-nameopt", "RFC2253",
            ],
        );
        out.trim()
            .split_once('=')
            .map(|(_, v)| v.to_owned())
            .unwrap()
    };
    assert_eq!(line["cert.subject"], read("-subject").as_str(), "{line}");
    assert_eq!(line["cert.issuer"], read("-issuer").as_str(), "{line}");
    assert_eq!(line["cert.serial"], read("-serial").as_str(), "{line}");

    // A stranger's certificate: named, mapped to no partner.
    let stranger = Ca::root("some other CA").leaf("nobody").issue();
    let client = present(&env, &gw, &stranger).await;
    let line = refusal_of(client).await;
    assert_refused_for(&line, "unknown_ca");
    assert_eq!(line["partner"], "unknown", "{line}");
    assert_eq!(line["cert.sha256"], stranger.fingerprint_hex().as_str());

    // No certificate: nothing to name.
    let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(env.client(None, &[b"http/1.1"]));
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let _ = tls.read_to_end(&mut Vec::new()).await;
    }
    let line = refusal_of(client).await;
    assert_refused_for(&line, "no_client_cert");
    for absent in ["cert.subject", "cert.sha256", "partner"] {
        assert!(
            line[absent].is_null(),
            "{absent} without a certificate: {line}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_audit_subject_is_rfc_4514_as_openssl_writes_it() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "a,x;y=z\"q");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Evil, Inc");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
    let (evil, _) = root_of(&env).sign(params);
    let gw = env.start(&env.config(up.addr, "")).await;

    let answer = env
        .call_as(&gw, &evil, get("/v1/orders/rfc4514"))
        .await
        .unwrap();
    assert_eq!(answer.reason(), "unknown_partner");
    let line = audit().lines("http.path", "/v1/orders/rfc4514", 1).await;
    let subject = line[0]["cert.subject"].as_str().unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("evil.pem"), &evil.pem).unwrap();
    let by_openssl = openssl(
        dir.path(),
        &[
            "x509", "-in", "evil.pem", "-noout", "-subject", "-nameopt", "RFC2253",
        ],
    );
    let by_openssl = by_openssl.trim().strip_prefix("subject=").unwrap();
    assert_eq!(subject, by_openssl);
    assert_eq!(subject, r#"O=Evil\, Inc,CN=a\,x\;y=z\"q"#);
    gw.shutdown().await;
}

#[tokio::test]
async fn scope_and_method_refusals_log_the_route_that_matched_and_durations_in_microseconds() {
    audit();
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();

    // payments-write matches and allows POST; acme lacks payments:write.
    let scope = http::Request::post("/v1/payments/route-logged")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = env.call_as(&gw, &acme, scope).await.unwrap();
    assert_eq!(answer.reason(), "scope_denied");
    // orders-read matches the path but not DELETE.
    let method = http::Request::delete("/v1/orders/route-logged")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = env.call_as(&gw, &acme, method).await.unwrap();
    assert_eq!(answer.reason(), "method_not_allowed");
    // Nothing matches at all.
    let answer = env
        .call_as(&gw, &acme, get("/nowhere/route-logged"))
        .await
        .unwrap();
    assert_eq!(answer.reason(), "no_route");

    for (path, route) in [
        ("/v1/payments/route-logged", "payments-write"),
        ("/v1/orders/route-logged", "orders-read"),
        ("/nowhere/route-logged", "none"),
    ] {
        let line = audit().lines("http.path", path, 1).await;
        let line = &line[0];
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["decision"], "deny");
        let ms = line["duration_ms"].as_f64().unwrap();
        assert_eq!(ms, (ms * 1e3).round() / 1e3, "three decimals: {line}");
    }
    gw.shutdown().await;
}

/// docs/audit.md is where operators look reasons up: every code the gateway can log is there.
#[test]
fn the_user_docs_list_every_handshake_and_connection_reason() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit.md"))
        .expect("docs/audit.md");
    let handshake = certgate::tls::handshake::HandshakeFailure::ALL.map(|f| f.as_str());
    let connection = certgate::conn_refusal::ConnRefusal::ALL.map(|r| r.as_str());
    for code in handshake.iter().chain(&connection) {
        assert!(
            docs.contains(&format!("| `{code}` |")),
            "docs/audit.md has no row for `{code}`"
        );
    }
    for event in [
        "request",
        "handshake_refused",
        "connection_refused",
        "connection_revoked",
        "connection_limit_reached",
    ] {
        assert!(docs.contains(&format!("| `{event}` |")), "{event}");
    }
}
