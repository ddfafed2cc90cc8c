//! `certgate ca …`, `certgate partner …` and `certgate registry …`: parse, call
//! [`crate::lifecycle::commands`], publish, print.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config;
use crate::config::model::{Database, IdentityMatch};
use crate::lifecycle::ca::{self, FileSigner};
use crate::lifecycle::commands::{self, CommandError, Outcome, Policy, Register};
use crate::lifecycle::publish::{self, DEFAULT_CRL_NEXT_UPDATE};
use crate::lifecycle::registry::{self, CertStatus, Identity, Record};
use crate::lifecycle::store::Store;
use crate::lifecycle::StateDir;

/// Where the state folder and the gateway configuration are.
#[derive(Debug, Clone, Args)]
pub struct Place {
    /// The lifecycle state folder. Default: `lifecycle.state_dir` of the configuration.
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// The gateway configuration: its routes define the scopes a partner may hold.
    #[arg(long, global = true, default_value = "config/certgate.yaml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the partner-issuing CA (ECDSA P-256) and the registry in the state folder.
    Init {
        #[command(flatten)]
        place: Place,
        /// Install an existing CA (an intermediate) instead: its certificate and key PEM files.
        #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
        import: Option<Vec<PathBuf>>,
        /// Subject common name of a new CA.
        #[arg(long, default_value = "certgate partner CA")]
        cn: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Record a pending partner: owner, requested scopes and the identity its certificates carry.
    Register {
        id: String,
        #[arg(long)]
        owner: String,
        /// Comma-separated; each must be a scope of a route in the configuration.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long, group = "identity")]
        spiffe: Option<String>,
        #[arg(long, group = "identity")]
        cn: Option<String>,
        #[arg(long, group = "identity")]
        dns: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Record a pending partner like `register`, and print a one-time enrolment token with which
    /// its developer submits a CSR to the enrolment API (`POST /v1/enrolments`).
    Invite {
        id: String,
        #[arg(long)]
        owner: String,
        /// Comma-separated; each must be a scope of a route in the configuration.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long, group = "identity")]
        spiffe: Option<String>,
        #[arg(long, group = "identity")]
        cn: Option<String>,
        #[arg(long, group = "identity")]
        dns: Option<String>,
        /// How long the token is accepted: `72h`, `3d`, `30m` (at most 30 days).
        #[arg(long, default_value = "72h", value_parser = parse_expiry)]
        expires: std::time::Duration,
        /// Print exactly `{"partner", "token", "expires_at"}` as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Approve a pending registration or scope addition (not by whoever asked for it); a pending
    /// enrolment request is issued its certificate in the same step.
    Approve {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Grant a sandbox-only (invited) partner its scopes in production, when the evidence holds.
    /// The promoter must be neither the owner nor the inviter.
    Promote {
        id: String,
        /// Days its certificate must still be valid.
        #[arg(long, default_value_t = commands::DEFAULT_PROMOTE_MIN_DAYS)]
        min_days: u32,
        #[command(flatten)]
        who: Who,
    },
    /// Close a pending registration or scope addition.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Sign the partner's PKCS#10 CSR. The partner keeps its private key.
    Issue {
        id: String,
        #[arg(long)]
        csr: PathBuf,
        /// Validity in days (at most `lifecycle.max_validity_days`, default 90).
        #[arg(long)]
        days: Option<u32>,
        /// Write the certificate and CA chain here (PEM) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        who: Who,
    },
    /// Issue a successor certificate; the old one stays valid unless --revoke-old.
    Renew {
        id: String,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        days: Option<u32>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        revoke_old: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Revoke one certificate (--serial) or all of them.
    Revoke {
        id: String,
        #[arg(long)]
        serial: Option<String>,
        /// keyCompromise, cessationOfOperation, superseded, affiliationChanged, …
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Revoke every certificate, remove every scope, and retire the ID for good.
    Offboard {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Remove scopes at once; request more (they need approval).
    Scopes {
        id: String,
        #[arg(long, value_delimiter = ',')]
        add: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Every partner with its status and scopes.
    List {
        #[command(flatten)]
        place: Place,
    },
    /// One partner: identity, owner, scopes, certificates with expiry.
    Show {
        id: String,
        #[command(flatten)]
        place: Place,
    },
    /// Certificates due for renewal (--expiring), or scopes held but not used (--unused-scopes).
    Report {
        /// Valid certificates that expire within this many days (`30d` or `30`).
        #[arg(long, value_parser = parse_days, required_unless_present = "unused_scopes", conflicts_with = "unused_scopes")]
        expiring: Option<u32>,
        /// Scopes approved partners hold but have not used within --since, from the gateways'
        /// usage records in the state folder.
        #[arg(long)]
        unused_scopes: bool,
        /// The window of --unused-scopes (`30d` or `30`).
        #[arg(long, value_parser = parse_days, default_value = "30d", requires = "unused_scopes")]
        since: u32,
        /// Print --unused-scopes as JSON.
        #[arg(long, requires = "unused_scopes")]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
    /// One partner's lifecycle from the event log.
    History {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Walk the event chain; name the first event that breaks it.
    Verify {
        #[command(flatten)]
        place: Place,
    },
    /// Rebuild partners and certificates from the event log.
    Replay {
        #[command(flatten)]
        place: Place,
    },
    /// Re-sign the CRL and rewrite the partner table (run daily, before nextUpdate).
    Publish {
        #[command(flatten)]
        place: Place,
    },
}

/// Who acts, and where.
#[derive(Debug, Clone, Args)]
pub struct Who {
    /// Who is making this change; recorded in the event log.
    #[arg(long)]
    pub actor: String,
    #[command(flatten)]
    pub place: Place,
}

/// Settings that come from the gateway configuration.
struct Context {
    state: StateDir,
    /// `lifecycle.database`, or the SQLite file in `state`.
    database: Database,
    policy: Policy,
    crl_next_update: std::time::Duration,
    /// `lifecycle.promotion`, or its defaults without a configuration.
    promotion: config::model::Promotion,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {problems}", path.display())]
    Config {
        path: PathBuf,
        problems: config::Problems,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Store(#[from] crate::lifecycle::store::StoreError),
    #[error(transparent)]
    ScopeUsage(#[from] crate::usage::UsageError),
    #[error("the change was recorded, but publishing it failed; run `certgate registry publish`")]
    Publish(#[source] publish::PublishError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// === entry points ===

pub(super) async fn ca(command: CaCommand) -> ExitCode {
    report(ca_inner(command).await)
}

pub(super) async fn partner(command: PartnerCommand) -> ExitCode {
    report(partner_inner(command).await)
}

pub(super) async fn registry(command: RegistryCommand) -> ExitCode {
    report(registry_inner(command).await)
}

fn report(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn ca_inner(command: CaCommand) -> Result<ExitCode, CliError> {
    let CaCommand::Init { place, import, cn } = command;
    let ctx = context(&place, false)?;
    std::fs::create_dir_all(ctx.state.root()).map_err(|source| CliError::Io {
        path: ctx.state.root().to_owned(),
        source,
    })?;
    match import.as_deref() {
        Some([cert, key]) => ca::import(&ctx.state, cert, key)?,
        Some(_) => return Err(CliError::Usage("--import takes CERT KEY".into())),
        None => ca::init(&ctx.state, &cn)?,
    }
    let mut store = Store::create(&ctx.database).await?;
    let signer = FileSigner::load(&ctx.state)?;
    let published = publish::publish(&mut store, &signer, &ctx.state, ctx.crl_next_update)
        .await
        .map_err(CliError::Publish)?;
    println!(
        "CA ready in {}\n  certificate: {}\n  key (0600):  {}\n  registry:    {}\n  CRL #{}:      {}\n  partners:    {}",
        ctx.state.root().display(),
        ctx.state.ca_cert().display(),
        ctx.state.ca_key().display(),
        ctx.database,
        published.crl_number,
        ctx.state.crl().display(),
        ctx.state.partners().display(),
    );
    Ok(ExitCode::SUCCESS)
}

async fn partner_inner(command: PartnerCommand) -> Result<ExitCode, CliError> {
    use PartnerCommand as P;
    match command {
        P::List { place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            for r in store.records().await? {
                if let Some(p) = &r.partner {
                    let valid = r
                        .certificates
                        .iter()
                        .filter(|c| c.status == CertStatus::Valid)
                        .count();
                    println!(
                        "{}\t{}\t{}\t{}\tscopes={}\tcertificates={valid}",
                        p.id,
                        p.status,
                        p.owner,
                        p.identity,
                        p.scopes.join(","),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        P::Report {
            unused_scopes: true,
            since,
            json,
            place,
            ..
        } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let usage = crate::usage::UsageFile::read(&ctx.state.usage())?;
            let now = time::OffsetDateTime::now_utc();
            let unused = unused_scopes(
                &mut store,
                &usage,
                now - time::Duration::days(i64::from(since)),
            )
            .await?;
            print_unused(&unused, since, json);
            Ok(ExitCode::SUCCESS)
        }
        P::Report {
            expiring, place, ..
        } => {
            let expiring = expiring.unwrap_or_default();
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let now = time::OffsetDateTime::now_utc();
            let horizon = now + time::Duration::days(i64::from(expiring));
            let mut due = Vec::new();
            for r in store.records().await? {
                let Some(p) = &r.partner else { continue };
                for c in r
                    .certificates
                    .iter()
                    .filter(|c| c.status == CertStatus::Valid)
                {
                    let Some(not_after) = commands::parse_time(&c.not_after) else {
                        continue;
                    };
                    // A newer valid certificate that outlives the horizon means it was renewed.
                    let renewed = r.certificates.iter().any(|n| {
                        n.status == CertStatus::Valid
                            && commands::parse_time(&n.not_after).is_some_and(|t| t > horizon)
                    });
                    if not_after <= horizon && !renewed {
                        due.push((not_after, p.id.clone(), p.owner.clone(), c.serial.clone()));
                    }
                }
            }
            due.sort();
            println!(
                "certificates expiring within {expiring} days: {}",
                due.len()
            );
            for (not_after, id, owner, serial) in due {
                let left = (not_after - now).whole_days();
                println!(
                    "{id}\towner={owner}\tserial={serial}\tnot_after={}\tdays_left={left}\trenew: certgate partner renew {id} --csr FILE --actor NAME",
                    commands::format_time(not_after),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        P::Show { id, place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let record = store.record(&id).await?;
            if record.partner.is_none() {
                return Err(CommandError::NotFound(id).into());
            }
            print!("{}", show(&record));
            Ok(ExitCode::SUCCESS)
        }
        P::History { id, json, place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let events = store.events_of(&id).await?;
            if events.is_empty() {
                return Err(CommandError::NotFound(id).into());
            }
            if json {
                let items: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.id,
                            "time": e.time,
                            "actor": e.actor,
                            "action": e.action,
                            "partner": e.partner,
                            "reason": e.reason,
                            "before": serde_json::from_str::<serde_json::Value>(&e.before).unwrap_or_default(),
                            "after": serde_json::from_str::<serde_json::Value>(&e.after).unwrap_or_default(),
                            "prev_hash": e.prev_hash,
                            "hash": e.hash,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&items).unwrap_or_default()
                );
            } else {
                for e in &events {
                    println!(
                        "#{} {} {} by {}{}",
                        e.id,
                        e.time,
                        e.action,
                        e.actor,
                        e.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        change => change_inner(change).await,
    }
}

async fn change_inner(command: PartnerCommand) -> Result<ExitCode, CliError> {
    use PartnerCommand as P;
    let (who, needs_scopes) = match &command {
        P::Register { who, .. } | P::Invite { who, .. } => (who.clone(), true),
        P::Scopes { who, add, .. } => (who.clone(), !add.is_empty()),
        P::Approve { who, .. }
        | P::Promote { who, .. }
        | P::Reject { who, .. }
        | P::Issue { who, .. }
        | P::Renew { who, .. }
        | P::Revoke { who, .. }
        | P::Offboard { who, .. } => (who.clone(), false),
        P::List { .. } | P::Show { .. } | P::History { .. } | P::Report { .. } => {
            return Err(CliError::Usage("not a change".into()))
        }
    };
    let ctx = context(&who.place, needs_scopes)?;
    let actor = who.actor.as_str();
    let mut store = Store::open(&ctx.database).await?;
    let signer = FileSigner::load(&ctx.state)?;
    let days = |d: Option<u32>| d.unwrap_or(ctx.policy.max_validity_days);
    let mut out_file = None;
    let mut invited = None;
    let outcome: Outcome = match command {
        P::Invite {
            id,
            owner,
            scopes,
            spiffe,
            cn,
            dns,
            expires,
            json,
            ..
        } => {
            let req = Register {
                id: &id,
                owner: &owner,
                scopes: &scopes,
                identity: one_identity(spiffe, cn, dns)?,
            };
            let done = commands::invite(&mut store, &ctx.policy, actor, req, expires).await?;
            invited = Some((id, done.token, done.expires_at, json));
            done.outcome
        }
        P::Register {
            id,
            owner,
            scopes,
            spiffe,
            cn,
            dns,
            ..
        } => {
            let req = Register {
                id: &id,
                owner: &owner,
                scopes: &scopes,
                identity: one_identity(spiffe, cn, dns)?,
            };
            commands::register(&mut store, &ctx.policy, actor, req).await?
        }
        P::Approve { id, .. } => {
            let days = days(None);
            commands::approve_issuing(&mut store, &ctx.policy, &signer, actor, &id, days).await?
        }
        P::Reject { id, reason, .. } => commands::reject(&mut store, actor, &id, &reason).await?,
        P::Promote { id, min_days, .. } => {
            let usage = commands::RecordedUsage {
                usage: crate::usage::UsageFile::read(&ctx.state.usage())?,
                promotion: ctx.promotion,
            };
            commands::promote(&mut store, actor, &id, min_days, &usage).await?
        }
        P::Issue {
            id,
            csr,
            days: d,
            out,
            ..
        } => {
            let csr = read(&csr)?;
            out_file = out;
            commands::issue(&mut store, &ctx.policy, &signer, actor, &id, &csr, days(d)).await?
        }
        P::Renew {
            id,
            csr,
            days: d,
            out,
            revoke_old,
            ..
        } => {
            let csr = read(&csr)?;
            out_file = out;
            commands::renew(
                &mut store,
                &ctx.policy,
                &signer,
                actor,
                &id,
                &csr,
                days(d),
                revoke_old,
            )
            .await?
        }
        P::Revoke {
            id, serial, reason, ..
        } => commands::revoke(&mut store, actor, &id, serial.as_deref(), &reason).await?,
        P::Offboard { id, reason, .. } => {
            commands::offboard(&mut store, actor, &id, &reason).await?
        }
        P::Scopes {
            id, add, remove, ..
        } => commands::scopes(&mut store, &ctx.policy, actor, &id, &add, &remove).await?,
        P::List { .. } | P::Show { .. } | P::History { .. } | P::Report { .. } => {
            return Err(CliError::Usage("not a change".into()))
        }
    };
    let published = publish::publish(&mut store, &signer, &ctx.state, ctx.crl_next_update)
        .await
        .map_err(CliError::Publish)?;
    eprintln!(
        "event #{}: {} {} by {}; published CRL #{} ({} revoked), {} approved partner(s)",
        outcome.event.id,
        outcome.event.action,
        outcome.event.partner,
        outcome.event.actor,
        published.crl_number,
        published.revoked,
        published.partners,
    );
    if let Some((id, token, expires_at, json)) = invited {
        if json {
            let out = serde_json::json!({"partner": id, "token": token, "expires_at": expires_at});
            println!("{out}");
        } else {
            print!("{}", show(&outcome.record));
            println!("enrolment token (shown once, valid until {expires_at}):\n{token}");
        }
    } else if let Some(chain) = &outcome.chain_pem {
        match out_file {
            Some(path) => {
                std::fs::write(&path, chain).map_err(|source| CliError::Io {
                    path: path.clone(),
                    source,
                })?;
                eprintln!("certificate and chain written to {}", path.display());
            }
            None => print!("{chain}"),
        }
    } else {
        print!("{}", show(&outcome.record));
    }
    Ok(ExitCode::SUCCESS)
}

async fn registry_inner(command: RegistryCommand) -> Result<ExitCode, CliError> {
    match command {
        RegistryCommand::Verify { place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let events = store.events().await?;
            if let Some(broken) = registry::verify_chain(&events) {
                eprintln!("registry verify: chain broken at {broken}");
                return Ok(ExitCode::FAILURE);
            }
            // The derived tables must be what the log says they are.
            let tables = store.records().await?;
            let replayed = replay_in_memory(&events);
            if tables != replayed {
                eprintln!(
                    "registry verify: the partner and certificate tables differ from the event log; `certgate registry replay` rebuilds them"
                );
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "registry verify: ok — {} events, chain intact, {} partners match the log",
                events.len(),
                tables.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        RegistryCommand::Replay { place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let before = store.records().await?;
            let n = store.replay().await?;
            let after = store.records().await?;
            println!(
                "registry replay: {n} events applied; state {}",
                if before == after {
                    "unchanged"
                } else {
                    "rebuilt (it differed)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        RegistryCommand::Publish { place } => {
            let ctx = context(&place, false)?;
            let mut store = Store::open(&ctx.database).await?;
            let signer = FileSigner::load(&ctx.state)?;
            let p = publish::publish(&mut store, &signer, &ctx.state, ctx.crl_next_update)
                .await
                .map_err(CliError::Publish)?;
            println!(
                "published CRL #{} ({} revoked) and {} approved partner(s)",
                p.crl_number, p.revoked, p.partners
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tables as the event log says they are.
fn replay_in_memory(events: &[registry::Event]) -> Vec<Record> {
    let mut by_id: std::collections::BTreeMap<String, Record> = Default::default();
    for e in events {
        if let Ok(mut after) = Record::from_json(&e.after) {
            crate::lifecycle::store::sort_certificates(&mut after.certificates);
            by_id.insert(e.partner.clone(), after);
        }
    }
    by_id
        .into_values()
        .filter(|r| r.partner.is_some())
        .collect()
}

fn show(r: &Record) -> String {
    let Some(p) = &r.partner else {
        return String::new();
    };
    let mut s = format!(
        "partner:   {}\nstatus:    {}\nowner:     {}\nidentity:  {}\nscopes:    {}\n",
        p.id,
        p.status,
        p.owner,
        p.identity,
        if p.scopes.is_empty() {
            "-".to_owned()
        } else if p.sandbox_only {
            format!("{} (sandbox only until promoted)", p.scopes.join(", "))
        } else {
            p.scopes.join(", ")
        },
    );
    if !p.requested_scopes.is_empty() {
        s.push_str(&format!(
            "requested: {} (by {}, awaiting approval)\n",
            p.requested_scopes.join(", "),
            p.requested_by
        ));
    }
    if let Some(i) = &p.invitation {
        match &i.used_at {
            Some(at) => s.push_str(&format!("invitation: used {at}\n")),
            None => s.push_str(&format!("invitation: open until {}\n", i.expires_at)),
        }
    }
    if let Some(e) = &p.enrolment {
        s.push_str(&format!(
            "enrolment: {} {} submitted {}{}{}\n",
            e.id,
            e.status.as_str(),
            e.submitted_at,
            e.contact
                .as_deref()
                .map(|c| format!(" contact {c}"))
                .unwrap_or_default(),
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
        ));
    }
    if r.certificates.is_empty() {
        s.push_str("certificates: none\n");
    }
    for c in &r.certificates {
        s.push_str(&format!(
            "certificate {} {} not_after {} sha256 {}{}\n",
            c.serial,
            c.status.as_str(),
            c.not_after,
            c.fingerprint_sha256,
            match (&c.revocation_reason, &c.revoked_at) {
                (Some(reason), Some(at)) => format!(" revoked {at} ({reason})"),
                _ => String::new(),
            }
        ));
    }
    s
}

fn one_identity(
    spiffe: Option<String>,
    cn: Option<String>,
    dns: Option<String>,
) -> Result<Identity, CliError> {
    match (spiffe, cn, dns) {
        (Some(s), None, None) => Ok(Identity::Spiffe(s)),
        (None, Some(c), None) => Ok(Identity::Cn(c)),
        (None, None, Some(d)) => Ok(Identity::Dns(d)),
        _ => Err(CliError::Usage(
            "give exactly one identity: --spiffe URI, --cn CN or --dns NAME".into(),
        )),
    }
}

/// `72h`, `3d`, `30m`: how long an invitation stays open.
fn parse_expiry(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{text}`: expected a whole number with m, h or d, like 72h");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(bad)
}

/// `30d` or `30`: a number of days.
/// A scope a partner holds and has not used since the report's cutoff.
#[derive(Debug, serde::Serialize)]
struct UnusedScope {
    partner: String,
    owner: String,
    scope: String,
    /// RFC 3339; `None` when never used.
    last_used: Option<String>,
    /// When the scope was last granted (RFC 3339).
    granted_at: String,
    /// The command that removes it.
    remove: String,
}

/// Every scope of an approved partner whose last use is before `cutoff`. A scope never used is
/// listed once it was granted before `cutoff`: a partner that was just onboarded is not yet
/// over-privileged.
async fn unused_scopes(
    store: &mut Store,
    usage: &crate::usage::UsageFile,
    cutoff: time::OffsetDateTime,
) -> Result<Vec<UnusedScope>, CliError> {
    // When each scope was last granted: the event that put it into the partner's scopes.
    let mut granted: std::collections::HashMap<(String, String), String> =
        std::collections::HashMap::new();
    for e in store.events().await? {
        let scopes = |json: &str| {
            Record::from_json(json)
                .ok()
                .and_then(|r| r.partner)
                .map(|p| p.scopes)
                .unwrap_or_default()
        };
        let before = scopes(&e.before);
        for s in scopes(&e.after) {
            if !before.contains(&s) {
                granted.insert((e.partner.clone(), s), e.time.clone());
            }
        }
    }
    let cutoff_unix = u64::try_from(cutoff.unix_timestamp()).unwrap_or(0);
    let mut unused = Vec::new();
    for r in store.records().await? {
        let Some(p) = r.partner else { continue };
        if p.status != registry::PartnerStatus::Approved {
            continue;
        }
        for scope in &p.scopes {
            let last = usage.last_used(&p.id, scope);
            let granted_at = granted
                .get(&(p.id.clone(), scope.clone()))
                .cloned()
                .unwrap_or_else(|| p.approved_at.clone().unwrap_or_default());
            let stale = match last {
                Some(t) => t < cutoff_unix,
                None => commands::parse_time(&granted_at).is_none_or(|g| g <= cutoff),
            };
            if !stale {
                continue;
            }
            unused.push(UnusedScope {
                partner: p.id.clone(),
                owner: p.owner.clone(),
                scope: scope.clone(),
                last_used: last
                    .and_then(|t| i64::try_from(t).ok())
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    .map(commands::format_time),
                granted_at,
                remove: format!(
                    "certgate partner scopes {} --remove {scope} --actor NAME",
                    p.id
                ),
            });
        }
    }
    Ok(unused)
}

fn print_unused(unused: &[UnusedScope], since: u32, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(unused).unwrap_or_default()
        );
        return;
    }
    println!(
        "scopes held but not used in the last {since} days: {}",
        unused.len()
    );
    for u in unused {
        println!(
            "{}\towner={}\tscope={}\tlast_used={}\tgranted={}\tremove: {}",
            u.partner,
            u.owner,
            u.scope,
            u.last_used.as_deref().unwrap_or("never"),
            u.granted_at,
            u.remove,
        );
    }
}

fn parse_days(text: &str) -> Result<u32, String> {
    text.strip_suffix('d')
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of days like 30d"))
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Resolves the state folder and the policy. The configuration is read when it exists (or when
/// scopes must be checked against it, which then requires it), without merging the registry.
fn context(place: &Place, needs_scopes: bool) -> Result<Context, CliError> {
    let parsed = if place.config.exists() || needs_scopes || place.state.is_none() {
        let text = std::fs::read_to_string(&place.config).map_err(|source| CliError::Io {
            path: place.config.clone(),
            source,
        })?;
        Some(
            config::parse(&text, &place.config).map_err(|problems| CliError::Config {
                path: place.config.clone(),
                problems,
            })?,
        )
    } else {
        None
    };
    let lifecycle = parsed.as_ref().and_then(|c| c.lifecycle.clone());
    let state = match (&place.state, &lifecycle) {
        (Some(dir), _) => StateDir::new(dir),
        (None, Some(l)) => StateDir::new(&l.state_dir),
        (None, None) => {
            return Err(CliError::Usage(format!(
                "no state folder: pass --state DIR or set lifecycle.state_dir in {}",
                place.config.display()
            )))
        }
    };
    let known_scopes = parsed.as_ref().map(|c| {
        c.routes
            .iter()
            .filter_map(|r| c.scopes.get(r.scope.0))
            // A sandbox route requires its scope's sandbox twin; partners are granted the scope.
            .map(|s| {
                s.strip_suffix(config::model::SANDBOX_SUFFIX)
                    .unwrap_or(s)
                    .to_owned()
            })
            .collect::<BTreeSet<String>>()
    });
    let yaml_identities = parsed
        .iter()
        .flat_map(|c| &c.partners)
        .flat_map(|p| {
            p.identities.iter().filter_map(|i| {
                let identity = match i {
                    IdentityMatch::Spiffe(v) => Identity::Spiffe(v.clone()),
                    IdentityMatch::SubjectCn(v) => Identity::Cn(v.clone()),
                    IdentityMatch::SanDns(v) => Identity::Dns(v.clone()),
                    IdentityMatch::Fingerprint(_) => return None,
                };
                Some((identity, p.id.clone()))
            })
        })
        .collect();
    let database = lifecycle
        .as_ref()
        .and_then(|l| l.database.clone())
        .unwrap_or_else(|| Database::Sqlite(state.database()));
    Ok(Context {
        state,
        database,
        policy: Policy {
            known_scopes,
            yaml_identities,
            max_validity_days: lifecycle
                .as_ref()
                .map_or(commands::DEFAULT_MAX_VALIDITY_DAYS, |l| l.max_validity_days),
        },
        crl_next_update: lifecycle
            .as_ref()
            .map_or(DEFAULT_CRL_NEXT_UPDATE, |l| l.crl_next_update),
        promotion: lifecycle.as_ref().map(|l| l.promotion).unwrap_or_default(),
    })
}
