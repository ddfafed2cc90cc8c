//! The control plane's feed and gateways that follow it (`lifecycle.source`), as separate
//! processes: `certgate control-plane` on the registry's state folder, two `certgate serve`
//! gateways each with a state folder of its own, the lifecycle CLI run against the control
//! plane's configuration, and `openssl` on the partner's side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::feed::*;
use common::*;

// === helpers ===

/// The control plane's configuration and state folder, and gateway configurations that mirror
/// it, all in one temp dir with the test PKI (server certificate, YAML partner CA).
struct Cluster {
    env: Env,
    upstream: SocketAddr,
    feed: SocketAddr,
    control_config: PathBuf,
}

impl Cluster {
    fn new(upstream: SocketAddr) -> Cluster {
        let env = Env::new();
        let feed = free_addr();
        let yaml = env.config(upstream, "lifecycle:\n  state_dir: control-state\n");
        let control_config = write_file(env.dir.path(), "control-plane.yaml", &yaml);
        Cluster {
            env,
            upstream,
            feed,
            control_config,
        }
    }

    /// A gateway configuration named `name`, mirroring the feed into `<name>-state`.
    fn gateway(&self, name: &str) -> Gateway {
        Gateway::new(&self.env, self.upstream, name, self.feed)
    }

    fn ok(&self, args: &[&str]) -> String {
        common::cli::ok(&self.control_config, args)
    }

    /// Starts `certgate control-plane` and waits until it is ready.
    async fn start_control_plane(&self) -> Process {
        start_control_plane(&self.control_config, self.feed).await
    }

    /// See [`onboard`].
    fn onboard(&self, id: &str) -> (PathBuf, PathBuf) {
        onboard(&self.env, &self.control_config, id)
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_the_control_plane_cuts_keep_alive_connections_on_two_gateways() {
    let up = Upstream::start().await;
    let cluster = Cluster::new(up.addr);
    cluster.ok(&["ca", "init"]);
    let _control = cluster.start_control_plane().await;
    let gateways = [cluster.gateway("gw1"), cluster.gateway("gw2")];
    let _served: Vec<Process> = gateways.iter().map(Gateway::serve).collect();

    // The gateways copied the CA and the empty partner table into their own state folders.
    for gw in &gateways {
        assert_eq!(
            std::fs::read(gw.state.join("ca/ca.pem")).unwrap(),
            std::fs::read(cluster.env.path("control-state/ca/ca.pem")).unwrap()
        );
    }

    let (cert, key) = cluster.onboard("initech");
    let leaf = common::pki::leaf_from_files(&cert, &key);
    for gw in &gateways {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = call(
                gw.listen,
                cluster.env.tls_config_for(&leaf),
                get("/v1/orders/9"),
            )
            .await;
            if answer.as_ref().is_ok_and(|a| a.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} does not serve the partner onboarded on the control plane: {:?}",
                gw.listen,
                answer.map(|a| a.body)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let generation = json(&get_http(cluster.feed, "/generation", None).await.2)["generation"]
        .as_i64()
        .unwrap();
    // A held long poll for the generation in force, answered by the revoke below.
    let feed = cluster.feed;
    let held = tokio::spawn(async move {
        get_http(feed, &format!("/generation?after={generation}"), None).await
    });
    let clients = [
        keep_alive(&cluster.env, gateways[0].listen, &leaf).await,
        keep_alive(&cluster.env, gateways[1].listen, &leaf).await,
    ];
    assert!(
        eventually(Duration::from_secs(5), || up.count() >= 10).await,
        "both keep-alive clients are being served"
    );
    assert!(
        !held.is_finished(),
        "the long poll answered before anything changed"
    );

    let started = Instant::now();
    let config = cluster.control_config.clone();
    let revoke = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["partner", "revoke", "initech", "--reason", "keyCompromise"])
            .args(["--actor", "dave", "--config"])
            .arg(config)
            .output()
            .unwrap()
    });
    for (gw, client) in gateways.iter().zip(clients) {
        let (served, ended, why) = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .unwrap_or_else(|_| panic!("gateway {}: not cut within 10 s of the revoke", gw.listen))
            .unwrap();
        assert!(served >= 1);
        eprintln!(
            "gateway {}: `partner revoke` started → keep-alive connection cut after {:?} ({served} requests; {why})",
            gw.listen,
            ended.saturating_duration_since(started)
        );
    }
    let revoke = revoke.await.unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );

    // The long poll was answered with the new generation.
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the long poll was not answered after the revoke")
        .unwrap();
    assert_eq!(status, 200);
    let after = json(&body)["generation"].as_i64().unwrap();
    assert!(after > generation, "{after} after {generation}");

    // Both gateways refuse a new handshake, and report the generation they hold.
    for gw in &gateways {
        let refused = call(
            gw.listen,
            cluster.env.tls_config_for(&leaf),
            get("/v1/orders/1"),
        )
        .await;
        assert!(
            refused.is_err(),
            "gateway {} still serves a revoked certificate",
            gw.listen
        );
        let (status, _, body) = get_http(gw.admin, "/status", None).await;
        assert_eq!(status, 200);
        let source = &json(&body)["lifecycle_source"];
        assert_eq!(source["up"], true, "{source}");
        assert_eq!(source["source"], format!("http://{}", cluster.feed));
        assert!(source["generation"].as_i64().unwrap() >= after, "{source}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_answers_if_none_match_and_long_polls_past_a_generation() {
    let up = Upstream::start().await;
    let cluster = Cluster::new(up.addr);
    cluster.ok(&["ca", "init"]);
    let _control = cluster.start_control_plane().await;
    let feed = cluster.feed;
    let state = cluster.env.path("control-state/published");

    let (status, etag, body) = get_http(feed, "/partners.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(state.join("partners.json")).unwrap());
    let etag = etag.expect("an ETag");
    assert_eq!(get_http(feed, "/partners.json", Some(&etag)).await.0, 304);
    let (status, crl_etag, crl) = get_http(feed, "/crl/lifecycle.crl", None).await;
    assert_eq!(status, 200);
    assert_eq!(crl, std::fs::read(state.join("crl.der")).unwrap());
    assert_eq!(
        get_http(feed, "/crl/lifecycle.crl", crl_etag.as_deref())
            .await
            .0,
        304
    );
    assert_eq!(get_http(feed, "/crl/other.crl", None).await.0, 404);
    assert_eq!(get_http(feed, "/generation?after=x", None).await.0, 400);

    // The generation is the published CRL's number; a request for another one answers at once.
    let g = json(&get_http(feed, "/generation", None).await.2)["generation"]
        .as_i64()
        .unwrap();
    let partners = json(&body);
    assert_eq!(partners["crl_number"].as_i64(), Some(g));
    let quick = tokio::time::timeout(
        Duration::from_secs(5),
        get_http(feed, &format!("/generation?after={}", g - 1), None),
    )
    .await
    .expect("a stale generation is answered at once");
    assert_eq!(json(&quick.2)["generation"].as_i64(), Some(g));

    // A partner table whose CRL number the CRL does not carry (a publication half done) is not
    // served: the feed stays on the last whole pair.
    let table = state.join("partners.json");
    let whole = std::fs::read(&table).unwrap();
    let mut half = partners.clone();
    half["crl_number"] = serde_json::json!(g + 5);
    std::fs::write(&table, serde_json::to_vec(&half).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        json(&get_http(feed, "/generation", None).await.2)["generation"].as_i64(),
        Some(g)
    );
    assert_eq!(get_http(feed, "/partners.json", None).await.2, whole);
    std::fs::write(&table, &whole).unwrap();

    // A change: the partner table's ETag moves with it.
    cluster.ok(&["registry", "publish"]);
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        get_http(feed, &format!("/generation?after={g}"), None),
    )
    .await
    .expect("the publish moved the generation within the long poll");
    assert_eq!(status, 200);
    assert!(json(&body)["generation"].as_i64().unwrap() > g);
    assert_eq!(get_http(feed, "/partners.json", Some(&etag)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_keeps_its_last_copy_while_the_control_plane_is_down_and_says_so() {
    let up = Upstream::start().await;
    let cluster = Cluster::new(up.addr);
    cluster.ok(&["ca", "init"]);
    let control = cluster.start_control_plane().await;
    let gw = cluster.gateway("gw");
    let _served = gw.serve();
    let (cert, key) = cluster.onboard("initech");
    let leaf = common::pki::leaf_from_files(&cert, &key);
    let serves = || async {
        call(
            gw.listen,
            cluster.env.tls_config_for(&leaf),
            get("/v1/orders/2"),
        )
        .await
        .is_ok_and(|a| a.status == 200)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !serves().await {
        assert!(
            Instant::now() < deadline,
            "the onboarded partner is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let source = format!("http://{}", cluster.feed);
    let up_line = format!("certgate_lifecycle_source_up{{source=\"{source}\"}} 1");
    scrape_until(gw.admin, &[up_line.as_str()]).await;

    drop(control);

    // Within a few retries the gateway reports the control plane down...
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        let status = json(&get_http(gw.admin, "/status", None).await.2);
        if status["lifecycle_source"]["up"] == false {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still reports the control plane up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reported = &status["lifecycle_source"];
    assert!(
        reported["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{reported}"
    );
    assert!(reported["last_success"].is_string(), "{reported}");
    let down_line = format!("certgate_lifecycle_source_up{{source=\"{source}\"}} 0");
    scrape_until(gw.admin, &[down_line.as_str()]).await;

    // ...and keeps serving from its copy: the partner table, the CA, the CRL.
    assert!(serves().await, "the last copy no longer serves the partner");
    assert_eq!(get_http(gw.admin, "/readyz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_never_steps_back_to_an_older_generation() {
    let up = Upstream::start().await;
    let cluster = Cluster::new(up.addr);
    cluster.ok(&["ca", "init"]);
    // An older state of the registry, as a lagging replica or a restored backup would serve.
    let old = cluster.env.path("old-state");
    copy_dir(&cluster.env.path("control-state"), &old);
    cluster.ok(&["registry", "publish"]);
    cluster.ok(&["registry", "publish"]);
    let control = cluster.start_control_plane().await;
    let newest = json(&get_http(cluster.feed, "/generation", None).await.2)["generation"]
        .as_i64()
        .unwrap();
    let gw = cluster.gateway("gw");
    let _served = gw.serve();
    let copy = gw.state.join("published/crl.der");
    let held = std::fs::read(&copy).unwrap();
    assert_eq!(
        held,
        std::fs::read(cluster.env.path("control-state/published/crl.der")).unwrap()
    );

    // The control plane goes away; the gateway notices.
    drop(control);
    let source_up = || async {
        json(&get_http(gw.admin, "/status", None).await.2)["lifecycle_source"]["up"] == true
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while source_up().await {
        assert!(
            Instant::now() < deadline,
            "the gateway still reports the control plane up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It comes back on the older state, on the same address.
    let yaml = std::fs::read_to_string(&cluster.control_config)
        .unwrap()
        .replace("state_dir: control-state", "state_dir: old-state");
    std::fs::write(&cluster.control_config, yaml).unwrap();
    let _older = cluster.start_control_plane().await;
    let older = json(&get_http(cluster.feed, "/generation", None).await.2)["generation"]
        .as_i64()
        .unwrap();
    assert!(older < newest, "{older} < {newest}");

    // The gateway reaches it again, and keeps the newer copy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !source_up().await {
        assert!(
            Instant::now() < deadline,
            "the gateway did not reach the control plane again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = json(&get_http(gw.admin, "/status", None).await.2);
    assert_eq!(
        status["lifecycle_source"]["generation"].as_i64(),
        Some(newest),
        "{status}"
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        held,
        "the CRL copy stepped back"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Behind a load balancer the three files may come from two replicas a moment apart: a partner
/// table of the new generation with the CRL of the old one. The mirror writes nothing until all
/// three name one generation, so its copy never claims a generation whose CRL it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_never_torn_between_two_generations() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let up = Upstream::start().await;
    let cluster = Cluster::new(up.addr);
    cluster.ok(&["ca", "init"]);
    let old = cluster.env.path("old-state");
    copy_dir(&cluster.env.path("control-state"), &old);
    cluster.ok(&["registry", "publish"]);
    let new = cluster.env.path("control-state");
    let generation_of = |dir: &Path| {
        json(&std::fs::read(dir.join("published/partners.json")).unwrap())["crl_number"]
            .as_i64()
            .unwrap()
    };
    let (g_old, g_new) = (generation_of(&old), generation_of(&new));
    assert!(g_old < g_new);

    // A feed whose CRL lags one generation behind until `caught_up`.
    let caught_up = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed = listener.local_addr().unwrap();
    let (old_dir, new_dir, flag) = (old.clone(), new.clone(), caught_up.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (old_dir, new_dir, flag) = (old_dir.clone(), new_dir.clone(), flag.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let lagging = !flag.load(Ordering::SeqCst);
                        let (dir, g) = match req.uri().path() {
                            "/crl/lifecycle.crl" if lagging => (&old_dir, g_old),
                            _ => (&new_dir, g_new),
                        };
                        let file = match req.uri().path() {
                            "/ca.pem" => dir.join("ca/ca.pem"),
                            "/partners.json" => dir.join("published/partners.json"),
                            _ => dir.join("published/crl.der"),
                        };
                        let body = std::fs::read(file).unwrap();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("x-certgate-generation", g.to_string())
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });

    let copy = cluster.env.path("gw-state");
    let source = certgate::config::model::Endpoint {
        tls: false,
        authority: feed.to_string(),
    };
    let mut mirror = certgate::feed::mirror::Mirror::new(
        &source,
        "lifecycle",
        certgate::lifecycle::StateDir::new(&copy),
    );
    let torn = mirror
        .sync()
        .await
        .expect_err("a torn publication was taken");
    assert!(
        certgate::error_chain(&torn).contains(&format!("generation {g_old}, but {g_new}")),
        "{}",
        certgate::error_chain(&torn)
    );
    assert!(!copy.join("published").exists() && !copy.join("ca").exists());
    assert!(!mirror.has_copy());
    assert_eq!(mirror.status().get().generation, None);

    caught_up.store(true, Ordering::SeqCst);
    assert_eq!(mirror.sync().await.unwrap(), g_new);
    for file in ["ca/ca.pem", "published/partners.json", "published/crl.der"] {
        assert_eq!(
            std::fs::read(copy.join(file)).unwrap(),
            std::fs::read(new.join(file)).unwrap(),
            "{file}"
        );
    }
}
