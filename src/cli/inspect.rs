//! `certgate inspect`: the verdict `serve` would give a certificate, then what certgate reads from
//! it, whom it maps to, the routes that partner may call, and what the revocation sources say.
//!
//! The verdict comes from [`crate::proxy::admission::admit`], the gateway's own decision; this
//! file only explains and prints it.

use std::path::Path;
use std::process::ExitCode;

use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};

use crate::config::model::{BundleId, Config};
use crate::config::{self};
use crate::identity::PeerIdentity;
use crate::proxy::admission::{self, Admission, Refused};
use crate::refusal::Refusal;
use crate::revocation::ocsp::OcspStatus;
use crate::revocation::{issuer_and_serial, Registry, Verdict};
use crate::runtime::{self, Snapshot};
use crate::tls::handshake::HandshakeFailure;
use crate::tls::pem;

/// Exit status when the certificate would be refused.
const REFUSED: u8 = 1;
/// Exit status when nothing could be judged (unreadable certificate, invalid configuration).
const CANNOT_JUDGE: u8 = 2;

/// What `certgate inspect` was asked.
#[derive(Debug)]
pub(super) struct Request<'a> {
    pub(super) cert: &'a Path,
    /// Intermediates the partner sends after its leaf.
    pub(super) chain: Option<&'a Path>,
    pub(super) config: Option<&'a Path>,
    pub(super) json: bool,
}

/// What one trust bundle's revocation sources say about the chain.
#[derive(Debug)]
struct BundleRevocation {
    bundle: String,
    /// `None` when no source of the bundle covers the certificate.
    status: Option<Status>,
    /// Each source and what it said.
    sources: Vec<(Status, String)>,
}

/// What one revocation source says about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Good,
    Unknown,
    Revoked,
}

pub(super) async fn run(request: Request<'_>) -> ExitCode {
    let mut chain = match pem::load_certs(request.cert) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(CANNOT_JUDGE);
        }
    };
    if let Some(path) = request.chain {
        match pem::load_certs(path) {
            Ok(more) => chain.extend(more),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(CANNOT_JUDGE);
            }
        }
    }
    let identity = match PeerIdentity::from_der(&chain[0]) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", request.cert.display());
            return ExitCode::from(CANNOT_JUDGE);
        }
    };
    let Some(config_path) = request.config else {
        if request.json {
            println!(
                "{}",
                json!({ "verdict": null, "certificate": certificate_json(&identity) })
            );
        } else {
            print_identity(&identity);
        }
        return ExitCode::SUCCESS;
    };
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems.iter() {
                eprintln!("error: {p}");
            }
            return ExitCode::from(CANNOT_JUDGE);
        }
    };
    // Everything `serve` loads before it accepts: trust bundles, every CRL verified once, OCSP.
    let snapshot = match runtime::prepare(config, Registry::new()).await {
        Ok(s) => s,
        Err(e) => {
            super::print_start_error(config_path, &e);
            return ExitCode::from(CANNOT_JUDGE);
        }
    };
    let admission = match admission::admit(&snapshot, &chain).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}: {e}", request.cert.display());
            return ExitCode::from(CANNOT_JUDGE);
        }
    };
    let revocation = if revocation_matters(admission.refused.as_ref()) {
        revocation(&snapshot, &admission, &chain).await
    } else {
        Vec::new()
    };
    let config = &snapshot.config;
    let refusal = admission
        .refused
        .as_ref()
        .map(|r| (r.reason(), why(r, config, &admission, &chain, &revocation)));
    if request.json {
        print_json(config, &admission, refusal.as_ref(), &revocation);
    } else {
        print_text(config, &admission, refusal.as_ref(), &revocation);
    }
    if refusal.is_some() {
        ExitCode::from(REFUSED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Revocation is worth reporting when the chain verified, or was refused for revocation itself.
fn revocation_matters(refused: Option<&Refused>) -> bool {
    !matches!(
        refused,
        Some(Refused::Handshake { kind, .. })
            if !matches!(kind, HandshakeFailure::Revoked | HandshakeFailure::RevocationUnknown)
    )
}

/// Why the gateway refuses, in the terms of this certificate and configuration.
fn why(
    refused: &Refused,
    config: &Config,
    admission: &Admission,
    chain: &[CertificateDer<'_>],
    revocation: &[BundleRevocation],
) -> String {
    let id = &admission.identity;
    let partner = admission.partner.map(|(p, how)| {
        let partner = &config.partners[p.0];
        (
            partner.id.as_str(),
            how.as_str(),
            config.trust_bundles[partner.trust_bundle.0].name.as_str(),
        )
    });
    let said = |status: Status| {
        let sources: Vec<&str> = revocation
            .iter()
            .flat_map(|b| &b.sources)
            .filter(|(s, _)| *s == status)
            .map(|(_, source)| source.as_str())
            .collect();
        if sources.is_empty() {
            String::new()
        } else {
            format!(" ({})", sources.join("; "))
        }
    };
    match refused {
        Refused::Handshake { kind, error } => match kind {
            HandshakeFailure::UnknownCa => {
                let expected = match partner {
                    Some((p, _, bundle)) => {
                        format!("partner `{p}` expects trust bundle `{bundle}`, and no configured bundle anchors it")
                    }
                    None => "no configured trust bundle anchors it".to_owned(),
                };
                let hint = if chain.len() == 1 {
                    "; if the partner sends intermediates, give them with --chain"
                } else {
                    ""
                };
                format!(
                    "the chain does not lead to a trusted CA (issuer {}): {expected}{hint}",
                    id.issuer
                )
            }
            HandshakeFailure::Expired => {
                let now = UnixTime::now().as_secs();
                let now = i64::try_from(now).unwrap_or(i64::MAX);
                if now > id.not_after {
                    format!(
                        "the certificate expired at {} (now {})",
                        rfc3339(id.not_after),
                        rfc3339(now)
                    )
                } else if now < id.not_before {
                    format!(
                        "the certificate is not valid before {} (now {})",
                        rfc3339(id.not_before),
                        rfc3339(now)
                    )
                } else {
                    "a certificate in the chain is outside its validity period".to_owned()
                }
            }
            HandshakeFailure::BadEku => format!(
                "the certificate's extended key usage is {}; the gateway requires clientAuth",
                if id.eku.is_empty() {
                    "absent".to_owned()
                } else {
                    id.eku.join(", ")
                }
            ),
            HandshakeFailure::Revoked => {
                format!(
                    "a certificate in the chain is revoked{}",
                    said(Status::Revoked)
                )
            }
            HandshakeFailure::RevocationUnknown => format!(
                "revocation is configured but cannot answer for this chain{}",
                said(Status::Unknown)
            ),
            HandshakeFailure::ChainTooLong => format!(
                "the chain has {} intermediate(s) and {} bytes; the limits are max_chain_depth {} and max_chain_bytes {}",
                chain.len() - 1,
                chain.iter().map(|c| c.len()).sum::<usize>(),
                config.server.limits.max_chain_depth,
                config.server.limits.max_chain_bytes,
            ),
            _ => crate::error_chain(error),
        },
        Refused::Request(refusal) => match refusal {
            Refusal::UnknownPartner => format!(
                "the chain verifies, but no partner claims this certificate: fingerprint {}, spiffe {}, dns {}, cn {}",
                id.fingerprint_hex(),
                id.spiffe.as_deref().unwrap_or("-"),
                if id.san_dns.is_empty() { "-".to_owned() } else { id.san_dns.join(", ") },
                id.subject_cn.as_deref().unwrap_or("-"),
            ),
            Refusal::WrongTrustBundle => match partner {
                Some((p, how, bundle)) => format!(
                    "the certificate maps to partner `{p}` (by {how}), but its chain does not verify under that partner's trust bundle `{bundle}`"
                ),
                None => "the chain does not verify under the partner's trust bundle".to_owned(),
            },
            Refusal::CertificateRevoked => {
                format!("the certificate is revoked{}", said(Status::Revoked))
            }
            Refusal::RevocationUnknown => format!(
                "no valid revocation answer, and the bundle's OCSP mode is hard_fail{}",
                said(Status::Unknown)
            ),
            other => format!("every request is refused with {}", other.as_str()),
        },
    }
}

/// What the revocation sources of the relevant bundles say: the partner's bundle, or without a
/// partner every bundle. The sources are asked as `serve` asks them (the CRL sets loaded and
/// verified at start, the OCSP responder under its timeout, answers from its cache first).
async fn revocation(
    snapshot: &Snapshot,
    admission: &Admission,
    chain: &[CertificateDer<'_>],
) -> Vec<BundleRevocation> {
    let config = &snapshot.config;
    let bundles: Vec<BundleId> = match admission.partner {
        Some((id, _)) => vec![config.partners[id.0].trust_bundle],
        None => (0..config.trust_bundles.len()).map(BundleId).collect(),
    };
    let revocation = &snapshot.revocation;
    let now = UnixTime::now();
    let mut out = Vec::with_capacity(bundles.len());
    for bundle in bundles {
        let mut sources: Vec<(Status, String)> = Vec::new();
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
                    sources.push((Status::Revoked, format!("CRL {}{whose}", origin())))
                }
                // Intermediates that are not revoked are not worth a line.
                Verdict::Good if i == 0 => {
                    sources.push((Status::Good, format!("CRL {}", origin())))
                }
                Verdict::Unknown => sources.push((
                    Status::Unknown,
                    format!("CRL: no current CRL loaded for the issuer{whose}"),
                )),
                Verdict::Good | Verdict::NotChecked => {}
            }
        }
        if let Some((url, result)) = revocation.query_ocsp(bundle, chain).await {
            let url = url.unwrap_or_else(|| "responder".to_owned());
            sources.push(match result {
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
        out.push(BundleRevocation {
            bundle: config.trust_bundles[bundle.0].name.clone(),
            status: sources.iter().map(|(s, _)| *s).max(),
            sources,
        });
    }
    out
}

fn print_text(
    config: &Config,
    admission: &Admission,
    refusal: Option<&(&str, String)>,
    revocation: &[BundleRevocation],
) {
    match (refusal, admission.partner) {
        (Some((reason, why)), _) => println!("REFUSED: {reason} — {why}"),
        (None, Some((id, _))) => {
            let routes: Vec<&str> = partner_routes(config, id)
                .map(|r| r.name.as_str())
                .collect();
            let routes = if routes.is_empty() {
                "no routes".to_owned()
            } else {
                format!("routes: {}", routes.join(", "))
            };
            println!(
                "ACCEPTED as partner {} ({routes})",
                config.partners[id.0].id
            );
        }
        // The gateway never serves a chain without a partner; `admit` refuses it.
        (None, None) => println!("ACCEPTED"),
    }
    print_identity(&admission.identity);
    match admission.partner {
        None => println!(
            "partner:      none — this certificate maps to no partner in {}",
            config.source.display()
        ),
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
            if refusal.is_some() {
                println!("routes:       none (refused)");
            } else {
                println!("routes:");
                let mut any = false;
                for route in partner_routes(config, id) {
                    any = true;
                    println!(
                        "  - {} {} {}{} → {}",
                        route.name,
                        methods(route),
                        route.host.as_deref().unwrap_or("*"),
                        path(route),
                        config.upstreams[route.upstream.0].name
                    );
                }
                if !any {
                    println!("  (none)");
                }
            }
        }
    }
    let several = revocation.len() > 1;
    for b in revocation {
        let suffix = if several {
            format!(" [trust bundle {}]", b.bundle)
        } else {
            String::new()
        };
        let Some(overall) = b.status else {
            println!(
                "revocation:   not checked (no CRL or OCSP of trust bundle {} covers this certificate)",
                b.bundle
            );
            continue;
        };
        let sources: Vec<String> = b
            .sources
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
}

fn print_json(
    config: &Config,
    admission: &Admission,
    refusal: Option<&(&str, String)>,
    revocation: &[BundleRevocation],
) {
    let partner = admission.partner.map(|(id, how)| {
        let p = &config.partners[id.0];
        json!({
            "id": p.id,
            "matched_by": how.as_str(),
            "owner": p.owner,
            "trust_bundle": config.trust_bundles[p.trust_bundle.0].name,
            "scopes": p.scopes.iter().map(|s| config.scopes[s.0].as_str()).collect::<Vec<_>>(),
        })
    });
    let routes: Vec<Value> = match (refusal, admission.partner) {
        (None, Some((id, _))) => partner_routes(config, id)
            .map(|r| {
                json!({
                    "name": r.name,
                    "methods": r.methods.as_ref().map(|m| m.iter().map(http::Method::as_str).collect::<Vec<_>>()),
                    "host": r.host,
                    "path": match &r.path { config::model::PathMatch::Exact(p) => Some(p), config::model::PathMatch::Prefix(_) => None },
                    "path_prefix": match &r.path { config::model::PathMatch::Prefix(p) => Some(p), config::model::PathMatch::Exact(_) => None },
                    "upstream": config.upstreams[r.upstream.0].name,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let stage = admission.refused.as_ref().map(|r| match r {
        Refused::Handshake { .. } => "handshake",
        Refused::Request(_) => "request",
    });
    let revocation: Vec<Value> = revocation
        .iter()
        .map(|b| {
            json!({
                "trust_bundle": b.bundle,
                "status": b.status.map(Status::as_str),
                "sources": b.sources.iter().map(|(s, source)| json!({"status": s.as_str(), "source": source})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let out = json!({
        "verdict": if refusal.is_some() { "refused" } else { "accepted" },
        "reason": refusal.map(|(r, _)| *r),
        "why": refusal.map(|(_, w)| w),
        "stage": stage,
        "partner": partner,
        "routes": routes,
        "certificate": certificate_json(&admission.identity),
        "revocation": revocation,
    });
    println!("{out}");
}

fn partner_routes(
    config: &Config,
    partner: crate::config::model::PartnerId,
) -> impl Iterator<Item = &crate::config::model::Route> {
    let scopes = &config.partners[partner.0].scopes;
    config
        .routes
        .iter()
        .filter(move |r| scopes.binary_search(&r.scope).is_ok())
}

fn methods(route: &crate::config::model::Route) -> String {
    route.methods.as_ref().map_or_else(
        || "any method".to_owned(),
        |m| {
            m.iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        },
    )
}

fn path(route: &crate::config::model::Route) -> String {
    match &route.path {
        config::model::PathMatch::Exact(p) => p.clone(),
        config::model::PathMatch::Prefix(p) => format!("{p}/…"),
    }
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

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn certificate_json(id: &PeerIdentity) -> Value {
    json!({
        "subject": id.subject,
        "issuer": id.issuer,
        "serial": id.serial,
        "sha256": id.fingerprint_hex(),
        "spiffe": id.spiffe,
        "san_dns": id.san_dns,
        "san_uri": id.san_uri,
        "not_before": rfc3339(id.not_before),
        "not_after": rfc3339(id.not_after),
        "eku": id.eku,
    })
}

fn print_identity(id: &PeerIdentity) {
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!("subject:      {}", id.subject);
    println!("issuer:       {}", id.issuer);
    println!("serial:       {}", id.serial);
    println!("sha256:       {}", id.fingerprint_hex());
    println!("spiffe:       {}", id.spiffe.as_deref().unwrap_or("-"));
    println!("san dns:      {}", list(&id.san_dns));
    println!("san uri:      {}", list(&id.san_uri));
    println!("not before:   {}", rfc3339(id.not_before));
    println!("not after:    {}", rfc3339(id.not_after));
    println!("eku:          {}", list(&id.eku));
}
