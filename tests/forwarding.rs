//! Forwarding: identity headers cannot be spoofed, HTTP/2 and WebSocket pass, upstream failures map
//! to 502/504.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn identity_headers_sent_by_a_partner_are_replaced() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let req = Request::get("/v1/orders/1")
        .header("host", "localhost")
        .header("client-cert", ":AAAA:")
        .header("client-cert-chain", ":AAAA:")
        .header(
            "x-forwarded-client-cert",
            "Hash=00;Subject=\"CN=globex-sync\"",
        )
        .header("x-partner-id", "globex")
        .header("x-forwarded-for", "10.9.8.7")
        .header("forwarded", "for=10.9.8.7")
        .header("connection", "x-secret, keep-alive")
        .header("x-secret", "hop")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let acme = env.acme();
    let a = env.call_as(&gw, &acme, req).await.unwrap();
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers.get_all("x-partner-id").iter().count(), 1);
    assert_eq!(seen.headers["x-partner-id"], "acme");
    assert_ne!(seen.headers["client-cert"], ":AAAA:");
    assert!(
        seen.headers.get("client-cert-chain").is_none(),
        "acme has no intermediates"
    );
    assert!(seen.headers.get("x-forwarded-client-cert").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["forwarded"], "for=127.0.0.1;proto=https");
    assert!(
        seen.headers.get("x-secret").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(seen.headers.get("te").is_none());
}

#[tokio::test]
async fn xfcc_mode_sends_envoys_header_and_no_rfc9440_headers() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(
        up.addr,
        "forward:\n  client_cert_header: xfcc\n  partner_header: X-Partner\n",
    );
    let gw = env.start(&yaml).await;
    let acme = env.acme();
    let req = Request::get("/v1/orders/1")
        .header("host", "localhost")
        .header("x-partner", "globex")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = env.call_as(&gw, &acme, req).await.unwrap();
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-partner"], "acme");
    let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
    assert!(
        xfcc.starts_with(&format!("Hash={}", acme.fingerprint_hex())),
        "{xfcc}"
    );
    assert!(
        xfcc.contains("URI=spiffe://partners.example.com/acme"),
        "{xfcc}"
    );
    assert!(seen.headers.get("client-cert").is_none());
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();
    let tls = connect(
        gw.local_addr(),
        "localhost",
        env.client(Some(&acme), &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = handshake_http(tls).await.unwrap();
    for i in 0..3 {
        let req = Request::get(format!("https://localhost/v1/orders/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = read(sender.send(req).await.unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body, format!("upstream saw /v1/orders/{i}"));
    }
    let seen = up.last();
    assert_eq!(seen.headers["host"], "localhost");
    assert_eq!(seen.headers["x-partner-id"], "acme");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn an_http2_upstream_is_reached_over_h2() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "").replace(
        "    request_timeout: 2s\n",
        "    request_timeout: 2s\n    protocol: http2\n",
    );
    let gw = env.start(&yaml).await;
    let acme = env.acme();
    let a = env.call_as(&gw, &acme, get("/v1/orders/1")).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(up.last().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    use futures_util::{SinkExt, StreamExt};
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();
    let tls = env.tls_as(&gw, &acme).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/v1/orders/live", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send("hello".into()).await.unwrap();
    let msg = ws.next().await.unwrap().unwrap();
    assert_eq!(msg.into_text().unwrap().as_str(), "echo: hello");
    assert_eq!(up.last().headers["x-partner-id"], "acme");
}

#[tokio::test]
async fn h2c_upgrades_are_never_forwarded() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let req = Request::get("/v1/orders/1")
        .header("host", "localhost")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = env.call_as(&gw, &env.acme(), req).await.unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (400, "upgrade_not_allowed")
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_slow_upstream_gets_504_and_a_dead_one_502() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let client = env.tls_config_for(&env.acme());
    let a = call(gw.local_addr(), client.clone(), get("/v1/orders/slow"))
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (504, "upstream_timeout")
    );
    let a = call(gw.local_addr(), client, get("/v1/broken/1"))
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (502, "upstream_unavailable")
    );
}

#[tokio::test]
async fn keep_alive_connections_carry_many_requests() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let tls = env.acme_tls(&gw).await;
    let mut sender = handshake_http(tls).await.unwrap();
    for i in 0..20 {
        let a = read(sender.send(get(&format!("/v1/orders/{i}"))).await.unwrap()).await;
        assert_eq!(a.status, 200);
    }
    let a = read(sender.send(get("/v1/payments")).await.unwrap()).await;
    assert_eq!(
        a.status, 405,
        "POST-only route, GET refused on the same connection"
    );
    assert_eq!(up.count(), 20);
}

/// Identity and origin headers in the conventions of other front ends, as a client might send
/// them (any case, `_` for `-`), and headers that must pass.
const FOREIGN_IDENTITY: &[(&str, &str)] = &[
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("x_ssl_client_cert", "-----BEGIN"),
    ("SSL_CLIENT_S_DN", "CN=admin"),
    ("SSL-Client-Verify", "SUCCESS"),
    ("X-Client-Cert", "abc"),
    ("X-Client-Verify", "SUCCESS"),
    ("X-ARR-ClientCert", "abc"),
    ("X-Amzn-Mtls-Clientcert", "abc"),
    ("X-Amzn-Oidc-Identity", "admin"),
    ("X-MS-Client-Principal-Name", "admin"),
    ("X-Forwarded-Tls-Client-Cert", "abc"),
    ("X-Real-IP", "10.0.0.1"),
    ("X_REAL_IP", "10.0.0.1"),
    ("X-Forwarded-Host", "admin.internal"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "admin.internal"),
    ("X-Forwarded-User", "admin"),
    ("True-Client-IP", "10.0.0.1"),
    ("CF-Connecting-IP", "10.0.0.1"),
    ("X-Original-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Envoy-External-Address", "10.0.0.1"),
    ("X-Acme-Internal-Role", "admin"),
    ("X-Debug-User", "admin"),
];
const PASSING: &[(&str, &str)] = &[
    ("X-Request-Id", "r-1"),
    ("X-Client-Version", "2.1"),
    ("X-Acme-Trace", "t-1"),
];

#[tokio::test]
async fn identity_headers_of_other_front_ends_never_reach_the_upstream() {
    let env = Env::new();
    let up = Upstream::start().await;
    let extra = "forward:\n  strip_headers: [\"X-Acme-Internal-*\", X_Debug_User]\n";
    let gw = env.start(&env.config(up.addr, extra)).await;
    let headers: String = FOREIGN_IDENTITY
        .iter()
        .chain(PASSING)
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    // First request (pooled client) and second and third (the connection's own upstream
    // connection).
    for before in [0, 1, 2] {
        let path = format!("/v1/orders/foreign-{before}");
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
        let answer = send_raw_after(&env, &gw, before, &format!("{before}"), &raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = up.last();
        assert_eq!(seen.path_and_query, path);
        for (name, _) in FOREIGN_IDENTITY {
            let lower = name.to_ascii_lowercase();
            assert!(
                seen.headers.get(&lower).is_none(),
                "{name} reached the upstream: {:?}",
                seen.headers
            );
        }
        for (name, value) in PASSING {
            assert_eq!(seen.headers[*name], *value, "{name}");
        }
        // certgate's own forwarding headers are set from the connection, not the client.
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-partner-id"], "acme");
    }
}

#[tokio::test]
async fn connection_cannot_make_host_or_content_length_hop_by_hop() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    for before in [0, 1] {
        let raw = "POST /v1/orders/count-body HTTP/1.1\r\nHost: localhost\r\n\
                   Connection: keep-alive, host, content-length, x-hop\r\nX-Hop: 1\r\n\
                   Content-Length: 5\r\n\r\nhello";
        let answer = send_raw_after(&env, &gw, before, &format!("{before}"), raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#"{"bytes":5}"#), "{answer}");
        let seen = up.last();
        assert_eq!(
            seen.headers.get_all("host").iter().collect::<Vec<_>>(),
            ["localhost"]
        );
        assert_eq!(seen.headers["content-length"], "5");
        assert!(seen.headers.get("x-hop").is_none());
    }
    let raw = "GET /v1/orders/close HTTP/1.1\r\nHost: localhost\r\nConnection: close, host\r\n\r\n";
    let answer = send_raw_after(&env, &gw, 0, "close", raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        up.last().headers.get_all("host").iter().collect::<Vec<_>>(),
        ["localhost"]
    );
}

#[tokio::test]
async fn an_http2_host_that_disagrees_with_the_authority_is_400_bad_host() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let acme = env.acme();
    let tls = connect(
        gw.local_addr(),
        "localhost",
        env.client(Some(&acme), &[b"h2"]),
    )
    .await
    .unwrap();
    let mut sender = handshake_http(tls).await.unwrap();
    let req = Request::get("https://localhost/v1/orders/h2")
        .header("host", "api.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = read(sender.send(req).await.unwrap()).await;
    assert_eq!((a.status.as_u16(), a.reason().as_str()), (400, "bad_host"));
    assert_eq!(up.count(), 0);

    let req = Request::get("https://localhost/v1/orders/h2")
        .header("host", "LocalHost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = read(sender.send(req).await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        up.last().headers.get_all("host").iter().collect::<Vec<_>>(),
        ["localhost"]
    );
}
