//! `certgate inspect`: what certgate reads from a certificate, whom it would map it to, and what
//! the configured revocation sources say about it.

use std::path::Path;
use std::process::ExitCode;

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::model::{BundleId, Config};
use crate::config::{self};
use crate::identity::{PartnerIndex, PeerIdentity};
use crate::revocation::ocsp::OcspStatus;
use crate::revocation::{issuer_and_serial, Registry, Verdict};
use crate::runtime;
use crate::tls::pem;

pub(super) async fn run(cert_path: &Path, config_path: Option<&Path>) -> ExitCode {
    let certs = match pem::load_certs(cert_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let identity = match PeerIdentity::from_der(&certs[0]) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", cert_path.display());
            return ExitCode::FAILURE;
        }
    };
    print_identity(&identity);
    let Some(config_path) = config_path else {
        return ExitCode::SUCCESS;
    };
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems.iter() {
                eprintln!("error: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let index = PartnerIndex::build(&config.partners);
    let partner = index.lookup(&identity);
    match partner {
        None => {
            println!(
                "partner:      none — this certificate maps to no partner in {}",
                config_path.display()
            );
        }
        Some((id, how)) => {
            let partner = &config.partners[id.0];
            let bundle = &config.trust_bundles[partner.trust_bundle.0];
            println!("partner:      {} (matched by {})", partner.id, how.as_str());
            println!("owner:        {}", partner.owner);
            println!("trust bundle: {}", bundle.name);
            let scopes: Vec<&str> = partner
                .scopes
                .iter()
                .map(|s| config.scopes[s.0].as_str())
                .collect();
            println!("scopes:       {}", scopes.join(", "));
            println!("routes:");
            let mut any = false;
            for route in &config.routes {
                if partner.scopes.binary_search(&route.scope).is_ok() {
                    any = true;
                    let methods = route.methods.as_ref().map_or_else(
                        || "any method".to_owned(),
                        |m| {
                            m.iter()
                                .map(http::Method::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                    );
                    let path = match &route.path {
                        config::model::PathMatch::Exact(p) => p.clone(),
                        config::model::PathMatch::Prefix(p) => format!("{p}/…"),
                    };
                    println!(
                        "  - {} {} {}{} → {}",
                        route.name,
                        methods,
                        route.host.as_deref().unwrap_or("*"),
                        path,
                        config.upstreams[route.upstream.0].name
                    );
                }
            }
            if !any {
                println!("  (none)");
            }
        }
    }
    // The partner's bundle; without a partner, every bundle the certificate might chain to.
    let bundles: Vec<BundleId> = match partner {
        Some((id, _)) => vec![config.partners[id.0].trust_bundle],
        None => (0..config.trust_bundles.len()).map(BundleId).collect(),
    };
    print_revocation(config_path, config, &certs, &bundles).await
}

/// What one revocation source says about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Good,
    Unknown,
    Revoked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
        }
    }
}

/// Loads the revocation sources exactly as `serve` does (`runtime::prepare`: every CRL loaded and
/// verified once), asks OCSP once where configured, and prints one `revocation:` line per bundle:
/// the overall status (revoked beats unknown beats good), then the sources that gave it.
async fn print_revocation(
    config_path: &Path,
    config: Config,
    chain: &[CertificateDer<'static>],
    bundles: &[BundleId],
) -> ExitCode {
    let names: Vec<String> = bundles
        .iter()
        .map(|b| config.trust_bundles[b.0].name.clone())
        .collect();
    let snapshot = match runtime::prepare(config, Registry::new()).await {
        Ok(s) => s,
        Err(e) => {
            super::print_start_error(config_path, &e);
            return ExitCode::FAILURE;
        }
    };
    let revocation = &snapshot.revocation;
    let now = UnixTime::now();
    for (&bundle, name) in bundles.iter().zip(&names) {
        let mut findings: Vec<(Status, String)> = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            let Some((issuer, serial)) = issuer_and_serial(cert) else {
                continue;
            };
            let whose = if i == 0 {
                String::new()
            } else {
                format!(" for chain certificate #{i}")
            };
            let origin = || {
                revocation
                    .crl()
                    .crl_origin(bundle, issuer)
                    .unwrap_or("?")
                    .to_owned()
            };
            match revocation.crl().check(bundle, issuer, serial, now) {
                Verdict::Revoked => {
                    findings.push((Status::Revoked, format!("CRL {}{whose}", origin())))
                }
                // Intermediates that are not revoked are not worth a line.
                Verdict::Good if i == 0 => {
                    findings.push((Status::Good, format!("CRL {}", origin())))
                }
                Verdict::Unknown => findings.push((
                    Status::Unknown,
                    format!("CRL: no current CRL loaded for the issuer{whose}"),
                )),
                Verdict::Good | Verdict::NotChecked => {}
            }
        }
        match revocation.query_ocsp(bundle, chain).await {
            None => {}
            Some((url, result)) => {
                let url = url.unwrap_or_else(|| "responder".to_owned());
                findings.push(match result {
                    Ok(OcspStatus::Good) => (Status::Good, format!("OCSP {url}")),
                    Ok(OcspStatus::Revoked) => (Status::Revoked, format!("OCSP {url}")),
                    Ok(OcspStatus::Unknown) => (
                        Status::Unknown,
                        format!("OCSP {url}: the responder does not know the certificate"),
                    ),
                    Err(e) => (
                        Status::Unknown,
                        format!("OCSP {url}: {}", crate::error_chain(&e)),
                    ),
                });
            }
        }
        let suffix = if bundles.len() > 1 {
            format!(" [trust bundle {name}]")
        } else {
            String::new()
        };
        let Some(overall) = findings.iter().map(|(s, _)| *s).max() else {
            println!(
                "revocation:   not checked (no CRL or OCSP of trust bundle {name} covers this certificate)"
            );
            continue;
        };
        let sources: Vec<String> = findings
            .iter()
            .map(|(s, source)| {
                if *s == overall {
                    source.clone()
                } else {
                    format!("{source}: {}", s.as_str())
                }
            })
            .collect();
        println!(
            "revocation:   {} ({}){suffix}",
            overall.as_str(),
            sources.join("; ")
        );
    }
    ExitCode::SUCCESS
}

fn print_identity(id: &PeerIdentity) {
    let ts = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.to_string())
    };
    println!("subject:      {}", id.subject);
    println!("issuer:       {}", id.issuer);
    println!("serial:       {}", id.serial);
    println!("sha256:       {}", id.fingerprint_hex());
    println!("spiffe:       {}", id.spiffe.as_deref().unwrap_or("-"));
    println!(
        "san dns:      {}",
        if id.san_dns.is_empty() {
            "-".to_owned()
        } else {
            id.san_dns.join(", ")
        }
    );
    println!(
        "san uri:      {}",
        if id.san_uri.is_empty() {
            "-".to_owned()
        } else {
            id.san_uri.join(", ")
        }
    );
    println!("not before:   {}", ts(id.not_before));
    println!("not after:    {}", ts(id.not_after));
    println!(
        "eku:          {}",
        if id.eku.is_empty() {
            "-".to_owned()
        } else {
            id.eku.join(", ")
        }
    );
}
