//! What a platform team packages: the container layout the Dockerfile copies (the reference
//! config's relative paths must resolve inside it), its health check, shell completions and the
//! man page generated from the parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn certgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The instructions of the Dockerfile's last stage (the image that ships), continuation lines
/// joined.
fn final_stage() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..].to_vec()
}

/// The JSON (exec form) argument list of the instruction starting with `keyword`.
fn exec_form(stage: &[String], keyword: &str) -> Vec<String> {
    let line = stage
        .iter()
        .find(|l| l.starts_with(keyword))
        .unwrap_or_else(|| panic!("the image has no {keyword}"));
    let json = &line[line.find('[').unwrap()..];
    serde_json::from_str(json).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The image's `/etc/certgate`, laid out under a temp dir with exactly what the Dockerfile's
/// `COPY` lines (from the build context) put there. It sits at `<temp>/etc/certgate` with
/// nothing else in the temp dir, so a relative path that escapes the layout finds nothing.
struct ImageEtc {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

fn image_etc(stage: &[String]) -> ImageEtc {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("etc/certgate");
    let mut copied = 0;
    for line in stage.iter().filter(|l| l.starts_with("COPY ")) {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        let (dest, sources) = args.split_last().unwrap();
        let Some(rel) = dest.strip_prefix("/etc/certgate") else {
            continue;
        };
        let dest = root.join(rel.trim_start_matches('/'));
        let into_dir = rel.ends_with('/') || sources.len() > 1;
        for source in sources {
            let from = repo().join(source.trim_end_matches('/'));
            if from.is_dir() {
                // `COPY dir/ dest/` copies the directory's contents into dest.
                copy_tree(&from, &dest);
            } else if into_dir {
                copy_tree(&from, &dest.join(from.file_name().unwrap()));
            } else {
                copy_tree(&from, &dest);
            }
            copied += 1;
        }
    }
    assert!(copied > 0, "the image copies nothing to /etc/certgate");
    ImageEtc { _temp: temp, root }
}

fn in_image(root: &Path, image_path: &str) -> PathBuf {
    root.join(image_path.strip_prefix("/etc/certgate/").unwrap())
}

#[test]
fn the_images_config_loads_with_the_files_the_image_ships_beside_it() {
    let stage = final_stage();
    let cmd = exec_form(&stage, "CMD");
    assert_eq!(cmd[0], "serve", "{cmd:?}");
    let config = &cmd[cmd.iter().position(|a| a == "--config").unwrap() + 1];
    let root = image_etc(&stage);
    let out = certgate()
        .args(["check", "--config"])
        .arg(in_image(&root.root, config))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`certgate check` of the image's {config}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_images_health_check_asks_the_admin_listener_its_config_names() {
    let stage = final_stage();
    let health = exec_form(&stage, "HEALTHCHECK");
    assert!(health[0].ends_with("/certgate"), "{health:?}");
    assert_eq!(health[1], "health", "{health:?}");
    let admin = &health[health.iter().position(|a| a == "--admin").unwrap() + 1];
    let cmd = exec_form(&stage, "CMD");
    let config = &cmd[cmd.iter().position(|a| a == "--config").unwrap() + 1];
    let root = image_etc(&stage);
    let yaml: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(in_image(&root.root, config)).unwrap())
            .unwrap();
    assert_eq!(yaml["admin"]["listen"].as_str(), Some(admin.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_on_a_serving_gateway_and_one_when_nothing_answers() {
    let env = Env::new();
    let up = Upstream::start().await;
    let gw = env.start(&env.config(up.addr, "")).await;
    let admin = gw.admin_addr().to_string();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || certgate().args(args).output().unwrap())
            .await
            .unwrap()
    };
    let healthy = run(vec!["health".into(), "--admin".into(), admin.clone()]).await;
    assert!(healthy.status.success(), "{healthy:?}");
    assert_eq!(
        String::from_utf8_lossy(&healthy.stdout).trim(),
        r#"200 {"status":"ok"}"#
    );
    let ready = run(vec![
        "health".into(),
        "--admin".into(),
        admin.clone(),
        "--path".into(),
        "/readyz".into(),
    ])
    .await;
    assert!(ready.status.success(), "{ready:?}");
    // A path the admin API does not serve is not healthy.
    let missing = run(vec![
        "health".into(),
        "--admin".into(),
        admin.clone(),
        "--path".into(),
        "/nope".into(),
    ])
    .await;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stdout).starts_with("404 "));

    gw.shutdown().await;
    let down = run(vec!["health".into(), "--admin".into(), admin.clone()]).await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    let told = String::from_utf8_lossy(&down.stderr);
    assert!(
        told.contains(&format!("cannot connect to {admin}")),
        "{told}"
    );
}

const SUBCOMMANDS: [&str; 7] = [
    "serve",
    "check",
    "inspect",
    "demo",
    "health",
    "completions",
    "man",
];

#[test]
fn bash_completions_are_valid_bash_and_offer_every_subcommand_and_option() {
    let out = certgate().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in SUBCOMMANDS
        .iter()
        .chain(&["--config", "--log-format", "--pki-only"])
    {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certgate.bash");
    std::fs::write(&file, &script).unwrap();
    // Source it and ask for the completions of `certgate s`, as bash's completion would.
    let probe = format!(
        "source {}; COMP_WORDS=(certgate s); COMP_CWORD=1; COMP_LINE='certgate s'; COMP_POINT=10; \
         _certgate certgate s certgate; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(offered.trim(), "serve", "{offered}");
}

#[test]
fn completions_exist_for_zsh_fish_elvish_and_powershell() {
    for (shell, marker) in [
        ("zsh", "#compdef certgate"),
        ("fish", "complete -c certgate"),
        ("elvish", "edit:completion:arg-completer[certgate]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = certgate().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}:\n{script}");
        assert!(script.contains("completions"), "{shell}");
    }
    let out = certgate().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success(), "an unknown shell must be refused");
}

#[test]
fn the_man_page_renders_with_every_subcommand() {
    let out = certgate().arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(roff.contains(".TH certgate 1"), "{roff}");
    // Rendered by groff (man's own formatter, plain text: no overstrike) where installed.
    let Ok(mut child) = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        for sub in SUBCOMMANDS {
            assert!(roff.contains(sub), "the man page lacks {sub}");
        }
        return;
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(roff.as_bytes())
        .unwrap();
    let rendered = child.wait_with_output().unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    assert!(
        rendered.stderr.is_empty(),
        "groff warns: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SUBCOMMANDS"] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
    for sub in SUBCOMMANDS {
        assert!(
            text.contains(&format!("certgate-{sub}(1)")),
            "the man page lacks {sub}:\n{text}"
        );
    }
}

/// The Kubernetes PrometheusRule carries the project's alert rules, not a copy that drifts:
/// `deploy/kubernetes/rules.py --write` regenerates it from config/alerts.yaml.
#[test]
fn the_kubernetes_prometheus_rule_holds_exactly_the_projects_alert_rules() {
    let read = |rel: &str| -> serde_json::Value {
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join(rel)).unwrap()).unwrap()
    };
    let alerts = read("config/alerts.yaml");
    let rule = read("deploy/kubernetes/base/prometheusrule.yaml");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    let groups = alerts["groups"].as_array().unwrap();
    assert!(!groups.is_empty());
    assert_eq!(
        &rule["spec"]["groups"], &alerts["groups"],
        "deploy/kubernetes/base/prometheusrule.yaml differs from config/alerts.yaml: run deploy/kubernetes/rules.py --write"
    );
}

/// The configuration the Kubernetes manifests mount is one `certgate serve` and
/// `certgate control-plane` accept: every field known, every value valid, and the gateway
/// mirroring the control plane's Service.
#[test]
fn the_kubernetes_config_map_holds_a_valid_configuration() {
    let manifest: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("deploy/kubernetes/base/config.yaml")).unwrap(),
    )
    .unwrap();
    let yaml = manifest["data"]["certgate.yaml"].as_str().unwrap();
    let config = certgate::config::parse(yaml, Path::new("/etc/certgate/config/certgate.yaml"))
        .unwrap_or_else(|problems| panic!("the ConfigMap's configuration is refused: {problems}"));
    assert_eq!(
        config.server.certificates[0].cert,
        Path::new("/etc/certgate/config/../certs/server/tls.crt")
    );
    let lifecycle = config.lifecycle.unwrap();
    assert_eq!(lifecycle.state_dir, Path::new("/var/lib/certgate"));
    assert_eq!(
        lifecycle.source.unwrap().authority,
        "certgate-control-plane:9902"
    );
    assert_eq!(config.admin.listen.port(), 9901);
}
