//! Who gets through the TLS handshake: only certificates that chain to the trust bundle, are in
//! their validity window and carry the clientAuth EKU. Nothing else reaches the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

async fn refused_at_handshake(env: &Env, up: &Upstream, leaf: Option<&Leaf>) -> String {
    let gw = env.start(&env.config(up.addr, "")).await;
    let result = call(
        gw.local_addr(),
        env.client(leaf, &[b"http/1.1"]),
        get("/v1/orders/1"),
    )
    .await;
    let err = result.expect_err("the handshake should have been refused");
    assert_eq!(up.count(), 0, "nothing may reach the upstream");
    err
}

#[tokio::test]
async fn a_valid_partner_certificate_is_forwarded_with_its_identity() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();
    let answer = env
        .call_as(&gw, &acme, get("/v1/orders/7?x=1"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "upstream saw /v1/orders/7");
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/v1/orders/7?x=1");
    assert_eq!(seen.headers["x-partner-id"], "acme");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["forwarded"], "for=127.0.0.1;proto=https");
    assert_eq!(seen.headers["host"], "localhost");
    // RFC 9440: the leaf, as an RFC 8941 byte sequence.
    use base64::Engine as _;
    let client_cert = seen.headers["client-cert"].to_str().unwrap();
    let b64 = client_cert
        .strip_prefix(':')
        .and_then(|s| s.strip_suffix(':'))
        .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(der, acme.der);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_chain_through_an_intermediate_is_accepted_and_forwarded_as_a_chain() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let issuing = env.root.intermediate("partner issuing CA");
    let leaf = acme_identity(&issuing).issue();
    let answer = env.call_as(&gw, &leaf, get("/v1/orders/1")).await.unwrap();
    assert_eq!(answer.status, 200);
    let chain = up.last().headers["client-cert-chain"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        chain.matches(':').count(),
        2,
        "one intermediate in the chain header: {chain}"
    );
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let env = Env::new();
    let up = Upstream::start().await;
    let err = refused_at_handshake(&env, &up, None).await;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_with_certificate_expired() {
    let env = Env::new();
    let up = Upstream::start().await;
    let leaf = acme_identity(&env.root).expired().issue();
    let err = refused_at_handshake(&env, &up, Some(&leaf)).await;
    assert!(err.contains("CertificateExpired"), "{err}");
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused_with_unknown_ca() {
    let env = Env::new();
    let up = Upstream::start().await;
    let stranger = Ca::root("some other CA");
    let leaf = acme_identity(&stranger).issue();
    let err = refused_at_handshake(&env, &up, Some(&leaf)).await;
    assert!(err.contains("UnknownCA"), "{err}");
}

#[tokio::test]
async fn a_server_auth_only_certificate_is_refused() {
    let env = Env::new();
    let up = Upstream::start().await;
    let leaf = acme_identity(&env.root).server_auth_only().issue();
    let err = refused_at_handshake(&env, &up, Some(&leaf)).await;
    assert!(err.contains("UnsupportedCertificate"), "{err}");
}

#[tokio::test]
async fn tls_1_2_clients_are_served_and_1_3_only_config_refuses_them() {
    let env = Env::new();
    let up = Upstream::start().await;
    let acme = env.acme();
    let tls12 = |leaf: &Leaf| {
        client_config_with(
            &env.root.pem,
            Some(leaf),
            &[b"http/1.1"],
            &[&rustls::version::TLS12],
        )
    };
    let gw = env.start(&env.config(up.addr, "")).await;
    let answer = call(gw.local_addr(), tls12(&acme), get("/v1/orders/1"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    gw.shutdown().await;

    let yaml = env.config(up.addr, "").replace(
        "    certificates:",
        "    min_version: \"1.3\"\n    certificates:",
    );
    let gw = env.start(&yaml).await;
    let err = call(gw.local_addr(), tls12(&acme), get("/v1/orders/1"))
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("protocol") || err.contains("ProtocolVersion"),
        "{err}"
    );
}
