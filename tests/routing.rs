//! Route policy end to end: default deny, scopes, methods, Host/SNI agreement and path tricks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn req(method: &str, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

struct Setup {
    env: Env,
    up: Upstream,
    gw: certgate::runtime::Gateway,
}

async fn setup() -> Setup {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    Setup { env, up, gw }
}

impl Setup {
    async fn as_acme(&self, r: Request<Full<Bytes>>) -> Answer {
        self.env
            .call_as(&self.gw, &self.env.acme(), r)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_route_outside_the_partners_scopes_is_refused() {
    let s = setup().await;
    let a = s.as_acme(req("POST", "localhost", "/v1/payments")).await;
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (403, "scope_denied")
    );
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(s.up.count(), 0);
    // globex holds payments:write.
    let globex = s.env.globex();
    let a = s
        .env
        .call_as(&s.gw, &globex, req("POST", "localhost", "/v1/payments"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.up.last().headers["x-partner-id"], "globex");
}

#[tokio::test]
async fn an_unlisted_method_is_refused_with_405() {
    let s = setup().await;
    let a = s.as_acme(req("DELETE", "localhost", "/v1/orders/1")).await;
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn an_unknown_path_is_refused_with_404() {
    let s = setup().await;
    let a = s.as_acme(req("GET", "localhost", "/v2/orders")).await;
    assert_eq!((a.status.as_u16(), a.reason().as_str()), (404, "no_route"));
    let a = s.as_acme(req("GET", "localhost", "/v1/ordersX")).await;
    assert_eq!((a.status.as_u16(), a.reason().as_str()), (404, "no_route"));
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn a_host_that_disagrees_with_sni_is_refused_with_421() {
    let s = setup().await;
    // SNI is taken from the Host header by `call`; connect with SNI localhost, then ask for another host.
    let tls = s.env.tls_as(&s.gw, &s.env.acme()).await;
    let mut sender = handshake_http(tls).await.unwrap();
    let a = read(
        sender
            .send(req("GET", "api.example.com", "/v1/hosted"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (421, "host_mismatch")
    );
    // Same host in SNI and Host: the host-bound route answers.
    let a = s.as_acme(req("GET", "api.example.com", "/v1/hosted")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A host-bound route is not reachable under another host.
    let a = s.as_acme(req("GET", "localhost", "/v1/hosted")).await;
    assert_eq!((a.status.as_u16(), a.reason().as_str()), (404, "no_route"));
}

#[tokio::test]
async fn path_tricks_cannot_slip_past_a_prefix() {
    let s = setup().await;
    for trick in [
        "/v1//payments",
        "/v1/./payments",
        "/v1/x/../payments",
        "/%761/payments",
        "/v1/orders/../payments",
        "/v1/orders/%2e%2e/payments",
    ] {
        let a = s.as_acme(req("POST", "localhost", trick)).await;
        assert_eq!(
            (a.status.as_u16(), a.reason().as_str()),
            (403, "scope_denied"),
            "{trick}"
        );
    }
    for escape in [
        "/..",
        "/v1/../../etc/passwd",
        "/v1/orders/%2e%2e/%2e%2e/%2e%2e",
    ] {
        let a = s.as_acme(req("GET", "localhost", escape)).await;
        assert_eq!(
            (a.status.as_u16(), a.reason().as_str()),
            (400, "bad_path"),
            "{escape}"
        );
    }
    assert_eq!(s.up.count(), 0, "no trick may reach the upstream");
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_path_policy_checked() {
    let s = setup().await;
    let a = s
        .as_acme(req("GET", "localhost", "/v1//orders/./x/../%37?q=%2F"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.up.last().path_and_query, "/v1/orders/7?q=%2F");
}

#[tokio::test]
async fn a_certificate_bound_to_no_partner_is_refused() {
    let s = setup().await;
    let nobody = s
        .env
        .root
        .leaf("nobody")
        .spiffe("spiffe://partners.example.com/nobody")
        .issue();
    let a = s
        .env
        .call_as(&s.gw, &nobody, req("GET", "localhost", "/v1/orders/1"))
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (403, "unknown_partner")
    );
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn refusals_do_not_leak_internals() {
    let s = setup().await;
    let a = s.as_acme(req("GET", "localhost", "/v1/broken/x")).await;
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(!a.body.contains("127.0.0.1"), "{}", a.body);
    assert!(!a.body.to_lowercase().contains("refused"), "{}", a.body);
}
