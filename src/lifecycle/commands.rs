//! The lifecycle commands: one function each, shared by the CLI and the enrolment API.
//!
//! Every function takes the registry's write lock, checks the request against the partner's
//! record as it stands under that lock, and writes exactly one event whose `after` is the new
//! record. Publishing the gateway's files is a separate step ([`super::publish::publish`]) so a
//! failed publish never loses a recorded change: it is retried by the next change or by
//! `certgate registry publish`.

use std::collections::{BTreeSet, HashMap};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::{self, CaError, CsrError, Signer};
use super::registry::{
    serial_hex, CertStatus, Certificate, Enrolment, EnrolmentStatus, Event, Identity, Invitation,
    Partner, PartnerStatus, Record, REVOCATION_REASONS,
};
use super::store::{self, Draft, Store, StoreError};
use super::token;
use crate::config::model::{sandbox_scope, Promotion};
use crate::usage::UsageFile;

/// Longest validity `partner issue` grants unless configured otherwise, in days.
pub use crate::config::published::DEFAULT_MAX_VALIDITY_DAYS;

/// What every command is checked against.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The scopes the gateway's routes define; `None` skips the check (no config at hand).
    pub known_scopes: Option<BTreeSet<String>>,
    /// Identities the configuration's YAML `partners:` already claim, with the partner's ID: a
    /// registry partner with one of them would make the gateway's configuration invalid.
    pub yaml_identities: HashMap<Identity, String>,
    pub max_validity_days: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("an actor is required for every change (--actor NAME)")]
    NoActor,
    #[error("invalid partner ID `{0}`: use lower-case letters, digits, `.`, `_` and `-`")]
    BadId(String),
    #[error("invalid owner `{0}`: expected an e-mail address")]
    BadOwner(String),
    #[error("invalid identity: {0}")]
    BadIdentity(String),
    #[error("unknown scope(s) {}: the gateway's routes define {}", list(.unknown), list(.known))]
    UnknownScopes {
        unknown: Vec<String>,
        known: Vec<String>,
    },
    #[error("no scopes given")]
    NoScopes,
    #[error("partner `{0}` does not exist")]
    NotFound(String),
    #[error("partner ID `{id}` is already taken (status {status}); IDs are never reused")]
    Taken { id: String, status: PartnerStatus },
    #[error("the identity {identity} is already claimed by partner `{by}`")]
    IdentityClaimed { identity: Identity, by: String },
    #[error("the identity {identity} is already claimed by partner `{by}` in the configuration's YAML `partners:`")]
    IdentityInYaml { identity: Identity, by: String },
    #[error("partner `{id}` is {status}; this needs a partner that is {needed}")]
    WrongStatus {
        id: String,
        status: PartnerStatus,
        needed: &'static str,
    },
    #[error("partner `{0}` already holds exactly that: nothing to change")]
    NothingToChange(String),
    #[error("partner `{0}` has nothing waiting for approval")]
    NothingPending(String),
    #[error(
        "`{actor}` asked for this change and cannot approve it: approval needs a second person"
    )]
    SameActor { actor: String },
    #[error("a reason is required (--reason)")]
    NoReason,
    #[error("unknown revocation reason `{0}`: use one of {list}", list = REVOCATION_REASONS.join(", "))]
    BadRevocationReason(String),
    #[error("requested validity {days} days is over the maximum of {max} days")]
    ValidityTooLong { days: u32, max: u32 },
    #[error("validity must be at least one day")]
    ValidityZero,
    #[error("CSR refused")]
    Csr(#[from] CsrError),
    #[error("partner `{id}` has no valid certificate{}", serial.as_ref().map(|s| format!(" with serial {s}")).unwrap_or_default())]
    NoCertificate { id: String, serial: Option<String> },
    #[error("the enrolment token is not valid")]
    InvalidToken,
    #[error(
        "the enrolment token of partner `{0}` was already used; ask its owner for a new invitation"
    )]
    TokenUsed(String),
    #[error(
        "the enrolment token of partner `{id}` expired at {at}; ask its owner for a new invitation"
    )]
    TokenExpired { id: String, at: String },
    #[error("an invitation must expire within {max_hours} hours (asked: {hours} hours)")]
    ExpiryTooLong { hours: u64, max_hours: u64 },
    #[error("a contact or description is over {max} characters")]
    FieldTooLong { max: usize },
    #[error("no such enrolment request")]
    NoEnrolment,
    #[error("partner `{0}` has an enrolment request waiting: approving it issues its certificate, which needs the CA")]
    EnrolmentNeedsCa(String),
    #[error("partner `{0}` already holds its scopes in production")]
    AlreadyProduction(String),
    #[error("`{actor}` is the partner's owner or asked for it, and cannot promote it: promotion needs a second person")]
    PromoterIsOwner { actor: String },
    #[error("promotion of `{id}` refused: {}", .missing.join("; "))]
    NotPromotable { id: String, missing: Vec<String> },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Days a certificate must still be valid for its partner to be promoted, unless told otherwise.
pub const DEFAULT_PROMOTE_MIN_DAYS: u32 = 14;

/// The sandbox usage a promotion needs (successful calls per scope, no recent refusals), as the
/// gateway recorded it. Kept behind this one trait so the evidence source can be plugged in
/// without touching the gate.
pub trait UsageEvidence: Send + Sync {
    /// `Ok(summary)` when the partner's sandbox usage qualifies it, `Err(what is missing)`
    /// otherwise; the summary goes into the promotion's event.
    ///
    /// # Errors
    /// What is missing, for the operator.
    fn check(&self, partner: &Partner) -> Result<String, String>;
}

/// The evidence source while the gateway records no per-partner usage: it lets the other checks
/// decide and says in the event that call counts were not part of the evidence.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageNotRecorded;

impl UsageEvidence for UsageNotRecorded {
    fn check(&self, _partner: &Partner) -> Result<String, String> {
        Ok("sandbox call counts: not recorded (no usage source configured)".to_owned())
    }
}

/// The evidence the gateways recorded in the state folder's usage file: per scope the partner
/// was granted, at least [`Promotion::min_calls`] successful calls on sandbox routes needing it,
/// and none refused among the latest [`Promotion::clean_calls`] of them.
#[derive(Debug, Clone)]
pub struct RecordedUsage {
    pub usage: UsageFile,
    pub promotion: Promotion,
}

impl UsageEvidence for RecordedUsage {
    fn check(&self, partner: &Partner) -> Result<String, String> {
        let Promotion {
            min_calls,
            clean_calls,
        } = self.promotion;
        let mut missing = Vec::new();
        let mut seen = Vec::new();
        for scope in &partner.scopes {
            let calls = self.usage.calls(&partner.id, &sandbox_scope(scope));
            if calls.ok < min_calls {
                missing.push(format!(
                    "`{scope}`: {} of {min_calls} successful sandbox calls",
                    calls.ok
                ));
            }
            match calls.since_refused {
                Some(since) if clean_calls > 0 && since < clean_calls => missing.push(format!(
                    "`{scope}`: a refused sandbox call among the latest {clean_calls} ({since} since it)"
                )),
                _ => {}
            }
            seen.push(format!(
                "`{scope}` {} successful of {} ({} refused)",
                calls.ok, calls.calls, calls.refused
            ));
        }
        if !missing.is_empty() {
            return Err(missing.join("; "));
        }
        let clean = if clean_calls > 0 {
            format!(", none refused in the latest {clean_calls}")
        } else {
            String::new()
        };
        Ok(format!(
            "sandbox calls: {} (needed {min_calls} successful per scope{clean})",
            seen.join(", ")
        ))
    }
}

/// The longest an invitation may stay open: a token is a bearer credential, so it should not
/// outlive the onboarding it was made for.
pub const MAX_INVITATION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Longest `contact` and `description` an enrolment keeps, in characters.
pub const MAX_ENROLMENT_TEXT: usize = 1000;

/// What `invite` hands out: shown once, never stored.
#[derive(Debug)]
pub struct Invited {
    pub outcome: Outcome,
    /// The one-time enrolment token.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// What an enrolment submits.
#[derive(Debug, Clone, Copy)]
pub struct Enrol<'a> {
    pub token: &'a str,
    /// PEM or DER.
    pub csr: &'a [u8],
    pub contact: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// What an accepted enrolment answers: the request's id and the secret of its status URL, shown
/// once, never stored.
#[derive(Debug)]
pub struct Enrolled {
    pub outcome: Outcome,
    pub partner: String,
    pub id: String,
    pub secret: String,
}

/// What a command did.
#[derive(Debug)]
pub struct Outcome {
    pub event: Event,
    pub record: Record,
    /// For `issue` and `renew`: the new certificate and the CA certificate, PEM.
    pub chain_pem: Option<String>,
}

/// `partner register`.
pub struct Register<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scopes: &'a [String],
    pub identity: Identity,
}

/// Current time, RFC 3339 UTC to the second: the registry's one time format.
pub fn now_rfc3339() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Formats a time the way the registry stores it.
pub fn format_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parses a registry time.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Records a pending partner.
///
/// # Errors
/// See [`CommandError`]; nothing is written on error.
pub async fn register(
    store: &mut Store,
    policy: &Policy,
    actor: &str,
    req: Register<'_>,
) -> Result<Outcome, CommandError> {
    new_partner(store, policy, actor, req, None).await
}

/// Records a pending partner, like [`register`], with a one-time enrolment token that lets the
/// partner's developer submit its CSR through the enrolment API. The token is returned once; the
/// registry keeps its SHA-256 only.
///
/// # Errors
/// As [`register`]; and an expiry of zero or over [`MAX_INVITATION`].
pub async fn invite(
    store: &mut Store,
    policy: &Policy,
    actor: &str,
    req: Register<'_>,
    expires_in: std::time::Duration,
) -> Result<Invited, CommandError> {
    if expires_in.is_zero() || expires_in > MAX_INVITATION {
        return Err(CommandError::ExpiryTooLong {
            hours: expires_in.as_secs() / 3600,
            max_hours: MAX_INVITATION.as_secs() / 3600,
        });
    }
    let secret = token::generate()?;
    let expires = OffsetDateTime::now_utc()
        + time::Duration::try_from(expires_in).unwrap_or(time::Duration::ZERO);
    let expires_at = format_time(expires);
    let invitation = Invitation {
        token_sha256: secret.sha256,
        expires_at: expires_at.clone(),
        used_at: None,
    };
    let outcome = new_partner(store, policy, actor, req, Some(invitation)).await?;
    Ok(Invited {
        outcome,
        token: secret.text,
        expires_at,
    })
}

async fn new_partner(
    store: &mut Store,
    policy: &Policy,
    actor: &str,
    req: Register<'_>,
    invitation: Option<Invitation>,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    check_id(req.id)?;
    if !req.owner.contains('@') || req.owner.starts_with('@') || req.owner.ends_with('@') {
        return Err(CommandError::BadOwner(req.owner.to_owned()));
    }
    let identity = normalise_identity(req.identity)?;
    let scopes = check_scopes(policy, req.scopes)?;
    if scopes.is_empty() {
        return Err(CommandError::NoScopes);
    }
    if let Some(by) = policy.yaml_identities.get(&identity) {
        return Err(CommandError::IdentityInYaml {
            identity,
            by: by.clone(),
        });
    }
    let mut w = store.write().await?;
    let before = w.record(req.id).await?;
    if let Some(p) = &before.partner {
        return Err(CommandError::Taken {
            id: p.id.clone(),
            status: p.status,
        });
    }
    if let Some(by) = w.live_holder(&identity).await? {
        return Err(CommandError::IdentityClaimed { identity, by });
    }
    let now = now_rfc3339();
    let action = if invitation.is_some() {
        "invite"
    } else {
        "register"
    };
    let after = Record {
        partner: Some(Partner {
            id: req.id.to_owned(),
            owner: req.owner.to_owned(),
            identity,
            status: PartnerStatus::Pending,
            scopes: Vec::new(),
            requested_scopes: scopes,
            requested_by: actor.to_owned(),
            registered_at: now.clone(),
            approved_at: None,
            first_issued_at: None,
            sandbox_only: invitation.is_some(),
            promoted_at: None,
            invitation,
            enrolment: None,
        }),
        certificates: Vec::new(),
    };
    let event = w
        .append(draft(&now, actor, action, req.id, None), &before, &after)
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

/// Trades an invitation's token for a pending enrolment request holding the partner's CSR.
///
/// The token is found by comparing its hash with every invitation's in constant time, and it is
/// marked used in the same event, under the registry's write lock: of concurrent submissions of
/// one token exactly one succeeds. A refused CSR leaves the token unused, so the developer can fix
/// it and submit again.
///
/// # Errors
/// The token is unknown, used or expired; the partner is no longer pending or approved; the CSR
/// is refused by [`ca::check_csr`].
pub async fn enrol(
    store: &mut Store,
    actor: &str,
    req: Enrol<'_>,
) -> Result<Enrolled, CommandError> {
    need_actor(actor)?;
    let too_long = |t: Option<&str>| t.is_some_and(|t| t.chars().count() > MAX_ENROLMENT_TEXT);
    if too_long(req.contact) || too_long(req.description) {
        return Err(CommandError::FieldTooLong {
            max: MAX_ENROLMENT_TEXT,
        });
    }
    let presented = token::sha256_hex(req.token);
    let mut w = store.write().await?;
    let mut found = None;
    for (partner, hash) in w.invitations().await? {
        // Every candidate is compared, so the time taken does not depend on where a match is.
        if token::same(&presented, &hash) && found.is_none() {
            found = Some(partner);
        }
    }
    let id = found.ok_or(CommandError::InvalidToken)?;
    let before = w.record(&id).await?;
    let p = partner(&before, &id)?;
    let invitation = p.invitation.as_ref().ok_or(CommandError::InvalidToken)?;
    if invitation.used_at.is_some() {
        return Err(CommandError::TokenUsed(id));
    }
    let now_t = OffsetDateTime::now_utc();
    if parse_time(&invitation.expires_at).is_none_or(|t| t <= now_t) {
        return Err(CommandError::TokenExpired {
            id,
            at: invitation.expires_at.clone(),
        });
    }
    if !matches!(p.status, PartnerStatus::Pending | PartnerStatus::Approved) {
        return Err(wrong(&id, p.status, "pending or approved"));
    }
    let checked = ca::check_csr(req.csr, &p.identity)?;
    let handle = hex::encode(token::random::<8>()?);
    let secret = token::generate()?;
    let now = format_time(now_t);
    let mut np = p.clone();
    if let Some(inv) = np.invitation.as_mut() {
        inv.used_at = Some(now.clone());
    }
    np.enrolment = Some(Enrolment {
        id: handle.clone(),
        secret_sha256: secret.sha256,
        csr_pem: ca::csr_pem(req.csr),
        contact: req.contact.map(str::to_owned),
        description: req.description.map(str::to_owned),
        submitted_at: now.clone(),
        status: EnrolmentStatus::Pending,
        reason: None,
        serial: None,
    });
    let after = Record {
        partner: Some(np),
        certificates: before.certificates.clone(),
    };
    let reason = format!("enrolment {handle}; {}", checked.key);
    let event = w
        .append(
            draft(&now, actor, "enrol", &id, Some(&reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(Enrolled {
        outcome: done(event, after),
        partner: id,
        id: handle,
        secret: secret.text,
    })
}

/// The record and enrolment behind a status URL: its public `id` and its `secret`.
///
/// # Errors
/// [`CommandError::NoEnrolment`] for an unknown id and for a wrong secret alike, so a guess learns
/// nothing about which ids exist.
pub async fn enrolment(
    store: &mut Store,
    id: &str,
    secret: &str,
) -> Result<(Record, Enrolment), CommandError> {
    let presented = token::sha256_hex(secret);
    let Some(partner) = store.partner_of_enrolment(id).await? else {
        return Err(CommandError::NoEnrolment);
    };
    let record = store.record(&partner).await?;
    let enrolment = record
        .partner
        .as_ref()
        .and_then(|p| p.enrolment.clone())
        .filter(|e| e.id == id && token::same(&e.secret_sha256, &presented))
        .ok_or(CommandError::NoEnrolment)?;
    Ok((record, enrolment))
}

/// Approves a pending registration, or a pending scope addition: grants the requested scopes.
///
/// # Errors
/// The partner has nothing pending, or `actor` asked for it, or it has a pending enrolment (that
/// needs [`approve_issuing`]).
pub async fn approve(store: &mut Store, actor: &str, id: &str) -> Result<Outcome, CommandError> {
    approve_inner(store, None, actor, id).await
}

/// Approves like [`approve`]; when the partner has a pending enrolment request, also issues its
/// certificate from the stored CSR (checked again, by the same function as `partner issue`), in
/// the same event. The partner fetches it from the request's status URL.
///
/// # Errors
/// As [`approve`] and [`issue`].
pub async fn approve_issuing(
    store: &mut Store,
    policy: &Policy,
    signer: &dyn Signer,
    actor: &str,
    id: &str,
    days: u32,
) -> Result<Outcome, CommandError> {
    approve_inner(store, Some((policy, signer, days)), actor, id).await
}

async fn approve_inner(
    store: &mut Store,
    ca: Option<(&Policy, &dyn Signer, u32)>,
    actor: &str,
    id: &str,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    if let Some((policy, _, days)) = ca {
        check_days(policy, days)?;
    }
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let mut p = partner(&before, id)?.clone();
    let enrolling = p
        .enrolment
        .as_ref()
        .is_some_and(|e| e.status == EnrolmentStatus::Pending);
    match p.status {
        PartnerStatus::Pending => {}
        PartnerStatus::Approved if !p.requested_scopes.is_empty() || enrolling => {}
        PartnerStatus::Approved => return Err(CommandError::NothingPending(id.to_owned())),
        status => return Err(wrong(id, status, "pending")),
    }
    if p.requested_by == actor {
        return Err(CommandError::SameActor {
            actor: actor.to_owned(),
        });
    }
    let now = now_rfc3339();
    let mut scopes: BTreeSet<String> = p.scopes.drain(..).collect();
    scopes.extend(p.requested_scopes.drain(..));
    p.scopes = scopes.into_iter().collect();
    if p.status == PartnerStatus::Pending {
        p.status = PartnerStatus::Approved;
        p.approved_at = Some(now.clone());
    }
    let mut after = Record {
        partner: None,
        certificates: before.certificates.clone(),
    };
    let mut chain_pem = None;
    let mut reason = None;
    if enrolling {
        let Some((_, signer, days)) = ca else {
            return Err(CommandError::EnrolmentNeedsCa(id.to_owned()));
        };
        let csr = p
            .enrolment
            .as_ref()
            .map(|e| e.csr_pem.clone())
            .unwrap_or_default();
        let (cert, chain, key) = new_certificate(signer, &p, csr.as_bytes(), days, None)?;
        reason = Some(format!("{key}; {days} days; serial {}", cert.serial));
        if let Some(e) = p.enrolment.as_mut() {
            e.status = EnrolmentStatus::Issued;
            e.serial = Some(cert.serial.clone());
        }
        if p.first_issued_at.is_none() {
            p.first_issued_at = Some(now.clone());
        }
        after.certificates.push(cert);
        store::sort_certificates(&mut after.certificates);
        chain_pem = Some(chain);
    }
    after.partner = Some(p);
    let event = w
        .append(
            draft(&now, actor, "approve", id, reason.as_deref()),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(Outcome {
        event,
        record: after,
        chain_pem,
    })
}

/// Closes a pending registration (or withdraws a pending scope addition) without approval.
///
/// # Errors
/// Nothing is pending, or no reason was given.
pub async fn reject(
    store: &mut Store,
    actor: &str,
    id: &str,
    reason: &str,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    need_reason(reason)?;
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let mut p = partner(&before, id)?.clone();
    let enrolment = p
        .enrolment
        .as_mut()
        .filter(|e| e.status == EnrolmentStatus::Pending);
    let enrolling = enrolment.is_some();
    if let Some(e) = enrolment {
        e.status = EnrolmentStatus::Rejected;
        e.reason = Some(reason.to_owned());
    }
    match p.status {
        PartnerStatus::Pending => p.status = PartnerStatus::Rejected,
        PartnerStatus::Approved if !p.requested_scopes.is_empty() || enrolling => {}
        PartnerStatus::Approved => return Err(CommandError::NothingPending(id.to_owned())),
        status => return Err(wrong(id, status, "pending")),
    }
    p.requested_scopes.clear();
    let after = Record {
        partner: Some(p),
        certificates: before.certificates.clone(),
    };
    let now = now_rfc3339();
    let event = w
        .append(
            draft(&now, actor, "reject", id, Some(reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

/// Signs `csr` for an approved partner.
///
/// # Errors
/// The partner is not approved, the validity is too long, or the CSR is refused.
pub async fn issue(
    store: &mut Store,
    policy: &Policy,
    signer: &dyn Signer,
    actor: &str,
    id: &str,
    csr: &[u8],
    days: u32,
) -> Result<Outcome, CommandError> {
    let request = SignRequest {
        actor,
        id,
        csr,
        days,
        succession: Succession::First,
    };
    sign(store, policy, signer, request).await
}

/// Issues a successor certificate. The old ones stay valid until they expire, unless
/// `revoke_old`: then they are revoked as superseded in the same event.
///
/// # Errors
/// As [`issue`]; and the partner must already hold a valid certificate.
#[allow(clippy::too_many_arguments)]
pub async fn renew(
    store: &mut Store,
    policy: &Policy,
    signer: &dyn Signer,
    actor: &str,
    id: &str,
    csr: &[u8],
    days: u32,
    revoke_old: bool,
) -> Result<Outcome, CommandError> {
    let request = SignRequest {
        actor,
        id,
        csr,
        days,
        succession: Succession::Renew { revoke_old },
    };
    sign(store, policy, signer, request).await
}

/// A renewal the partner asked for itself, holding a valid certificate (EST `simplereenroll`):
/// like [`renew`], and the certificates it renews are revoked as superseded once `grace` has
/// passed ([`supersede_due`] does it), so the partner has time to roll the new one out.
///
/// # Errors
/// As [`renew`].
#[allow(clippy::too_many_arguments)]
pub async fn reenroll(
    store: &mut Store,
    policy: &Policy,
    signer: &dyn Signer,
    actor: &str,
    id: &str,
    csr: &[u8],
    days: u32,
    grace: std::time::Duration,
) -> Result<Outcome, CommandError> {
    let at =
        OffsetDateTime::now_utc() + time::Duration::try_from(grace).unwrap_or(time::Duration::ZERO);
    let request = SignRequest {
        actor,
        id,
        csr,
        days,
        succession: Succession::Reenroll {
            supersedes_at: format_time(at),
        },
    };
    sign(store, policy, signer, request).await
}

/// Revokes as superseded every certificate renewed over EST whose successor has been used
/// (`used(partner, serial)`) or whose [`Certificate::supersedes_at`] has passed, one `revoke`
/// event each; returns how many it revoked.
///
/// # Errors
/// The registry failed; what was revoked before stays revoked.
pub async fn supersede_due(
    store: &mut Store,
    actor: &str,
    used: &(dyn Fn(&str, &str) -> bool + Send + Sync),
) -> Result<usize, CommandError> {
    let now = OffsetDateTime::now_utc();
    let mut due = Vec::new();
    for r in store.records().await? {
        let Some(p) = &r.partner else { continue };
        for new in r
            .certificates
            .iter()
            .filter(|c| c.status == CertStatus::Valid)
        {
            let (Some(old), Some(at)) = (&new.renews, &new.supersedes_at) else {
                continue;
            };
            let old_valid = r
                .certificates
                .iter()
                .any(|c| &c.serial == old && c.status == CertStatus::Valid);
            let passed = parse_time(at).is_some_and(|t| t <= now) || used(&p.id, &new.serial);
            if old_valid && passed {
                due.push((p.id.clone(), old.clone()));
            }
        }
    }
    for (id, serial) in &due {
        revoke(store, actor, id, Some(serial), "superseded").await?;
    }
    Ok(due.len())
}

/// What [`issue`], [`renew`] and [`reenroll`] ask [`sign`] for.
struct SignRequest<'a> {
    actor: &'a str,
    id: &'a str,
    csr: &'a [u8],
    days: u32,
    succession: Succession,
}

/// How the new certificate relates to the partner's current ones.
enum Succession {
    /// No predecessor needed.
    First,
    /// Succeeds the latest valid certificate; `revoke_old` revokes every valid one at once.
    Renew { revoke_old: bool },
    /// Succeeds the latest valid certificate, which is superseded at `supersedes_at` or at the
    /// new one's first use.
    Reenroll { supersedes_at: String },
}

async fn sign(
    store: &mut Store,
    policy: &Policy,
    signer: &dyn Signer,
    request: SignRequest<'_>,
) -> Result<Outcome, CommandError> {
    let SignRequest {
        actor,
        id,
        csr,
        days,
        succession,
    } = request;
    need_actor(actor)?;
    check_days(policy, days)?;
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let p = partner(&before, id)?;
    if p.status != PartnerStatus::Approved {
        return Err(wrong(id, p.status, "approved"));
    }
    // Checked before anything else is decided, so a refused CSR is refused for what it is.
    ca::check_csr(csr, &p.identity)?;
    let now = now_rfc3339();
    let mut after = before.clone();
    let renews = match succession {
        Succession::First => None,
        Succession::Renew { .. } | Succession::Reenroll { .. } => Some(
            before
                .certificates
                .iter()
                .rfind(|c| c.status == CertStatus::Valid)
                .map(|c| c.serial.clone())
                .ok_or_else(|| CommandError::NoCertificate {
                    id: id.to_owned(),
                    serial: None,
                })?,
        ),
    };
    let action = if renews.is_some() { "renew" } else { "issue" };
    let (mut cert, chain_pem, key) = new_certificate(signer, p, csr, days, renews)?;
    match succession {
        Succession::First | Succession::Renew { revoke_old: false } => {}
        Succession::Renew { revoke_old: true } => {
            for c in &mut after.certificates {
                if c.status == CertStatus::Valid {
                    revoke_cert(c, "superseded", &now);
                }
            }
        }
        Succession::Reenroll { supersedes_at } => cert.supersedes_at = Some(supersedes_at),
    }
    let reason = format!("{key}; {days} days; serial {}", cert.serial);
    after.certificates.push(cert);
    store::sort_certificates(&mut after.certificates);
    if let Some(ap) = after.partner.as_mut() {
        if ap.first_issued_at.is_none() {
            ap.first_issued_at = Some(now.clone());
        }
    }
    let event = w
        .append(
            draft(&now, actor, action, id, Some(&reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(Outcome {
        event,
        record: after,
        chain_pem: Some(chain_pem),
    })
}

/// Revokes one certificate (`serial`) or every valid one.
///
/// # Errors
/// Unknown reason, or no such valid certificate.
pub async fn revoke(
    store: &mut Store,
    actor: &str,
    id: &str,
    serial: Option<&str>,
    reason: &str,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    if !REVOCATION_REASONS.contains(&reason) {
        return Err(CommandError::BadRevocationReason(reason.to_owned()));
    }
    let serial = serial.map(|s| {
        s.trim_start_matches("0x")
            .to_ascii_lowercase()
            .replace(':', "")
    });
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    partner(&before, id)?;
    let now = now_rfc3339();
    let mut after = before.clone();
    let mut revoked = 0;
    for c in &mut after.certificates {
        let wanted = serial
            .as_deref()
            .is_none_or(|s| s.trim_start_matches('0') == c.serial.trim_start_matches('0'));
        if wanted && c.status == CertStatus::Valid {
            revoke_cert(c, reason, &now);
            revoked += 1;
        }
    }
    if revoked == 0 {
        return Err(CommandError::NoCertificate {
            id: id.to_owned(),
            serial,
        });
    }
    let event = w
        .append(
            draft(&now, actor, "revoke", id, Some(reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

/// Revokes every certificate, removes every scope and marks the partner offboarded for good.
///
/// # Errors
/// The partner is already offboarded, or no reason was given.
pub async fn offboard(
    store: &mut Store,
    actor: &str,
    id: &str,
    reason: &str,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    need_reason(reason)?;
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let p = partner(&before, id)?;
    if p.status == PartnerStatus::Offboarded {
        return Err(wrong(id, p.status, "not yet offboarded"));
    }
    let now = now_rfc3339();
    let mut after = before.clone();
    for c in &mut after.certificates {
        if c.status == CertStatus::Valid {
            revoke_cert(c, "cessationOfOperation", &now);
        }
    }
    if let Some(ap) = after.partner.as_mut() {
        ap.status = PartnerStatus::Offboarded;
        ap.scopes.clear();
        ap.requested_scopes.clear();
    }
    let event = w
        .append(
            draft(&now, actor, "offboard", id, Some(reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

/// Removes scopes at once; adding scopes asks for approval like a registration.
///
/// # Errors
/// Unknown scopes, nothing to change, or the partner is not approved.
pub async fn scopes(
    store: &mut Store,
    policy: &Policy,
    actor: &str,
    id: &str,
    add: &[String],
    remove: &[String],
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    let add = check_scopes(policy, add)?;
    let remove: BTreeSet<String> = remove.iter().map(|s| s.trim().to_owned()).collect();
    if add.is_empty() && remove.is_empty() {
        return Err(CommandError::NoScopes);
    }
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let mut p = partner(&before, id)?.clone();
    if p.status != PartnerStatus::Approved {
        return Err(wrong(id, p.status, "approved"));
    }
    p.scopes.retain(|s| !remove.contains(s));
    p.requested_scopes.retain(|s| !remove.contains(s));
    let mut requested: BTreeSet<String> = p.requested_scopes.drain(..).collect();
    requested.extend(add.into_iter().filter(|s| !p.scopes.contains(s)));
    p.requested_scopes = requested.into_iter().collect();
    if !p.requested_scopes.is_empty() {
        p.requested_by = actor.to_owned();
    }
    if before.partner.as_ref() == Some(&p) {
        return Err(CommandError::NothingToChange(id.to_owned()));
    }
    let after = Record {
        partner: Some(p),
        certificates: before.certificates.clone(),
    };
    let now = now_rfc3339();
    let event = w
        .append(draft(&now, actor, "scopes", id, None), &before, &after)
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

/// Grants a sandbox-only partner its scopes in production, when the evidence holds: an approver
/// other than the owner and the inviter, a valid certificate that conforms (clientAuth, key
/// policy, the registered identity, at least `min_days_left` days to run) and the sandbox usage
/// `usage` reports. Every missing item is named; the evidence goes into the event.
///
/// # Errors
/// [`CommandError::NotPromotable`] with everything missing; the partner is not approved or
/// already in production; `actor` is the owner or the inviter.
pub async fn promote(
    store: &mut Store,
    actor: &str,
    id: &str,
    min_days_left: u32,
    usage: &dyn UsageEvidence,
) -> Result<Outcome, CommandError> {
    need_actor(actor)?;
    let mut w = store.write().await?;
    let before = w.record(id).await?;
    let p = partner(&before, id)?;
    if p.status != PartnerStatus::Approved {
        return Err(wrong(id, p.status, "approved"));
    }
    if !p.sandbox_only {
        return Err(CommandError::AlreadyProduction(id.to_owned()));
    }
    if actor == p.owner || actor == p.requested_by {
        return Err(CommandError::PromoterIsOwner {
            actor: actor.to_owned(),
        });
    }
    let mut missing = Vec::new();
    let mut evidence = Vec::new();
    let latest = before
        .certificates
        .iter()
        .rfind(|c| c.status == CertStatus::Valid);
    match latest {
        None => missing.push("a valid certificate".to_owned()),
        Some(c) => match ca::conformance(&c.pem, &p.identity, min_days_left) {
            Ok(summary) => evidence.push(format!("certificate {}: {summary}", c.serial)),
            Err(problems) => missing.extend(
                problems
                    .into_iter()
                    .map(|m| format!("certificate {}: {m}", c.serial)),
            ),
        },
    }
    match usage.check(p) {
        Ok(summary) => evidence.push(summary),
        Err(m) => missing.push(m),
    }
    if !missing.is_empty() {
        return Err(CommandError::NotPromotable {
            id: id.to_owned(),
            missing,
        });
    }
    let now = now_rfc3339();
    let mut np = p.clone();
    np.sandbox_only = false;
    np.promoted_at = Some(now.clone());
    let after = Record {
        partner: Some(np),
        certificates: before.certificates.clone(),
    };
    let reason = evidence.join("; ");
    let event = w
        .append(
            draft(&now, actor, "promote", id, Some(&reason)),
            &before,
            &after,
        )
        .await?;
    w.commit().await?;
    Ok(done(event, after))
}

// === helpers ===

fn check_days(policy: &Policy, days: u32) -> Result<(), CommandError> {
    if days == 0 {
        return Err(CommandError::ValidityZero);
    }
    if days > policy.max_validity_days {
        return Err(CommandError::ValidityTooLong {
            days,
            max: policy.max_validity_days,
        });
    }
    Ok(())
}

/// Checks `csr` for `p` and signs it: the certificate, its PEM chain (leaf then CA) and the key's
/// description for the event log.
fn new_certificate(
    signer: &dyn Signer,
    p: &Partner,
    csr: &[u8],
    days: u32,
    renews: Option<String>,
) -> Result<(Certificate, String, String), CommandError> {
    let checked = ca::check_csr(csr, &p.identity)?;
    let params = ca::leaf_params(&p.id, &p.identity, days)?;
    let der = signer.sign_certificate(&params, &checked.public_key)?;
    let cert = certificate_of(&der, &p.id, renews)?;
    let chain_pem = format!(
        "{}{}",
        cert.pem,
        ca::pem_of("CERTIFICATE", signer.certificate())
    );
    Ok((cert, chain_pem, checked.key))
}

fn draft<'a>(
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    partner: &'a str,
    reason: Option<&'a str>,
) -> Draft<'a> {
    Draft {
        time,
        actor,
        action,
        partner,
        reason,
    }
}

fn done(event: Event, record: Record) -> Outcome {
    Outcome {
        event,
        record,
        chain_pem: None,
    }
}

fn need_actor(actor: &str) -> Result<(), CommandError> {
    if actor.trim().is_empty() {
        return Err(CommandError::NoActor);
    }
    Ok(())
}

fn need_reason(reason: &str) -> Result<(), CommandError> {
    if reason.trim().is_empty() {
        return Err(CommandError::NoReason);
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), CommandError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CommandError::BadId(id.to_owned()))
    }
}

fn normalise_identity(identity: Identity) -> Result<Identity, CommandError> {
    let bad = |m: &str| Err(CommandError::BadIdentity(m.to_owned()));
    match identity {
        Identity::Spiffe(u) => {
            if !u.starts_with("spiffe://") || u.len() <= "spiffe://".len() || !u.is_ascii() {
                return bad("a SPIFFE ID looks like spiffe://trust-domain/path");
            }
            Ok(Identity::Spiffe(u))
        }
        Identity::Dns(d) => {
            let d = d.to_ascii_lowercase();
            if d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            {
                return bad("a DNS name has letters, digits, `-` and `.` only");
            }
            Ok(Identity::Dns(d))
        }
        Identity::Cn(c) => {
            if c.trim().is_empty() || c.len() > 64 {
                return bad("a common name has 1 to 64 characters");
            }
            Ok(Identity::Cn(c))
        }
    }
}

/// Splits, trims, deduplicates and checks scopes against the gateway's routes.
fn check_scopes(policy: &Policy, scopes: &[String]) -> Result<Vec<String>, CommandError> {
    let scopes: BTreeSet<String> = scopes
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(known) = &policy.known_scopes {
        let unknown: Vec<String> = scopes
            .iter()
            .filter(|s| !known.contains(*s))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(CommandError::UnknownScopes {
                unknown,
                known: known.iter().cloned().collect(),
            });
        }
    }
    Ok(scopes.into_iter().collect())
}

fn partner<'r>(record: &'r Record, id: &str) -> Result<&'r Partner, CommandError> {
    record
        .partner
        .as_ref()
        .ok_or_else(|| CommandError::NotFound(id.to_owned()))
}

fn wrong(id: &str, status: PartnerStatus, needed: &'static str) -> CommandError {
    CommandError::WrongStatus {
        id: id.to_owned(),
        status,
        needed,
    }
}

fn revoke_cert(c: &mut Certificate, reason: &str, now: &str) {
    c.status = CertStatus::Revoked;
    c.revocation_reason = Some(reason.to_owned());
    c.revoked_at = Some(now.to_owned());
}

fn certificate_of(
    der: &[u8],
    partner: &str,
    renews: Option<String>,
) -> Result<Certificate, CommandError> {
    use sha2::{Digest, Sha256};
    let (_, parsed) = X509Certificate::from_der(der).map_err(|e| {
        CommandError::Ca(CaError::Invalid {
            path: "issued certificate".into(),
            reason: e.to_string(),
        })
    })?;
    let validity = parsed.validity();
    let at = |t: x509_parser::time::ASN1Time| format_time(t.to_datetime());
    Ok(Certificate {
        serial: serial_hex(parsed.raw_serial()),
        partner: partner.to_owned(),
        fingerprint_sha256: hex::encode(Sha256::digest(der)),
        not_before: at(validity.not_before),
        not_after: at(validity.not_after),
        status: CertStatus::Valid,
        revocation_reason: None,
        revoked_at: None,
        renews,
        supersedes_at: None,
        pem: ca::pem_of("CERTIFICATE", der),
    })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
