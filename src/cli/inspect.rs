//! `certgate inspect`: what certgate reads from a certificate, and whom it would map it to.

use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::identity::{PartnerIndex, PeerIdentity};
use crate::tls::pem;

pub(super) fn run(cert_path: &Path, config_path: Option<&Path>) -> ExitCode {
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
    match index.lookup(&identity) {
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
