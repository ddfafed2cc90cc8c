//! Broken upstreams: down, slow, dying mid-body, and an endpoint that fails until it is ejected
//! and gets traffic again once it recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn an_upstream_dying_mid_body_breaks_the_response_instead_of_completing_it() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let tls = env.acme_tls(&gw).await;
    let mut sender = handshake_http(tls).await.unwrap();
    let resp = sender.send(get("/v1/orders/truncated")).await.unwrap();
    assert_eq!(resp.status(), 200, "the head had already been forwarded");
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await;
    assert!(
        body.is_err(),
        "a truncated upstream body must not look complete to the partner"
    );
    env.still_serves(&gw).await;
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_comes_back_when_it_recovers() {
    let env = Env::new();
    let live = Upstream::start().await;
    let down = free_addr();
    let yaml = env.config(live.addr, "").replace(
        &format!("    endpoints: [\"http://{}\"]\n    connect_timeout: 1s\n", live.addr),
        &format!(
            "    endpoints: [\"http://{}\", \"http://{down}\"]\n    connect_timeout: 1s\n    eject_after_failures: 2\n    eject_for: 1s\n",
            live.addr
        ),
    );
    assert!(
        yaml.contains("eject_for"),
        "the test config was not rewritten"
    );
    let gw = env.start(&yaml).await;
    let client = env.client(Some(&env.acme()), &[b"http/1.1"]);

    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            call(gw.local_addr(), client.clone(), get("/v1/orders/1"))
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    let failures = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(
        failures, 2,
        "exactly eject_after_failures requests hit the dead endpoint: {statuses:?}"
    );
    assert!(
        statuses[6..].iter().all(|s| *s == 200),
        "ejected endpoint got traffic: {statuses:?}"
    );

    // The endpoint comes back; after eject_for it is in the rotation again.
    let revived = Upstream::start_on(down).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while revived.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the recovered endpoint never got traffic again"
        );
        let a = call(gw.local_addr(), client.clone(), get("/v1/orders/1"))
            .await
            .unwrap();
        assert_eq!(
            a.status, 200,
            "no failure while the endpoint is ejected or after it recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
