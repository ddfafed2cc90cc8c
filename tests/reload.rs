//! Hot reload and graceful shutdown: a bad configuration never replaces a good one, a good one is
//! in force for new connections at once, open connections finish under the generation they
//! started with, and shutdown lets in-flight requests finish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certgate::runtime::ReloadOutcome;
use common::*;
use http::Request;
use http_body_util::Full;

fn post(path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The standard config with acme also granted payments:write.
fn acme_may_pay(yaml: &str) -> String {
    yaml.replace(
        "      - spiffe: spiffe://partners.example.com/acme\n    scopes: [orders:read]",
        "      - spiffe: spiffe://partners.example.com/acme\n    scopes: [orders:read, payments:write]",
    )
}

#[tokio::test]
async fn an_invalid_config_is_rejected_with_its_place_and_the_old_one_keeps_serving() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start(&yaml).await;
    let before = gw.snapshot().config.version.clone();

    let broken = yaml.replace("    upstream: dead\n", "    upstream: nowhere\n");
    std::fs::write(env.path("certgate.yaml"), &broken).unwrap();
    let ReloadOutcome::Rejected { problems } = gw.reloader().reload().await else {
        panic!("a config naming an unknown upstream must be rejected");
    };
    let line = broken
        .lines()
        .position(|l| l.contains("upstream: nowhere"))
        .unwrap()
        + 1;
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("certgate.yaml:{line}:")) && p.contains("nowhere")),
        "{problems:?}"
    );
    assert_eq!(
        gw.snapshot().config.version,
        before,
        "the running generation is unchanged"
    );
    let a = env
        .call_as(&gw, &env.acme(), get("/v1/orders/1"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // A missing key file is just as fatal for the new generation, and just as harmless.
    let no_key = yaml.replace("key: server-key.pem", "key: gone.pem");
    std::fs::write(env.path("certgate.yaml"), &no_key).unwrap();
    let ReloadOutcome::Rejected { problems } = gw.reloader().reload().await else {
        panic!("a missing key must be rejected");
    };
    assert!(
        problems.iter().any(|p| p.contains("gone.pem")),
        "{problems:?}"
    );
    assert_eq!(gw.snapshot().config.version, before);
}

#[tokio::test]
async fn a_reload_changes_policy_for_new_connections_while_open_ones_keep_their_generation() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start(&yaml).await;
    let client = env.tls_config_for(&env.acme());

    let tls = connect(gw.local_addr(), "localhost", client.clone())
        .await
        .unwrap();
    let mut old_conn = handshake_http(tls).await.unwrap();
    let a = read(old_conn.send(post("/v1/payments")).await.unwrap()).await;
    assert_eq!(a.reason(), "scope_denied");

    std::fs::write(env.path("certgate.yaml"), acme_may_pay(&yaml)).unwrap();
    assert!(matches!(
        gw.reloader().reload().await,
        ReloadOutcome::Applied { .. }
    ));

    let a = call(gw.local_addr(), client, post("/v1/payments"))
        .await
        .unwrap();
    assert_eq!(
        a.status, 200,
        "new connections see the new scopes: {}",
        a.body
    );
    let a = read(old_conn.send(post("/v1/payments")).await.unwrap()).await;
    assert_eq!(
        a.reason(),
        "scope_denied",
        "an open connection keeps the generation it started with"
    );
}

#[tokio::test]
async fn a_changed_config_file_is_picked_up_by_the_watcher() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start_with(&yaml, true).await;
    let before = gw.snapshot().config.version.clone();
    // Rename-and-replace, as editors and config-management tools write.
    let tmp = env.path("certgate.yaml.tmp");
    std::fs::write(&tmp, acme_may_pay(&yaml)).unwrap();
    std::fs::rename(&tmp, env.path("certgate.yaml")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.snapshot().config.version == before {
        assert!(
            Instant::now() < deadline,
            "the watcher did not reload within 10s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = env
        .call_as(&gw, &env.acme(), post("/v1/payments"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}

fn server_serial(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_by_the_next_handshake() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let client = env.tls_config_for(&env.acme());
    let first = server_serial(
        &connect(gw.local_addr(), "localhost", client.clone())
            .await
            .unwrap(),
    );

    let rotated = env.root.server();
    rotated.write(env.dir.path(), "server");
    assert!(matches!(
        gw.reloader().reload().await,
        ReloadOutcome::Applied { .. }
    ));
    let second = server_serial(&connect(gw.local_addr(), "localhost", client).await.unwrap());
    assert_ne!(first, second);
    assert_eq!(
        second,
        rotated
            .serial
            .to_be_bytes()
            .iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<_>>()
    );
}

/// A Secret volume as the kubelet lays it out (`tls.crt -> ..data/tls.crt`, `..data -> ..v1`),
/// renewed the way the kubelet renews it: a new `..v2` folder, the `..data` symlink renamed over
/// the old one, `..v1` removed. The watcher sees it and the next handshake serves the new
/// certificate, without a reload request.
#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_secret_swap_of_the_server_certificate_is_served() {
    use std::os::unix::fs::symlink;

    let env = Env::new();
    let up = Upstream::start().await;
    let mount = env.path("secret");
    let write_version = |version: &str, leaf: &Leaf| {
        std::fs::create_dir_all(mount.join(version)).unwrap();
        std::fs::write(mount.join(version).join("tls.crt"), &leaf.chain_pem).unwrap();
        std::fs::write(mount.join(version).join("tls.key"), &leaf.key_pem).unwrap();
    };
    write_version("..v1", &env.server);
    symlink("..v1", mount.join("..data")).unwrap();
    symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
    symlink("..data/tls.key", mount.join("tls.key")).unwrap();
    let yaml = env
        .config(up.addr, "")
        .replace("cert: server.pem", "cert: secret/tls.crt")
        .replace("key: server-key.pem", "key: secret/tls.key");
    let gw = env.start_with(&yaml, true).await;
    let client = env.tls_config_for(&env.acme());
    let first = server_serial(
        &connect(gw.local_addr(), "localhost", client.clone())
            .await
            .unwrap(),
    );

    let renewed = env.root.server();
    write_version("..v2", &renewed);
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();

    let wanted: Vec<u8> = renewed
        .serial
        .to_be_bytes()
        .iter()
        .skip_while(|b| **b == 0)
        .copied()
        .collect();
    assert_ne!(first, wanted);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tls = connect(gw.local_addr(), "localhost", client.clone())
            .await
            .unwrap();
        if server_serial(&tls) == wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed Secret was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ten changes — policy, server certificate and CA bundle in turn — under a keep-alive client and a
/// new-connection client that call continuously; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_request() {
    let env = Env::new();
    let up = Upstream::start().await;
    let yaml = env.config(up.addr, "");
    let gw = env.start(&yaml).await;
    let addr = gw.local_addr();
    let client = env.tls_config_for(&env.acme());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));

    let keep_alive = tokio::spawn({
        let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        async move {
            let mut failures = Vec::new();
            let tls = connect(addr, "localhost", client).await.unwrap();
            let mut sender = handshake_http(tls).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match sender.send(get("/v1/orders/1")).await {
                    Ok(resp) if resp.status() == 200 => {
                        read(resp).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("keep-alive: {other:?}")),
                }
            }
            failures
        }
    });
    let fresh = tokio::spawn({
        let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match call(addr, client.clone(), get("/v1/orders/2")).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("new connection: {other:?}")),
                }
            }
            failures
        }
    });

    let other_ca = Ca::root("second partner CA");
    for round in 0..10 {
        match round % 3 {
            0 => {
                let scoped = if round % 2 == 0 {
                    acme_may_pay(&yaml)
                } else {
                    yaml.clone()
                };
                std::fs::write(env.path("certgate.yaml"), scoped).unwrap();
            }
            1 => {
                env.root.server().write(env.dir.path(), "server");
            }
            _ => {
                let bundle = if round % 2 == 0 {
                    env.root.pem.clone()
                } else {
                    format!("{}{}", env.root.pem, other_ca.pem)
                };
                std::fs::write(env.path("ca.pem"), bundle).unwrap();
            }
        }
        let outcome = gw.reloader().reload().await;
        assert!(
            matches!(outcome, ReloadOutcome::Applied { .. }),
            "round {round}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Finish on a known policy and check it is in force.
    std::fs::write(env.path("certgate.yaml"), acme_may_pay(&yaml)).unwrap();
    assert!(matches!(
        gw.reloader().reload().await,
        ReloadOutcome::Applied { .. }
    ));
    stop.store(true, Ordering::Relaxed);
    let mut failures = keep_alive.await.unwrap();
    failures.extend(fresh.await.unwrap());
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the clients made too few calls to prove anything"
    );
    let a = call(addr, client, post("/v1/payments")).await.unwrap();
    assert_eq!(a.status, 200, "the last policy is in force: {}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_accepts_no_new_connections() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env
        .start(
            &env.config(up.addr, "")
                .replace("request_timeout: 2s", "request_timeout: 10s"),
        )
        .await;
    let addr = gw.local_addr();
    let client = env.tls_config_for(&env.acme());
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { call(addr, client, get("/v1/orders/delay/1500")).await }
    });
    // Let the request reach the upstream before shutting down.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shutdown = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        call(addr, client, get("/v1/orders/1")).await.is_err(),
        "no new connection is served once shutdown began"
    );
    let a = in_flight.await.unwrap().unwrap();
    assert_eq!(a.status, 200, "the in-flight request finished: {}", a.body);
    assert!(
        shutdown.await.unwrap(),
        "every connection drained within drain_timeout"
    );
}
