//! What the gateway reads from a state folder, and how it gets there.
//!
//! After every change the CLI re-signs the CA's CRL (a larger CRL number each time) and writes the
//! approved partners as `published/partners.json`, each file to a temporary name first and then
//! renamed over the old one, so a gateway polling them sees either the old file or the new one,
//! never half of one. Publishing takes the registry's write lock, so concurrent CLI processes
//! publish one after the other and the last file written reflects the last change.
//!
//! [`merge`] is the gateway's side: it turns the published files into one more trust bundle and
//! more partners of the validated configuration, so the snapshot build treats them exactly like
//! YAML ones and the hot path never sees the registry.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ca::{CaError, Signer};
use super::commands::{now_rfc3339, parse_time};
use super::registry::{CertStatus, Identity, PartnerStatus};
use super::store::{Store, StoreError};
use super::StateDir;
use crate::config::model::{self, BundleId, IdentityMatch, ScopeId};
use crate::config::{Problem, Problems};

/// The default `nextUpdate` distance of a signed CRL: a week. `certgate registry publish` (daily,
/// from cron or a timer) re-signs it before it runs out, as does every change.
pub const DEFAULT_CRL_NEXT_UPDATE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `published/partners.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPartners {
    /// The CRL number published together with this table.
    pub crl_number: i64,
    pub published_at: String,
    pub partners: Vec<PublishedPartner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPartner {
    pub id: String,
    pub owner: String,
    pub identity: Identity,
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing the CRL failed")]
    Sign(#[source] CaError),
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {serial}: invalid serial or revocation time in the registry")]
    BadEntry { serial: String },
}

/// What one publication wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    pub crl_number: i64,
    pub revoked: usize,
    pub partners: usize,
}

/// Re-signs the CRL and rewrites the partner table from the registry as it stands.
///
/// # Errors
/// The registry, the signer or the file system failed; the previous files stay in place.
pub async fn publish(
    store: &mut Store,
    signer: &dyn Signer,
    state: &StateDir,
    next_update: Duration,
) -> Result<Publication, PublishError> {
    let mut w = store.write().await?;
    let records = w.records().await?;
    let crl_number = w.next_crl_number().await?;
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::new();
    let mut partners = Vec::new();
    for r in &records {
        for c in r
            .certificates
            .iter()
            .filter(|c| c.status == CertStatus::Revoked)
        {
            let bad = || PublishError::BadEntry {
                serial: c.serial.clone(),
            };
            let serial = hex::decode(&c.serial).map_err(|_| bad())?;
            let at = c
                .revoked_at
                .as_deref()
                .and_then(parse_time)
                .ok_or_else(bad)?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: c.revocation_reason.as_deref().and_then(reason_code),
                invalidity_date: None,
            });
        }
        if let Some(p) = &r.partner {
            if p.status == PartnerStatus::Approved {
                partners.push(PublishedPartner {
                    id: p.id.clone(),
                    owner: p.owner.clone(),
                    identity: p.identity.clone(),
                    scopes: p.scopes.clone(),
                });
            }
        }
    }
    let revoked = revoked_certs.len();
    let next = time::Duration::try_from(next_update).unwrap_or(time::Duration::days(7));
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + next,
        crl_number: SerialNumber::from(u64::try_from(crl_number).unwrap_or(0)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = signer.sign_crl(&params).map_err(PublishError::Sign)?;
    let table = PublishedPartners {
        crl_number,
        published_at: now_rfc3339(),
        partners,
    };
    let json = serde_json::to_vec_pretty(&table).unwrap_or_default();
    std::fs::create_dir_all(state.published()).map_err(|source| PublishError::Write {
        path: state.published(),
        source,
    })?;
    // The partner table first: a partner that the new CRL cuts is then already out of the table,
    // and a new partner's certificate cannot be issued before it is in.
    write_atomically(&state.partners(), &json)?;
    write_atomically(&state.crl(), &crl)?;
    // The lock is held until both files are in place; nothing in the registry changed.
    w.commit().await?;
    Ok(Publication {
        crl_number,
        revoked,
        partners: table.partners.len(),
    })
}

fn reason_code(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "caCompromise" => RevocationReason::CaCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        "certificateHold" => RevocationReason::CertificateHold,
        "privilegeWithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
///
/// # Errors
/// Any step failed; `path` is unchanged.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let err = |source| PublishError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Reads a published partner table.
///
/// # Errors
/// A problem naming the file.
pub fn read_partners(path: &Path) -> Result<PublishedPartners, Problem> {
    let text = std::fs::read(path).map_err(|e| {
        Problem::in_file(
            path,
            format!("cannot read the published partner table ({e}); run `certgate ca init --state DIR` or `certgate registry publish`"),
        )
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| Problem::in_file(path, format!("not a published partner table: {e}")))
}

/// Adds the lifecycle trust bundle and the registry's approved partners to `config`.
///
/// # Errors
/// Every problem: an unreadable table, a bundle or partner ID that YAML already uses, an identity
/// claimed both in YAML and in the registry.
pub fn merge(config: &mut model::Config) -> Result<(), Problems> {
    let Some(lifecycle) = config.lifecycle.clone() else {
        return Ok(());
    };
    let state = StateDir::new(&lifecycle.state_dir);
    let table_path = state.partners();
    let mut problems = Vec::new();
    if config
        .trust_bundles
        .iter()
        .any(|b| b.name == lifecycle.bundle)
    {
        problems.push(Problem::in_file(
            &config.source,
            format!(
                "lifecycle.bundle: trust bundle `{}` is already defined in client_auth.trust_bundles; name the lifecycle bundle differently",
                lifecycle.bundle
            ),
        ));
    }
    let table = read_partners(&table_path).map_err(Problems::from)?;
    let bundle = BundleId(config.trust_bundles.len());
    config.trust_bundles.push(model::TrustBundle {
        name: lifecycle.bundle.clone(),
        ca: state.ca_cert(),
        crls: vec![model::CrlSource::File(state.crl())],
        crl_expired: model::CrlExpiredPolicy::Reject,
        ocsp: None,
        // The embedded CA issues leaves directly, and its own CRL covers them.
        revocation: model::RevocationScope::default(),
    });
    let yaml_ids: HashSet<String> = config.partners.iter().map(|p| p.id.clone()).collect();
    let mut claimed: HashMap<IdentityMatch, String> = HashMap::new();
    for p in &config.partners {
        for i in &p.identities {
            claimed.insert(i.clone(), p.id.clone());
        }
    }
    let mut scope_ids: HashMap<String, ScopeId> = config
        .scopes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), ScopeId(i)))
        .collect();
    for p in table.partners {
        if yaml_ids.contains(&p.id) {
            problems.push(Problem::in_file(
                &table_path,
                format!("partner `{}` is defined both in the YAML `partners:` and in the lifecycle registry", p.id),
            ));
            continue;
        }
        let identity = match &p.identity {
            Identity::Spiffe(v) => IdentityMatch::Spiffe(v.clone()),
            Identity::Cn(v) => IdentityMatch::SubjectCn(v.clone()),
            Identity::Dns(v) => IdentityMatch::SanDns(v.to_ascii_lowercase()),
        };
        if let Some(other) = claimed.get(&identity) {
            problems.push(Problem::in_file(
                &table_path,
                format!(
                    "identity {} of lifecycle partner `{}` is also claimed by YAML partner `{other}`",
                    p.identity, p.id
                ),
            ));
            continue;
        }
        // Registration keeps live registry identities unique; YAML ones are checked above.
        let mut scopes: Vec<ScopeId> = p
            .scopes
            .iter()
            .map(|s| {
                *scope_ids.entry(s.clone()).or_insert_with(|| {
                    config.scopes.push(s.clone());
                    ScopeId(config.scopes.len() - 1)
                })
            })
            .collect();
        scopes.sort();
        scopes.dedup();
        config.partners.push(model::Partner {
            id: p.id,
            owner: p.owner,
            trust_bundle: bundle,
            identities: vec![identity],
            scopes,
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems::new(problems))
    }
}
