//! The `certgate` binary run as an operator runs it: `certgate ARGS --config FILE`.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `certgate ARGS --config CONFIG`.
pub fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(config: &Path, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(
        out.status.success(),
        "certgate {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
pub fn refused(config: &Path, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(
        !out.status.success(),
        "certgate {args:?} should have been refused:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
