//! The portal's pages: one askama template per page (`templates/portal/`), HTML-escaped by
//! default, and the views that fill them from registry records.

use askama::Template;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::lifecycle::ca;
use crate::lifecycle::commands;
use crate::lifecycle::registry::{
    CertStatus, Certificate, Enrolment, Event, Partner, PartnerStatus, Record,
};
use crate::usage::UsageFile;

/// Certificates listed as expiring when they end within this many days.
pub(super) const EXPIRING_DAYS: i64 = 30;
/// Scopes listed as unused when not used within this many days.
pub(super) const UNUSED_DAYS: i64 = 30;

#[derive(Template)]
#[template(path = "portal/home.html")]
pub(super) struct Home {
    pub(super) title: &'static str,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) csr: String,
    pub(super) contact: String,
    pub(super) description: String,
}

#[derive(Template)]
#[template(path = "portal/enrolment.html")]
pub(super) struct EnrolmentPage {
    pub(super) title: &'static str,
    pub(super) csrf: String,
    pub(super) v: EnrolmentView,
    pub(super) commands: Vec<Command>,
}

#[derive(Template)]
#[template(path = "portal/login.html")]
pub(super) struct Login {
    pub(super) title: &'static str,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) admin_token: bool,
    pub(super) certificate: bool,
}

#[derive(Template)]
#[template(path = "portal/approver.html")]
pub(super) struct ApproverPage {
    pub(super) title: &'static str,
    pub(super) csrf: String,
    pub(super) who: String,
    pub(super) via: &'static str,
    pub(super) pending: Vec<PendingView>,
    pub(super) partners: Vec<PartnerView>,
    pub(super) expiring: Vec<ExpiringView>,
    pub(super) unused: Vec<UnusedView>,
    pub(super) reasons: &'static [&'static str],
    pub(super) expiring_days: i64,
    pub(super) unused_days: i64,
}

#[derive(Template)]
#[template(path = "portal/history.html")]
pub(super) struct History {
    pub(super) title: String,
    pub(super) events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "portal/result.html")]
pub(super) struct Outcome {
    pub(super) title: &'static str,
    pub(super) ok: bool,
    pub(super) message: String,
    pub(super) back: &'static str,
}

pub(super) struct Command {
    pub(super) label: &'static str,
    pub(super) text: String,
}

pub(super) struct CsrView {
    pub(super) subject: String,
    pub(super) sans: String,
    pub(super) key: String,
}

pub(super) struct CertView {
    pub(super) serial: String,
    pub(super) not_after: String,
    pub(super) status: &'static str,
}

pub(super) struct ScopeView {
    pub(super) scope: String,
    /// Successful and refused sandbox calls, as the gateways last wrote them.
    pub(super) ok: u64,
    pub(super) refused: u64,
    pub(super) needed: u64,
    pub(super) last_call: String,
}

pub(super) struct EnrolmentView {
    pub(super) partner: String,
    pub(super) identity: String,
    pub(super) status: &'static str,
    pub(super) reason: Option<String>,
    pub(super) submitted_at: String,
    pub(super) csr: CsrView,
    pub(super) sandbox_only: bool,
    pub(super) certificate: Option<CertView>,
    pub(super) scopes: Vec<ScopeView>,
    /// Successful sandbox calls production needs per scope.
    pub(super) min_calls: u64,
    /// The latest calls per scope that must include no refused one; 0: not checked.
    pub(super) clean_calls: u64,
}

pub(super) struct EnrolmentSummary {
    pub(super) submitted_at: String,
    pub(super) contact: String,
    pub(super) description: String,
    pub(super) csr: CsrView,
}

pub(super) struct PendingView {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) identity: String,
    pub(super) requested_scopes: String,
    pub(super) requested_by: String,
    pub(super) enrolment: Option<EnrolmentSummary>,
}

pub(super) struct PartnerView {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) status: &'static str,
    pub(super) scopes: String,
    pub(super) sandbox_only: bool,
    pub(super) promotable: bool,
    /// For a sandbox-only partner: successful sandbox calls per scope against the threshold.
    pub(super) sandbox_calls: String,
    pub(super) certs: Vec<CertView>,
}

pub(super) struct ExpiringView {
    pub(super) partner: String,
    pub(super) serial: String,
    pub(super) not_after: String,
    pub(super) days_left: i64,
}

pub(super) struct UnusedView {
    pub(super) partner: String,
    pub(super) scope: String,
    pub(super) last_used: String,
}

pub(super) struct EventView {
    pub(super) id: i64,
    pub(super) time: String,
    pub(super) action: String,
    pub(super) actor: String,
    pub(super) reason: String,
}

// === views ===

/// What a CSR asks for, for a person to read; a CSR that does not parse says so.
pub(super) fn csr_view(pem: &str, partner: &Partner) -> CsrView {
    let unreadable = |why: &str| CsrView {
        subject: "-".to_owned(),
        sans: "-".to_owned(),
        key: format!("unreadable CSR: {why}"),
    };
    let Ok(der) = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()) else {
        return unreadable("not PEM");
    };
    let Ok((_, csr)) = X509CertificationRequest::from_der(der.as_ref()) else {
        return unreadable("not PKCS#10");
    };
    let subject = csr.certification_request_info.subject.to_string();
    let mut sans = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                sans.push(match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    other => other.to_string(),
                });
            }
        }
    }
    let key = match ca::check_csr(pem.as_bytes(), &partner.identity) {
        Ok(checked) => checked.key,
        Err(e) => format!("refused: {}", crate::error_chain(&e)),
    };
    CsrView {
        subject: if subject.is_empty() {
            "(empty)".to_owned()
        } else {
            subject
        },
        sans: if sans.is_empty() {
            "(none)".to_owned()
        } else {
            sans.join(", ")
        },
        key,
    }
}

fn cert_view(c: &Certificate) -> CertView {
    CertView {
        serial: c.serial.clone(),
        not_after: c.not_after.clone(),
        status: c.status.as_str(),
    }
}

fn last_call(usage: &UsageFile, partner: &str, scope: &str) -> String {
    usage
        .last_used(partner, scope)
        .and_then(|t| i64::try_from(t).ok())
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| "never".to_owned(), commands::format_time)
}

/// The partner's own view of its enrolment.
pub(super) fn enrolment_view(
    record: &Record,
    partner: &Partner,
    e: &Enrolment,
    usage: &UsageFile,
    promotion: crate::config::model::Promotion,
) -> EnrolmentView {
    let cert = record
        .certificates
        .iter()
        .find(|c| Some(&c.serial) == e.serial.as_ref());
    let reason = match (&e.reason, cert) {
        (Some(r), _) => Some(r.clone()),
        (None, Some(c)) if c.status == CertStatus::Revoked => Some(format!(
            "the certificate was revoked: {}",
            c.revocation_reason.as_deref().unwrap_or("unspecified")
        )),
        _ => None,
    };
    let scopes = partner
        .scopes
        .iter()
        .chain(&partner.requested_scopes)
        .map(|scope| {
            let sandbox = crate::config::model::sandbox_scope(scope);
            let calls = usage.calls(&partner.id, &sandbox);
            ScopeView {
                scope: scope.clone(),
                ok: calls.ok,
                refused: calls.refused,
                needed: promotion.min_calls,
                last_call: last_call(usage, &partner.id, &sandbox),
            }
        })
        .collect();
    EnrolmentView {
        partner: partner.id.clone(),
        identity: partner.identity.to_string(),
        status: e.status.as_str(),
        reason,
        submitted_at: e.submitted_at.clone(),
        csr: csr_view(&e.csr_pem, partner),
        sandbox_only: partner.sandbox_only,
        certificate: cert.map(cert_view),
        scopes,
        min_calls: promotion.min_calls,
        clean_calls: promotion.clean_calls,
    }
}

/// Copy-paste commands for the partner's identity and certificate.
pub(super) fn commands_for(partner: &Partner, gateway_url: &str, status_url: &str) -> Vec<Command> {
    let id = &partner.id;
    let (subj, san) = match &partner.identity {
        crate::lifecycle::Identity::Spiffe(u) => ("/".to_owned(), format!("URI:{u}")),
        crate::lifecycle::Identity::Dns(d) => ("/".to_owned(), format!("DNS:{d}")),
        crate::lifecycle::Identity::Cn(c) => (format!("/CN={c}"), String::new()),
    };
    let addext = if san.is_empty() {
        String::new()
    } else {
        format!(" \\\n  -addext \"subjectAltName={san}\"")
    };
    vec![
        Command {
            label: "A new key and CSR (for a renewal or a new enrolment)",
            text: format!(
                "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\\n  -keyout {id}-key.pem -out {id}.csr -subj \"{subj}\"{addext}"
            ),
        },
        Command {
            label: "Inspect the downloaded certificate",
            text: format!("openssl x509 -in {id}.pem -noout -subject -ext subjectAltName -enddate"),
        },
        Command {
            label: "Check the certificate matches your key",
            text: format!(
                "openssl x509 -in {id}.pem -noout -pubkey | openssl sha256\nopenssl pkey -in {id}-key.pem -pubout | openssl sha256"
            ),
        },
        Command {
            label: "Call the gateway with it",
            text: format!("curl --cert {id}.pem --key {id}-key.pem {gateway_url}/"),
        },
        Command {
            label: "This request's status as JSON",
            text: format!("curl {status_url}"),
        },
    ]
}

/// Everything the approver's view lists, from every record and the gateways' usage records.
pub(super) fn approver_lists(
    records: &[Record],
    usage: &UsageFile,
    promotion: crate::config::model::Promotion,
    now: time::OffsetDateTime,
) -> (
    Vec<PendingView>,
    Vec<PartnerView>,
    Vec<ExpiringView>,
    Vec<UnusedView>,
) {
    let mut pending = Vec::new();
    let mut partners = Vec::new();
    let mut expiring = Vec::new();
    let mut unused = Vec::new();
    let unused_cutoff = now - time::Duration::days(UNUSED_DAYS);
    for r in records {
        let Some(p) = &r.partner else { continue };
        let enrolling = p
            .enrolment
            .as_ref()
            .filter(|e| e.status == crate::lifecycle::registry::EnrolmentStatus::Pending);
        let waiting = p.status == PartnerStatus::Pending
            || (p.status == PartnerStatus::Approved
                && (!p.requested_scopes.is_empty() || enrolling.is_some()));
        if waiting {
            pending.push(PendingView {
                id: p.id.clone(),
                owner: p.owner.clone(),
                identity: p.identity.to_string(),
                requested_scopes: p.requested_scopes.join(", "),
                requested_by: p.requested_by.clone(),
                enrolment: enrolling.map(|e| EnrolmentSummary {
                    submitted_at: e.submitted_at.clone(),
                    contact: e.contact.clone().unwrap_or_else(|| "-".to_owned()),
                    description: e.description.clone().unwrap_or_else(|| "-".to_owned()),
                    csr: csr_view(&e.csr_pem, p),
                }),
            });
        }
        let valid: Vec<&Certificate> = r
            .certificates
            .iter()
            .filter(|c| c.status == CertStatus::Valid)
            .collect();
        for c in &valid {
            if let Some(end) = commands::parse_time(&c.not_after) {
                let left = (end - now).whole_days();
                if left <= EXPIRING_DAYS {
                    expiring.push(ExpiringView {
                        partner: p.id.clone(),
                        serial: c.serial.clone(),
                        not_after: c.not_after.clone(),
                        days_left: left,
                    });
                }
            }
        }
        if p.status == PartnerStatus::Approved {
            let granted_long_ago = p
                .approved_at
                .as_deref()
                .and_then(commands::parse_time)
                .is_some_and(|t| t <= unused_cutoff);
            for scope in &p.scopes {
                let last = usage
                    .last_used(&p.id, scope)
                    .max(usage.last_used(&p.id, &crate::config::model::sandbox_scope(scope)));
                let cutoff = u64::try_from(unused_cutoff.unix_timestamp()).unwrap_or(0);
                let stale = match last {
                    Some(t) => t < cutoff,
                    None => granted_long_ago,
                };
                if stale {
                    unused.push(UnusedView {
                        partner: p.id.clone(),
                        scope: scope.clone(),
                        last_used: last_call(usage, &p.id, scope),
                    });
                }
            }
        }
        partners.push(PartnerView {
            id: p.id.clone(),
            owner: p.owner.clone(),
            status: p.status.as_str(),
            scopes: if p.scopes.is_empty() {
                "-".to_owned()
            } else {
                p.scopes.join(", ")
            },
            sandbox_only: p.sandbox_only,
            promotable: p.status == PartnerStatus::Approved && p.sandbox_only,
            sandbox_calls: if p.sandbox_only {
                p.scopes
                    .iter()
                    .map(|scope| {
                        let calls = usage
                            .calls(&p.id, &crate::config::model::sandbox_scope(scope))
                            .ok;
                        format!("{scope}: {calls} of {}", promotion.min_calls)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::new()
            },
            certs: valid.into_iter().map(cert_view).collect(),
        });
    }
    expiring.sort_by_key(|e| e.days_left);
    (pending, partners, expiring, unused)
}

pub(super) fn event_view(e: &Event) -> EventView {
    EventView {
        id: e.id,
        time: e.time.clone(),
        action: e.action.clone(),
        actor: e.actor.clone(),
        reason: e.reason.clone().unwrap_or_default(),
    }
}
