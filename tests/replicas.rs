//! Several control-plane replicas on one PostgreSQL registry, as separate processes: two
//! `certgate control-plane` replicas, each with a state folder of its own (the CA copied into
//! both, as a Secret mounted into every pod), gateways following one replica or both behind a
//! loopback HAProxy, the lifecycle CLI run against either replica's configuration, and a real
//! PostgreSQL server (tests/common/postgres.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::feed::*;
use common::postgres::PgDatabase;
use common::*;

// === helpers ===

/// One control-plane replica: its configuration, state folder and feed address.
struct Replica {
    config: PathBuf,
    state: PathBuf,
    feed: SocketAddr,
}

/// Two replicas on one PostgreSQL database, the CA created through the first and copied into
/// the second's state folder.
struct Replicas {
    env: Env,
    pg: PgDatabase,
    a: Replica,
    b: Replica,
}

impl Replicas {
    fn new(upstream: SocketAddr) -> Replicas {
        let env = Env::new();
        let pg = PgDatabase::create();
        let replica = |name: &str| {
            let lifecycle = format!(
                "lifecycle:\n  state_dir: {name}-state\n  database: {}\n",
                pg.url
            );
            let yaml = env.config(upstream, &lifecycle);
            Replica {
                config: write_file(env.dir.path(), &format!("{name}.yaml"), &yaml),
                state: env.path(&format!("{name}-state")),
                feed: free_addr(),
            }
        };
        let (a, b) = (replica("replica-a"), replica("replica-b"));
        common::cli::ok(&a.config, &["ca", "init"]);
        copy_dir(&a.state.join("ca"), &b.state.join("ca"));
        Replicas { env, pg, a, b }
    }

    /// Events in the registry: (id, action, partner), in order.
    fn events(&self) -> Vec<(i64, String, String)> {
        self.pg
            .psql("SELECT id, action, partner FROM events ORDER BY id")
            .lines()
            .map(|l| {
                let mut f = l.split('|');
                (
                    f.next().unwrap().parse().unwrap(),
                    f.next().unwrap().to_owned(),
                    f.next().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Waits until both feeds serve the same generation, at least `at_least`; returns it.
async fn same_generation(a: SocketAddr, b: SocketAddr, at_least: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ga, gb) = (generation(a).await, generation(b).await);
        if let (Some(ga), Some(gb)) = (ga, gb) {
            if ga == gb && ga >= at_least {
                return ga;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the replicas serve generations {ga:?} and {gb:?}, not one at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `certgate partner revoke ID` through `config`, in the background.
fn revoke(config: &Path, id: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let config = config.to_owned();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["partner", "revoke", &id, "--reason", "keyCompromise"])
            .args(["--actor", "dave", "--config"])
            .arg(config)
            .output()
            .unwrap()
    })
}

/// Waits until `pg_stat_activity` shows the session named `app` waiting on a lock of `kind`
/// (`advisory`, `transactionid`).
async fn waits_on(pg: &PgDatabase, app: &str, kind: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND wait_event_type = 'Lock' AND wait_event = '{kind}'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql(&sql).trim() != "1" {
        assert!(
            Instant::now() < deadline,
            "{app} does not wait on a {kind} lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_gateways_following_the_other() {
    let up = Upstream::start().await;
    let r = Replicas::new(up.addr);
    let _a = start_control_plane(&r.a.config, r.a.feed).await;
    let _b = start_control_plane(&r.b.config, r.b.feed).await;
    let gw1 = Gateway::new(&r.env, up.addr, "gw1", r.a.feed);
    let gw2 = Gateway::new(&r.env, up.addr, "gw2", r.b.feed);
    let _served = [gw1.serve(), gw2.serve()];

    // Onboarded through replica A: the gateway following B serves the partner too.
    let (cert, key) = onboard(&r.env, &r.a.config, "initech");
    let leaf = common::pki::leaf_from_files(&cert, &key);
    for gw in [&gw1, &gw2] {
        until_served(&r.env, gw.listen, &leaf, Duration::from_secs(15)).await;
    }

    // Both replicas serve the same generation, byte for byte and with the same ETags, though
    // B never published into its own folder.
    let g = same_generation(r.a.feed, r.b.feed, 1).await;
    for path in ["/ca.pem", "/partners.json", "/crl/lifecycle.crl"] {
        let (sa, ea, ba) = get_http(r.a.feed, path, None).await;
        let (sb, eb, bb) = get_http(r.b.feed, path, None).await;
        assert_eq!((sa, sb), (200, 200), "{path}");
        assert_eq!(ba, bb, "{path} differs between the replicas");
        assert_eq!(ea, eb, "{path}: the ETags differ");
        assert_eq!(get_http(r.b.feed, path, ea.as_deref()).await.0, 304);
    }
    assert_eq!(
        json(&get_http(r.b.feed, "/partners.json", None).await.2)["crl_number"].as_i64(),
        Some(g)
    );
    assert!(
        !r.b.state.join("published").exists(),
        "replica B's folder holds published files: it should serve from the registry"
    );

    // Revoked through replica B: the open connections on both gateways are cut.
    let clients = [
        keep_alive(&r.env, gw1.listen, &leaf).await,
        keep_alive(&r.env, gw2.listen, &leaf).await,
    ];
    assert!(
        eventually(Duration::from_secs(5), || up.count() >= 10).await,
        "both keep-alive clients are being served"
    );
    let started = Instant::now();
    let revoked = revoke(&r.b.config, "initech");
    for (gw, client) in [&gw1, &gw2].into_iter().zip(clients) {
        let (served, ended, why) = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .unwrap_or_else(|_| panic!("gateway {}: not cut within 10 s of the revoke", gw.listen))
            .unwrap();
        assert!(served >= 1);
        eprintln!(
            "gateway {}: revoke through replica B → cut after {:?} ({why})",
            gw.listen,
            ended.saturating_duration_since(started)
        );
    }
    let revoked = revoked.await.unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let after = same_generation(r.a.feed, r.b.feed, g + 1).await;
    for gw in [&gw1, &gw2] {
        assert!(!serves(&r.env, gw.listen, &leaf).await);
        let source = gw.source_status().await;
        assert_eq!(source["up"], true, "{source}");
        assert_eq!(source["generation"].as_i64(), Some(after), "{source}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_fails_over_between_replicas_and_keeps_its_copy_when_both_are_down() {
    let up = Upstream::start().await;
    let r = Replicas::new(up.addr);
    let mut a = start_control_plane(&r.a.config, r.a.feed).await;
    let mut b = start_control_plane(&r.b.config, r.b.feed).await;
    let lb = HaProxy::start(r.env.dir.path(), "feed", &[r.a.feed, r.b.feed]);
    let gw = Gateway::new(&r.env, up.addr, "gw", lb.addr);
    let _served = gw.serve();

    let (cert, key) = onboard(&r.env, &r.a.config, "initech");
    let initech = common::pki::leaf_from_files(&cert, &key);
    let (cert, key) = onboard(&r.env, &r.b.config, "hooli");
    let hooli = common::pki::leaf_from_files(&cert, &key);
    until_served(&r.env, gw.listen, &initech, Duration::from_secs(15)).await;
    until_served(&r.env, gw.listen, &hooli, Duration::from_secs(15)).await;
    let client = keep_alive(&r.env, gw.listen, &initech).await;

    // Replica A goes away; a revoke through B still reaches the gateway, through the balancer.
    a.kill();
    let started = Instant::now();
    let revoked = revoke(&r.b.config, "initech").await.unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let (_, ended, why) = tokio::time::timeout(Duration::from_secs(15), client)
        .await
        .expect("the revoke through replica B did not cut the connection within 15 s")
        .unwrap();
    eprintln!(
        "replica A down: revoke through B → cut after {:?} ({why})",
        ended.saturating_duration_since(started)
    );
    let newest = generation(r.b.feed).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let source = gw.source_status().await;
        if source["up"] == true && source["generation"].as_i64() == Some(newest) {
            break;
        }
        assert!(Instant::now() < deadline, "{source}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both down: the gateway says so, and serves from its last copy, revocation included.
    b.kill();
    let deadline = Instant::now() + Duration::from_secs(40);
    let source = loop {
        let source = gw.source_status().await;
        if source["up"] == false {
            break source;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still reports the control plane up: {source}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(source["source"], format!("http://{}", lb.addr));
    assert_eq!(source["generation"].as_i64(), Some(newest), "{source}");
    assert!(
        source["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{source}"
    );
    let down = format!(
        "certgate_lifecycle_source_up{{source=\"http://{}\"}} 0",
        lb.addr
    );
    let held = format!(
        "certgate_lifecycle_source_generation{{source=\"http://{}\"}} {newest}",
        lb.addr
    );
    scrape_until(gw.admin, &[down.as_str(), held.as_str()]).await;
    assert!(
        serves(&r.env, gw.listen, &hooli).await,
        "the last copy no longer serves hooli"
    );
    assert!(
        !serves(&r.env, gw.listen, &initech).await,
        "the revoked partner is served again"
    );
    assert_eq!(get_http(gw.admin, "/readyz", None).await.0, 200);
}

/// Approvals in flight on both replicas while one replica's process (and the approval running
/// in its pod) is killed and another approval's database connection is terminated: the chain
/// holds every approval that reported success exactly once and none of the interrupted ones,
/// and retrying those adds each exactly once.
///
/// Made deterministic with a held transaction: a `psql` session inserts the next event id and
/// keeps its transaction open, so the first approval, holding the registry's write lock, waits
/// inside its own transaction on that row; the others queue on the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_and_a_connection_lost_mid_approval_lose_and_duplicate_no_event() {
    let up = Upstream::start().await;
    let r = Replicas::new(up.addr);
    let mut a = start_control_plane(&r.a.config, r.a.feed).await;
    let _b = start_control_plane(&r.b.config, r.b.feed).await;
    for (i, id) in ["p1", "p2", "p3"].into_iter().enumerate() {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        let config = if i % 2 == 0 { &r.a.config } else { &r.b.config };
        common::cli::ok(
            config,
            &[
                "partner",
                "register",
                id,
                "--owner",
                "ops@example.com",
                "--scopes",
                "orders:read",
                "--spiffe",
                &spiffe,
                "--actor",
                "alice",
            ],
        );
    }
    let before = r.events();
    assert_eq!(before.len(), 3);
    let generation_before = same_generation(r.a.feed, r.b.feed, 1).await;

    let mut holder = r.pg.session("holder");
    writeln!(
        holder.stdin.as_mut().unwrap(),
        "BEGIN; INSERT INTO events (id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash) VALUES ({}, 't', 'holder', 'hold', 'none', NULL, '{{}}', '{{}}', 'x', 'x');",
        before.len() + 1
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r
        .pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'holder' AND state = 'idle in transaction'")
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "the holder's transaction did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let approve = |config: &Path, id: &str, app: &str| {
        Process(
            Command::new(env!("CARGO_BIN_EXE_certgate"))
                .args(["partner", "approve", id, "--actor", "bob", "--config"])
                .arg(config)
                .env(
                    "CERTGATE_LIFECYCLE_DATABASE",
                    format!("{}?application_name={app}", r.pg.url),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    // In replica A's pod: holds the write lock and waits on the held row, mid-transaction.
    let mut in_a = approve(&r.a.config, "p1", "approve-p1");
    waits_on(&r.pg, "approve-p1", "transactionid").await;
    // In replica B's pod: queued on the write lock.
    let mut cut = approve(&r.b.config, "p2", "approve-p2");
    waits_on(&r.pg, "approve-p2", "advisory").await;
    let mut survivor = approve(&r.b.config, "p3", "approve-p3");
    waits_on(&r.pg, "approve-p3", "advisory").await;

    // Replica A's process and the approval in its pod die; p2's connection is terminated.
    in_a.kill();
    a.kill();
    let terminated = r.pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'approve-p2'",
    );
    assert_eq!(terminated.trim(), "1");
    // The held row goes away; what still runs proceeds.
    writeln!(holder.stdin.as_mut().unwrap(), "ROLLBACK;").unwrap();

    let finished = |p: &mut Process| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = p.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = p.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (status, err);
            }
            assert!(Instant::now() < deadline, "an approval did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, err) = finished(&mut cut);
    assert!(
        !status.success(),
        "the approval whose connection was cut reported success"
    );
    eprintln!("approval with a terminated connection: {}", err.trim());
    let (status, err) = finished(&mut survivor);
    assert!(status.success(), "{err}");
    let _ = holder.kill();
    let _ = holder.wait();

    // Exactly one approval landed: p3's. Neither interrupted one left a trace.
    let events = r.events();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3].1, "approve");
    assert_eq!(events[3].2, "p3");
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    let verify = common::cli::ok(&r.b.config, &["registry", "verify"]);
    assert!(verify.contains("4 events"), "{verify}");

    // Retried through the surviving replica, each interrupted approval lands once.
    common::cli::ok(&r.b.config, &["partner", "approve", "p1", "--actor", "bob"]);
    common::cli::ok(&r.b.config, &["partner", "approve", "p2", "--actor", "bob"]);
    let events = r.events();
    let approvals: Vec<&str> = events
        .iter()
        .filter(|e| e.1 == "approve")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(approvals, vec!["p3", "p1", "p2"]);
    assert_eq!(events.len(), 6);
    let verify = common::cli::ok(&r.b.config, &["registry", "verify"]);
    assert!(verify.contains("6 events"), "{verify}");
    assert!(
        common::cli::run(&r.b.config, &["partner", "approve", "p1", "--actor", "bob"])
            .status
            .code()
            != Some(0)
    );
    assert_eq!(r.events().len(), 6, "a repeated approval added an event");

    // The surviving replica serves all three approved partners.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = generation(r.b.feed).await.unwrap_or(0);
        let table = json(&get_http(r.b.feed, "/partners.json", None).await.2);
        let ids: Vec<&str> = table["partners"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["id"].as_str()).collect())
            .unwrap_or_default();
        if g > generation_before && ids == ["p1", "p2", "p3"] {
            break;
        }
        assert!(Instant::now() < deadline, "replica B serves {ids:?} at {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica that cannot read the registry keeps its publication but reports not ready, so a
/// Service stops sending it gateways it would hold on an old generation; it is ready again as
/// soon as it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_read_the_registry_is_not_ready_until_it_can() {
    let up = Upstream::start().await;
    let r = Replicas::new(up.addr);
    let _a = start_control_plane(&r.a.config, r.a.feed).await;
    let g = generation(r.a.feed).await.unwrap();

    r.pg.psql("ALTER TABLE published RENAME TO published_away");
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, _, body) = get_http(r.a.feed, "/readyz", None).await;
        if status == 503 {
            break json(&body);
        }
        assert!(
            Instant::now() < deadline,
            "still ready without its registry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("registry")),
        "{body}"
    );
    // Still serving its last publication to gateways already on it.
    assert_eq!(generation(r.a.feed).await, Some(g));
    assert_eq!(get_http(r.a.feed, "/partners.json", None).await.0, 200);

    r.pg.psql("ALTER TABLE published_away RENAME TO published");
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_http(r.a.feed, "/readyz", None).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again with its registry back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
