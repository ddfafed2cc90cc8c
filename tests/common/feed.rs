//! Control planes, gateways and a load balancer as separate processes: what the control-plane
//! and replica suites start, ask and cut.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use super::{connect, get, handshake_http, Env, Leaf};

/// A free loopback port (bound, then released for the process that will listen on it).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process, killed on drop.
pub struct Process(pub Child);

impl Process {
    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `certgate control-plane --config CONFIG --listen FEED` and waits until `/readyz`
/// answers 200.
pub async fn start_control_plane(config: &Path, feed: SocketAddr) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["control-plane", "--config"])
        .arg(config)
        .args(["--listen", &feed.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(feed).is_ok()
            && get_http(feed, "/readyz", None).await.0 == 200
        {
            return process;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane on {feed} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway's ports, configuration and state folder.
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Gateway {
    /// A gateway configuration named `name` in `env`, mirroring the feed at `source` into
    /// `<name>-state`.
    pub fn new(env: &Env, upstream: SocketAddr, name: &str, source: SocketAddr) -> Gateway {
        let listen = free_addr();
        let admin = free_addr();
        let lifecycle =
            format!("lifecycle:\n  state_dir: {name}-state\n  source: http://{source}\n");
        let yaml = env
            .config(upstream, &lifecycle)
            .replacen(
                "listen: \"127.0.0.1:0\"",
                &format!("listen: \"{listen}\""),
                1,
            )
            .replacen(
                "listen: \"127.0.0.1:0\"",
                &format!("listen: \"{admin}\""),
                1,
            );
        let config = super::write_file(env.dir.path(), &format!("{name}.yaml"), &yaml);
        Gateway {
            listen,
            admin,
            config,
            state: env.path(&format!("{name}-state")),
        }
    }

    /// Starts `certgate serve` and waits until its partner port accepts.
    pub fn serve(&self) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let process = Process(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.listen).is_err() {
            assert!(Instant::now() < deadline, "certgate serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    /// `/status` → `lifecycle_source`.
    pub async fn source_status(&self) -> serde_json::Value {
        json(&get_http(self.admin, "/status", None).await.2)["lifecycle_source"].clone()
    }
}

/// Registers `id` with a SPIFFE identity and scope `orders:read` (actor alice), approves it
/// (bob), and issues it a certificate for a key made by `openssl` (carol), all through the
/// lifecycle configuration `config`; returns (certificate chain, key).
pub fn onboard(env: &Env, config: &Path, id: &str) -> (PathBuf, PathBuf) {
    let ok = |args: &[&str]| super::cli::ok(config, args);
    let spiffe = format!("spiffe://partners.example.com/{id}");
    ok(&[
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
    ]);
    ok(&["partner", "approve", id, "--actor", "bob"]);
    let key = env.path(&format!("{id}-key.pem"));
    let csr = env.path(&format!("{id}.csr"));
    let cert = env.path(&format!("{id}.pem"));
    super::openssl::partner_csr(&key, &csr, &format!("URI:{spiffe}"));
    ok(&[
        "partner",
        "issue",
        id,
        "--csr",
        csr.to_str().unwrap(),
        "--out",
        cert.to_str().unwrap(),
        "--actor",
        "carol",
    ]);
    (cert, key)
}

/// Plain HTTP GET: (status, ETag, body); status 0 when nothing answered.
pub async fn get_http(
    addr: SocketAddr,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return (0, None, Vec::new());
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
    else {
        return (0, None, Vec::new());
    };
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let Ok(resp) = sender
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
    else {
        return (0, None, Vec::new());
    };
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let Ok(body) = resp.into_body().collect().await else {
        return (0, None, Vec::new());
    };
    (status, etag, body.to_bytes().to_vec())
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

/// The generation a feed serves now.
pub async fn generation(feed: SocketAddr) -> Option<i64> {
    json(&get_http(feed, "/generation", None).await.2)["generation"].as_i64()
}

/// A keep-alive connection to `gw` as `leaf`, sending every 10 ms until it is refused or cut.
/// Resolves to (requests served, when it ended, why).
pub async fn keep_alive(
    env: &Env,
    gw: SocketAddr,
    leaf: &Leaf,
) -> tokio::task::JoinHandle<(usize, Instant, String)> {
    let tls = connect(gw, "localhost", env.tls_config_for(leaf))
        .await
        .unwrap();
    let mut sender = handshake_http(tls).await.unwrap();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            match sender.send(get("/v1/orders/1")).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                    if status != 200 {
                        let body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                        return (served, Instant::now(), format!("status {status} {body:?}"));
                    }
                    served += 1;
                }
                Err(e) => return (served, Instant::now(), e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Whether `leaf` is served `GET /v1/orders/…` by the gateway on `gw`.
pub async fn serves(env: &Env, gw: SocketAddr, leaf: &Leaf) -> bool {
    super::call(gw, env.tls_config_for(leaf), get("/v1/orders/7"))
        .await
        .is_ok_and(|a| a.status == 200)
}

/// Waits up to `within` for the gateway on `gw` to serve `leaf`.
pub async fn until_served(env: &Env, gw: SocketAddr, leaf: &Leaf, within: Duration) {
    let deadline = Instant::now() + within;
    while !serves(env, gw, leaf).await {
        assert!(
            Instant::now() < deadline,
            "gateway {gw} does not serve the partner within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy in TCP mode on a loopback port, round-robin over `backends` with a health check
/// every 200 ms, so a dead backend leaves the rotation within a fraction of a second and a
/// connection refused by one is redispatched to another.
pub struct HaProxy {
    pub addr: SocketAddr,
    _process: Process,
}

/// Where Debian installs it; `.ci/run` installs the package.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

impl HaProxy {
    pub fn start(dir: &Path, name: &str, backends: &[SocketAddr]) -> HaProxy {
        assert!(
            Path::new(HAPROXY).is_file(),
            "{HAPROXY} is missing: `apt-get install haproxy`"
        );
        let addr = free_addr();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server s{i} {b} check inter 200ms fall 1 rise 1\n"))
            .collect();
        let cfg = format!(
            "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\nlisten {name}\n  bind {addr}\n  balance roundrobin\n{servers}"
        );
        let file = super::write_file(dir, &format!("{name}.haproxy.cfg"), &cfg);
        let child = Command::new(HAPROXY)
            .args(["-db", "-q", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let process = Process(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        HaProxy {
            addr,
            _process: process,
        }
    }
}
