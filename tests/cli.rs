//! The `certgate` binary as operators and partners use it: `check`, `inspect`, `serve` driven by
//! the real `curl`, and a 100 MB stream that must not grow the gateway's memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn certgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `certgate serve` process, killed on drop.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &Path) -> Served {
    let child = certgate()
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let yaml = std::fs::read_to_string(config).unwrap();
    let port: u16 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "certgate did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, addr }
}

fn config_on_free_port(env: &Env, upstream: SocketAddr) -> std::path::PathBuf {
    let yaml = env
        .config(upstream, "")
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{}\"", free_port()),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{}\"", free_port()),
            1,
        );
    write_file(env.dir.path(), "certgate.yaml", &yaml)
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_a_partner_certificate_reaches_the_upstream() {
    let env = Env::new();
    let up = Upstream::start().await;
    let config = config_on_free_port(&env, up.addr);
    let served = serve(&config);
    let (cert, key) = env.acme().write(env.dir.path(), "acme");
    let url = format!("https://localhost:{}/v1/orders/42", served.addr.port());
    let ca = env.path("ca.pem").display().to_string();
    let with_cert = vec![
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
        url.clone(),
    ];
    let out = curl(&ca, with_cert).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "upstream saw /v1/orders/42\n200");
    assert_eq!(up.last().headers["x-partner-id"], "acme");

    // Without a certificate curl is refused in the handshake and the upstream sees nothing more.
    let before = up.count();
    let out = curl(&ca, vec![url]).await;
    assert!(
        !out.status.success(),
        "curl without a certificate must fail"
    );
    assert_eq!(up.count(), before);
}

/// Runs the real `curl` off the async runtime (the gateway under test shares it).
async fn curl(ca: &str, args: Vec<String>) -> std::process::Output {
    let ca = ca.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
                &ca,
            ])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let out = certgate()
        .args(["check", "--config", "config/certgate.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn check_reports_every_problem_with_its_place_and_exits_1() {
    let env = Env::new();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let yaml = env
        .config(upstream, "")
        .replace("    upstream: dead\n", "    upstream: nowhere\n")
        .replace("key: server-key.pem", "key: missing-key.pem");
    let config = write_file(env.dir.path(), "broken.yaml", &yaml);
    let out = certgate()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = yaml
        .lines()
        .position(|l| l.contains("upstream: nowhere"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("broken.yaml:{line}:")),
        "the unknown upstream is located at line {line}:\n{stderr}"
    );
    assert!(stderr.contains("nowhere"), "{stderr}");

    // With the YAML fixed, the missing key file is named by its path.
    let yaml = yaml.replace("    upstream: nowhere\n", "    upstream: dead\n");
    let config = write_file(env.dir.path(), "broken.yaml", &yaml);
    let out = certgate()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing-key.pem"), "{stderr}");
}

#[test]
fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let env = Env::new();
    let other = env.root.server();
    std::fs::write(env.path("server-key.pem"), &other.key_pem).unwrap();
    let config = write_file(
        env.dir.path(),
        "c.yaml",
        &env.config("127.0.0.1:9".parse().unwrap(), ""),
    );
    let out = certgate()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server-key.pem") && stderr.contains("does not match"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_start_on_the_same_errors() {
    let env = Env::new();
    let yaml = env
        .config("127.0.0.1:9".parse().unwrap(), "")
        .replace("    upstream: dead\n", "    upstream: nowhere\n");
    let config = write_file(env.dir.path(), "broken.yaml", &yaml);
    let out = certgate()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

/// `serve` validated the configuration by building a whole gateway and then started another: every
/// CRL was read, verified and logged twice.
#[test]
fn serve_loads_and_logs_each_crl_once_at_start() {
    let env = Env::new();
    std::fs::write(env.path("ca.crl"), env.root.crl(&[7], 1)).unwrap();
    let yaml = env
        .config_with_bundle(
            "127.0.0.1:9".parse().unwrap(),
            "        crl:\n          - path: ca.crl\n",
            "",
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{}\"", free_port()),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{}\"", free_port()),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    let log = env.path("certgate.log");
    let child = certgate()
        .arg("--log-file")
        .arg(&log)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let served = Served {
        child,
        addr: "127.0.0.1:9".parse().unwrap(),
    };
    // The start line comes after the CRLs are in force.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("certgate is accepting partner connections") {
            break text;
        }
        assert!(Instant::now() < deadline, "certgate did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(served);
    let loaded = text
        .lines()
        .filter(|l| l.contains("loaded CRL from"))
        .count();
    assert_eq!(loaded, 1, "{text}");
}

#[test]
fn inspect_prints_the_identity_and_the_partner_it_maps_to() {
    let env = Env::new();
    let acme = env.acme();
    let (cert, _) = acme.write(env.dir.path(), "acme");
    let config = write_file(
        env.dir.path(),
        "c.yaml",
        &env.config("127.0.0.1:9".parse().unwrap(), ""),
    );
    let out = certgate()
        .arg("inspect")
        .arg(&cert)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CN=acme-billing"), "{stdout}");
    assert!(stdout.contains(&acme.fingerprint_hex()), "{stdout}");
    assert!(
        stdout.contains("spiffe://partners.example.com/acme"),
        "{stdout}"
    );
    assert!(stdout.contains("clientAuth"), "{stdout}");
    assert!(
        stdout.contains("partner:      acme (matched by spiffe)"),
        "{stdout}"
    );
    assert!(stdout.contains("orders-read"), "{stdout}");
    assert!(
        !stdout.contains("payments-write"),
        "acme may not call payments: {stdout}"
    );
}

/// Peak resident memory of a process, from /proc (kB).
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_body_streams_both_ways_without_growing_gateway_memory() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    const SIZE: usize = 100 * 1024 * 1024;
    let env = Env::new();
    let up = Upstream::start().await;
    let config = config_on_free_port(&env, up.addr);
    let served = serve(&config);
    let client = env.tls_config_for(&env.acme());

    // Warm up so the baseline includes TLS, pools and buffers.
    let a = call(
        served.addr,
        client.clone(),
        get("/v1/orders/download/1048576"),
    )
    .await
    .unwrap();
    assert_eq!(a.body.len(), 1024 * 1024);
    let baseline = vm_hwm_kb(served.child.id());

    // Upload: the client streams 100 MB, the upstream counts it.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let stream = futures_util::stream::iter(
        (0..SIZE / chunk.len())
            .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let tls = connect(served.addr, "localhost", client.clone())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/orders/count-body")
        .header("host", "localhost")
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{{\"bytes\":{SIZE}}}")
    );

    // Download: the upstream streams 100 MB, the client counts it.
    let tls = connect(served.addr, "localhost", client).await.unwrap();
    let mut sender = handshake_http(tls).await.unwrap();
    let resp = sender
        .send(get(&format!("/v1/orders/download/{SIZE}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len();
        }
    }
    assert_eq!(total, SIZE);

    let peak = vm_hwm_kb(served.child.id());
    let growth_mb = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    assert!(
        growth_mb < 32.0,
        "gateway peak memory grew by {growth_mb:.1} MB while streaming 2 × 100 MB (baseline {baseline} kB)"
    );
    let _ = std::io::stderr().write_all(
        format!("streaming 2 x 100 MB: gateway peak RSS grew {growth_mb:.1} MB\n").as_bytes(),
    );
}

/// The README's first command, as a newcomer runs it: `certgate demo` with its default (relative)
/// state folder, then the curl commands it prints, pasted into a shell, and its revoke of the
/// partner it onboarded through the lifecycle.
#[test]
fn the_demo_serves_the_calls_it_prints() {
    let cwd = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_port(), free_port());
    let mut child = certgate()
        .current_dir(cwd.path())
        .args(["demo", "--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut commands = Vec::new();
    let mut revoke = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while commands.len() < 4 || revoke.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!(
                "the demo printed {} curl command(s) in 30 s",
                commands.len()
            );
        };
        if line.starts_with("curl ") {
            commands.push(line);
        } else if line.contains(" partner revoke initech ") {
            revoke = Some(line);
        }
    }
    let run = |command: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{command} -w '\\n%{{http_code}}'"))
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };
    let allowed = run(&commands[0]);
    let body = String::from_utf8_lossy(&allowed.stdout);
    let stopped = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    // The echo upstream answers with what it received, as JSON: the partner id and, as the
    // README promises, the Client-Cert header carrying acme's own certificate (RFC 9440).
    let acme_der = {
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        let pem = std::fs::read(cwd.path().join(".certgate-demo/demo-acme.pem")).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    };
    let expected_client_cert = format!(
        ":{}:",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &acme_der)
    );
    let echoed = body
        .strip_suffix("\n200")
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .is_some_and(|json| {
            json["headers"]["x-partner-id"] == "acme"
                && json["headers"]["client-cert"] == expected_client_cert.as_str()
        });
    if !body.ends_with("\n200") || !echoed {
        stopped(&mut child);
        panic!(
            "call 1: {body} {}",
            String::from_utf8_lossy(&allowed.stderr)
        );
    }
    // The partner the demo onboarded through the lifecycle is served, until the printed revoke.
    let onboarded = String::from_utf8_lossy(&run(&commands[3]).stdout).into_owned();
    let revoked_now = Command::new("sh")
        .arg("-c")
        .arg(revoke.unwrap())
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let cut = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !run(&commands[3]).status.success()
    });
    let denied = String::from_utf8_lossy(&run(&commands[1]).stdout).into_owned();
    let revoked = run(&commands[2]);
    // curl reads the alert (the gateway lingers after refusing, see `tls::handshake::Refused`),
    // and the gateway's own audit line (stdout, as the demo runs) says why it refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = std::iter::from_fn(|| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })
    .find(|l| l.contains(r#""event":"handshake_refused""#));
    stopped(&mut child);
    assert!(
        onboarded.ends_with("\n200") && onboarded.contains(r#""x-partner-id": "initech""#),
        "call 4: {onboarded}"
    );
    assert!(
        revoked_now.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked_now.stderr)
    );
    assert!(
        cut,
        "the revoked lifecycle partner was still served after 5 s"
    );
    assert!(denied.ends_with("\n403"), "call 2: {denied}");
    assert!(denied.contains("scope_denied"), "call 2: {denied}");
    assert!(
        !revoked.status.success(),
        "call 3 must fail in the handshake: {}",
        String::from_utf8_lossy(&revoked.stdout)
    );
    let told = String::from_utf8_lossy(&revoked.stderr);
    assert!(
        told.contains("alert certificate revoked"),
        "curl must be told why: {told}"
    );
    let audit = audit.expect("no handshake_refused audit line within 10 s");
    assert!(audit.contains(r#""reason":"revoked""#), "{audit}");
}

/// `certgate check` on the test config with a server certificate from `server` and, with
/// `crl`, a CRL for the partner bundle; returns exit code, stdout and stderr.
fn check_with(env: &Env, server: &Leaf, crl: bool, strict: bool) -> (i32, String, String) {
    check_with_extra(env, server, crl, strict, "")
}

/// [`check_with`], with `extra` appended to the config (after its routes).
fn check_with_extra(
    env: &Env,
    server: &Leaf,
    crl: bool,
    strict: bool,
    extra: &str,
) -> (i32, String, String) {
    server.write(env.dir.path(), "server");
    let bundle = if crl {
        std::fs::write(env.path("partner-ca.crl"), env.root.crl(&[], 1)).unwrap();
        "        crl:\n          - path: partner-ca.crl\n"
    } else {
        ""
    };
    let yaml = env.config_with_bundle("127.0.0.1:9".parse().unwrap(), bundle, extra);
    let config = write_file(env.dir.path(), "c.yaml", &yaml);
    let mut cmd = certgate();
    cmd.arg("check").arg("--config").arg(&config);
    if strict {
        cmd.arg("--strict");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn server_cert(env: &Env, days: Option<i64>) -> Leaf {
    let leaf = env
        .root
        .leaf("localhost")
        .dns("localhost")
        .server_auth_only();
    match days {
        Some(days) => {
            leaf.valid_until(time::OffsetDateTime::now_utc() + time::Duration::days(days))
        }
        None => leaf.expired(),
    }
    .issue()
}

#[test]
fn check_warns_about_a_server_certificate_that_expires_within_30_days_or_has_expired() {
    let env = Env::new();
    let server = env.path("server.pem").display().to_string();

    let (code, stdout, stderr) = check_with(&env, &server_cert(&env, Some(10)), true, false);
    assert_eq!(code, 0, "a warning is no problem: {stderr}");
    assert!(
        stdout.contains("ok — ") && stdout.contains("1 warning(s)"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("warning: {server}: the server certificate expires at"))
            // Ten days from issue, seen a moment later (and truncated to whole seconds).
            && (stderr.contains("in 9 day(s)") || stderr.contains("in 10 day(s)")),
        "{stderr}"
    );

    let (code, _, stderr) = check_with(&env, &server_cert(&env, None), true, false);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {server}: the server certificate expired at"
        )),
        "{stderr}"
    );

    let (code, stdout, stderr) = check_with(&env, &server_cert(&env, Some(90)), true, false);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 warning(s)"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn check_warns_about_a_trust_bundle_without_revocation_and_strict_makes_warnings_fail() {
    let env = Env::new();
    let good = server_cert(&env, Some(90));
    let (code, _, stderr) = check_with(&env, &good, false, false);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("server.client_auth.trust_bundles[0].name: trust bundle `partner-ca` has no revocation source"),
        "{stderr}"
    );

    let (code, _, stderr) = check_with(&env, &good, false, true);
    assert_eq!(code, 1, "--strict fails on a warning: {stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");

    // Each of the other warnings fails --strict too.
    let soon = server_cert(&env, Some(10));
    assert_eq!(check_with(&env, &soon, true, true).0, 1);
    let typo =
        "  - name: typo\n    path_prefix: /v1/typo\n    scope: ordrs:read\n    upstream: orders\n";
    let (code, _, stderr) = check_with_extra(&env, &good, true, true, typo);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no partner holds scope `ordrs:read`"),
        "{stderr}"
    );

    // Nothing to warn about: --strict passes.
    let (code, _, stderr) = check_with(&env, &good, true, true);
    assert_eq!(code, 0, "{stderr}");
}
