//! The command line: `serve`, `check`, `inspect`, `demo`, the partner lifecycle (`ca`,
//! `partner`, `registry`), and for packaging `health`, `completions` and `man`. Parses, prints
//! and picks exit codes; the work itself lives in the library modules.

mod demo;
mod echo;
mod health;
mod inspect;
mod lifecycle;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::audit::{self, LogFormat};
use crate::config::{self, model::Config, published::StateDir};
use crate::feed::mirror::Mirror;
use crate::feed::server::{ControlPlane, Source};
use crate::lifecycle::store::Store;
use crate::revocation::Registry;
use crate::runtime::{self, Drained, Gateway, StartError};

/// `serve`'s exit status when `drain_timeout` passed with connections still open, which were then
/// cut (0 is a clean drain, 1 a configuration that cannot start).
pub const EXIT_DRAIN_CUT: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "certgate",
    version,
    about = "mTLS gateway: certificate-bound partner access in front of APIs"
)]
pub struct Cli {
    /// Log format: `json` lines for pipelines, `text` for a terminal.
    #[arg(long, global = true, value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Append logs to this file instead of stdout (rotate with logrotate `copytruncate`).
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    /// Runtime worker threads. Default: `TOKIO_WORKER_THREADS` if set, else one per CPU this
    /// process may run on (so `taskset -c 0` alone already gives one). One worker runs on a
    /// current-thread runtime.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/certgate.yaml")]
        config: PathBuf,
    },
    /// Load and validate everything `serve` would, print a summary and warnings about what will
    /// bite later; exit 1 on any problem (and with `--strict`, on any warning).
    Check {
        #[arg(long, default_value = "config/certgate.yaml")]
        config: PathBuf,
        /// Treat warnings as problems: exit 1 when there is any.
        #[arg(long)]
        strict: bool,
    },
    /// With a config: whether `serve` would accept a certificate, as whom and to which routes
    /// (exit 1 when refused, 2 when it cannot be judged). Without: the identity certgate reads.
    Inspect {
        /// PEM file: the partner's certificate, optionally followed by the intermediates it sends.
        cert: PathBuf,
        /// PEM file with intermediates the partner sends after its certificate.
        #[arg(long)]
        chain: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate a demo PKI, start an echo upstream and the gateway on loopback, print curl calls.
    Demo {
        /// Where the demo's certificates, keys, CRL and config are written.
        #[arg(long, default_value = ".certgate-demo")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Only write the demo PKI (valid ten years) and exit: the example config's material.
        #[arg(long)]
        pki_only: bool,
    },
    /// Ask a running gateway's admin API whether it is healthy; exit 0 on 200, 1 otherwise.
    /// For container health checks (the image has no curl).
    Health {
        /// The admin listener (`admin.listen`).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// `/healthz` (the process serves) or `/readyz` (ready for partner traffic).
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Print a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
    /// The embedded partner-issuing CA.
    Ca {
        #[command(subcommand)]
        command: lifecycle::CaCommand,
    },
    /// Partner lifecycle: register, approve, issue, renew, revoke, offboard, inspect.
    Partner {
        #[command(subcommand)]
        command: lifecycle::PartnerCommand,
    },
    /// The registry's event log: verify the hash chain, replay, publish.
    Registry {
        #[command(subcommand)]
        command: lifecycle::RegistryCommand,
    },
    /// Serve the lifecycle's published files and change feed to gateways on other hosts
    /// (`lifecycle.source`): `/generation?after=N`, `/ca.pem`, `/partners.json`,
    /// `/crl/<bundle>.crl`, `/healthz`, `/readyz`.
    ControlPlane {
        /// The configuration whose `lifecycle.state_dir` holds the CA and the registry.
        #[arg(long, default_value = "config/certgate.yaml")]
        config: PathBuf,
        #[arg(long, default_value = crate::feed::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
}

/// Runs a parsed command line to completion.
///
/// # Errors
/// Only failures that are not already reported as diagnostics (runtime start-up, I/O).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Health { admin, path } => Ok(health::run(admin, &path).await),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "certgate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, strict } => Ok(check(&config, strict).await),
        Command::Ca { command } => Ok(lifecycle::ca(command).await),
        Command::Partner { command } => Ok(lifecycle::partner(command).await),
        Command::Registry { command } => Ok(lifecycle::registry(command).await),
        Command::ControlPlane { config, listen } => {
            let _log = audit::init(cli.log_format, cli.log_file.as_deref())?;
            control_plane(&config, listen).await
        }
        Command::Inspect {
            cert,
            chain,
            config,
            json,
        } => Ok(inspect::run(inspect::Request {
            cert: &cert,
            chain: chain.as_deref(),
            config: config.as_deref(),
            json,
        })
        .await),
        Command::Serve { config } => {
            let _log = audit::init(cli.log_format, cli.log_file.as_deref())?;
            // The control plane's files come first: the configuration merges them.
            let mirror = match lifecycle_mirror(&config) {
                Ok(Some(mut mirror)) => {
                    mirror.first_sync().await;
                    Some(mirror)
                }
                Ok(None) => None,
                Err(()) => return Ok(ExitCode::FAILURE),
            };
            // The gateway's start builds and reports everything; building it here first too
            // would load (and log) every CRL twice.
            let Some(config) = load_config(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            serve(&config.source.clone(), config, mirror).await
        }
        Command::Demo {
            dir,
            pki_only: true,
            ..
        } => {
            let pki = demo::generate(&dir, demo::Validity::LongLived)?;
            println!("demo PKI written to {}", pki.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir, listen, admin, ..
        } => {
            let _log = audit::init(cli.log_format, cli.log_file.as_deref())?;
            demo(&dir, listen, admin).await
        }
    }
}

/// Loads and validates the configuration, printing every problem. Builds nothing: `serve` and
/// `demo` hand it to [`Gateway::start`], which builds (and reports) the rest once.
fn load_config(path: &Path) -> Option<Config> {
    config::load(path)
        .map_err(|problems| print_problems(path, &problems))
        .ok()
}

/// Loads the YAML with its warnings, then builds everything a gateway would (TLS, trust, CRLs)
/// without starting it: what `check` reports on. Prints every problem with its place.
async fn load_everything_checked(path: &Path) -> Option<(config::Checked, runtime::Snapshot)> {
    let checked = config::load_checked(path)
        .map_err(|problems| print_problems(path, &problems))
        .ok()?;
    match runtime::prepare(checked.config.clone(), Registry::new()).await {
        Ok(snapshot) => Some((checked, snapshot)),
        Err(e) => {
            print_start_error(path, &e);
            None
        }
    }
}

fn print_problems(path: &Path, problems: &config::Problems) {
    for p in problems.iter() {
        eprintln!("error: {p}");
    }
    eprintln!(
        "{}: {} problem(s); nothing was started",
        path.display(),
        problems.len()
    );
}

fn print_start_error(path: &Path, error: &StartError) {
    let count = match error {
        StartError::Build(errors) => {
            for e in errors {
                match e.path() {
                    Some(file) if !e.to_string().contains(&file.display().to_string()) => {
                        eprintln!("error: {}: {}", file.display(), crate::error_chain(e));
                    }
                    _ => eprintln!("error: {}", crate::error_chain(e)),
                }
            }
            errors.len()
        }
        StartError::Revocation(errors) => {
            for e in errors {
                eprintln!("error: {}", crate::error_chain(e));
            }
            errors.len()
        }
        StartError::Bind { .. } | StartError::AdminBind { .. } => {
            eprintln!("error: {}", crate::error_chain(error));
            1
        }
    };
    eprintln!(
        "{}: {count} problem(s); nothing was started",
        path.display()
    );
}

async fn check(path: &Path, strict: bool) -> ExitCode {
    let Some((checked, snapshot)) = load_everything_checked(path).await else {
        return ExitCode::FAILURE;
    };
    let config = checked.config;
    let mut warnings = checked.warnings;
    warnings.extend(crate::tls::server::expiry_warnings(
        &config.server.certificates,
        rustls_pki_types::UnixTime::now(),
        crate::tls::server::EXPIRY_WARNING,
    ));
    warnings.extend(uncovered_issuers(&snapshot));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: ok — {} trust bundle(s), {} partner(s), {} route(s), {} upstream(s), {} server certificate(s), {} warning(s); config version {}",
        path.display(),
        config.trust_bundles.len(),
        config.partners.len(),
        config.routes.len(),
        config.upstreams.len(),
        config.server.certificates.len(),
        warnings.len(),
        &config.version[..config.version.len().min(12)],
    );
    if strict && !warnings.is_empty() {
        eprintln!(
            "{}: {} warning(s), and --strict counts them as problems",
            path.display(),
            warnings.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Warns about each bundle CA that no configured CRL comes from: with the default revocation scope
/// (`coverage: full_chain`, `unknown_issuer: reject`) every certificate it issues is refused as
/// `revocation_unknown`, which is safe but is rarely what the operator meant.
/// A bundle CA that no configured CRL comes from: its certificates are refused as
/// `revocation_unknown` under the default revocation scope.
fn uncovered_issuers(snapshot: &runtime::Snapshot) -> Vec<config::Problem> {
    let cas: Vec<_> = snapshot
        .trust
        .bundles
        .iter()
        .map(|b| b.certs.clone())
        .collect();
    snapshot
        .revocation
        .issuers_without_source(&cas)
        .into_iter()
        .map(|(bundle, subject)| config::Problem {
            place: config::Place::None,
            message: format!(
                "trust bundle {bundle}: CA {subject} has no revocation source (no CRL from it is configured); certificates it issues are refused as revocation_unknown unless OCSP covers them (leaves) or the bundle sets revocation.coverage: leaf_only or revocation.unknown_issuer: allow"
            ),
        })
        .collect()
}

/// Parses the configuration for its `lifecycle.source`: the control plane to mirror, if any.
fn lifecycle_mirror(path: &Path) -> Result<Option<Mirror>, ()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!(
            "error: {}: cannot read the configuration file: {e}",
            path.display()
        );
    })?;
    let config = config::parse(&text, path).map_err(|problems| print_problems(path, &problems))?;
    Ok(config.lifecycle.and_then(|l| {
        let source = l.source?;
        Some(Mirror::new(&source, &l.bundle, StateDir::new(&l.state_dir)))
    }))
}

/// `certgate control-plane`: serves the state folder until SIGTERM or Ctrl-C.
async fn control_plane(path: &Path, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "error: {}: cannot read the configuration file: {e}",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = match config::parse(&text, path) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(path, &problems);
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(lifecycle) = config.lifecycle else {
        eprintln!(
            "error: {}: no `lifecycle:` section: the control plane serves lifecycle.state_dir",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    // A shared database holds every publication, whichever replica made it; a SQLite registry
    // has one control plane, which serves its state folder.
    let source = match lifecycle.database {
        Some(database @ crate::config::model::Database::Postgres(_)) => {
            Source::Registry(open_registry(&database).await)
        }
        _ => Source::Folder(StateDir::new(&lifecycle.state_dir)),
    };
    let server = match ControlPlane::start(listen, source, &lifecycle.bundle).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    wait_for_shutdown_signal().await;
    tracing::info!("control plane stopping");
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Opens the registry, retrying every second while it cannot be (the database starting, or
/// `ca init` not run yet): the control plane has nothing to serve before.
async fn open_registry(database: &crate::config::model::Database) -> Store {
    let mut reported = None;
    loop {
        match Store::open(database).await {
            Ok(store) => return store,
            Err(e) => {
                let text = crate::error_chain(&e);
                if reported.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "control plane cannot open the registry: retrying");
                    reported = Some(text);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn serve(path: &Path, config: Config, mirror: Option<Mirror>) -> anyhow::Result<ExitCode> {
    let options = runtime::Options {
        source: Some(path.to_owned()),
        watch_files: true,
        lifecycle_source: mirror.as_ref().map(Mirror::status),
    };
    // Follows the feed for the life of the process; dropped with the runtime.
    let _mirror = mirror.map(|m| tokio::spawn(m.run()));
    // The enrolment API is started from the configuration read at start; a reload does not
    // move or restart it.
    let enrolment = config
        .onboarding
        .clone()
        .zip(config.lifecycle.as_ref())
        .map(|(settings, l)| {
            let state = crate::lifecycle::StateDir::new(l.state_dir.clone());
            let database = l
                .database
                .clone()
                .unwrap_or_else(|| crate::config::model::Database::Sqlite(state.database()));
            (settings, l.clone(), state, database)
        });
    let server = config.server.clone();
    let gateway = match Gateway::start_with(config, options).await {
        Ok(g) => g,
        Err(e) => {
            print_start_error(path, &e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let _enrolment = match &enrolment {
        Some((settings, lifecycle, state, database)) => {
            match crate::onboarding::start(
                settings,
                lifecycle,
                state,
                database,
                &server,
                gateway.metrics(),
            )
            .await
            {
                Ok(running) => Some(running),
                Err(e) => {
                    eprintln!("{}: {}", path.display(), crate::error_chain(&e));
                    gateway.shutdown().await;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        None => None,
    };
    let reloader = gateway.reloader();
    tokio::select! {
        () = wait_for_shutdown_signal() => {}
        () = reload_on_sighup(reloader) => {}
    }
    tracing::info!("shutting down: draining connections");
    Ok(match gateway.drain().await {
        Drained::Clean => ExitCode::SUCCESS,
        Drained::Cut { .. } => ExitCode::from(EXIT_DRAIN_CUT),
    })
}

async fn demo(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<ExitCode> {
    // The config names its files; relative names would be read against the config's own folder
    // (inside `dir`), and the printed curl commands should work from any terminal.
    let dir = &std::path::absolute(dir)?;
    let pki = demo::generate(dir, demo::Validity::Demo)?;
    let lifecycle = demo::onboard_through_lifecycle(dir).await?;
    let (upstream, _echo) = echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let config_path = dir.join("certgate.yaml");
    std::fs::write(
        &config_path,
        demo::config_yaml(&pki, listen, admin, upstream, Some(&lifecycle)),
    )?;
    let Some(config) = load_config(&config_path) else {
        return Ok(ExitCode::FAILURE);
    };
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            print_start_error(&config_path, &e);
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "\ncertgate demo is running: gateway https://localhost:{} → echo upstream http://{upstream}\n\
         admin API: http://{}/metrics, /status, /readyz\n\
         state folder: {} (config: {})\n\nTry these in another terminal:\n\n{}\nCtrl-C stops everything.\n",
        gateway.local_addr().port(),
        gateway.admin_addr(),
        dir.display(),
        config_path.display(),
        demo::curl_commands(
            &pki,
            gateway.local_addr(),
            Some((&lifecycle, &config_path))
        ),
    );
    wait_for_shutdown_signal().await;
    gateway.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Reloads on every SIGHUP; the outcome is logged by the reload task. Never returns on unix.
async fn reload_on_sighup(reloader: runtime::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reloader.reload().await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /reload")
            }
        }
    }
    let _ = reloader;
    std::future::pending::<()>().await;
}

/// SIGTERM or Ctrl-C.
async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
