//! The README's walkthrough, run as written: the `openssl` commands of "Onboard a partner with
//! your own openssl CA" make the PKI, its minimal configuration (with `certs/` dropped from the
//! paths, as it says) is checked, inspected and served by the real binary, `curl` calls through it,
//! and the README's revoke commands cut the partner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Upstream;

const README: &str = include_str!("../README.md");

/// The fenced blocks of `lang` in the README section that starts with `heading`.
fn blocks(heading: &str, lang: &str) -> Vec<String> {
    let start = README.find(heading).expect("README section");
    let section = &README[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    section
        .split(&fence)
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("closed fence")].to_owned())
        .collect()
}

fn run(dir: &Path, script: &str) -> Output {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "README commands failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn certgate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn curl(dir: &Path, port: u16) -> Output {
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--cert",
            "acme.pem",
            "--key",
            "acme-key.pem",
            "--cacert",
            "server-ca.pem",
        ])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/v1/orders/1"))
        .current_dir(dir)
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_onboards_and_revokes_a_partner() {
    let dir = tempfile::tempdir().unwrap();
    let heading = "### Onboard a partner with your own openssl CA";
    let sh = blocks(heading, "sh");
    assert_eq!(sh.len(), 3, "setup, serve and revoke blocks");
    run(dir.path(), &sh[0]);

    let upstream = Upstream::start().await;
    let port = free_port();
    let yaml = blocks("## Configuration", "yaml")
        .into_iter()
        .next()
        .expect("a minimal configuration")
        .replace("certs/", "")
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{port}"))
        .replace("http://127.0.0.1:9000", &format!("http://{}", upstream.addr))
        // The default admin port may be taken by another test running beside this one.
        + "admin: { listen: \"127.0.0.1:0\" }\n";
    std::fs::write(dir.path().join("certgate.yaml"), yaml).unwrap();

    let check = certgate(dir.path(), &["check", "--config", "certgate.yaml"]);
    assert!(check.status.success(), "{check:?}");
    let inspect = certgate(
        dir.path(),
        &["inspect", "acme.pem", "--config", "certgate.yaml"],
    );
    let verdict = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{verdict}");
    assert!(
        verdict.starts_with("ACCEPTED as partner acme"),
        "inspect said: {verdict}"
    );

    let _serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["serve", "--config", "certgate.yaml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = String::new();
    while Instant::now() < deadline {
        status = String::from_utf8_lossy(&curl(dir.path(), port).stdout).into_owned();
        if status == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "200", "acme is served once certgate is up");

    run(dir.path(), &sh[2]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    while refused.is_none() && Instant::now() < deadline {
        let out = curl(dir.path(), port);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("certificate revoked") {
            refused = Some(stderr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused.is_some(), "acme's handshake is refused as revoked");
}
