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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use super::ca::{CaError, Signer};
use super::commands::{now_rfc3339, parse_time};
use super::registry::{CertStatus, PartnerStatus};
use super::store::{Store, StoreError};
use crate::config::model::sandbox_scope;
pub use crate::config::published::DEFAULT_CRL_NEXT_UPDATE;
use crate::config::published::{
    PublishStatus, PublishedCertificate, PublishedPartner, PublishedPartners, PublishedRevocation,
    StateDir,
};

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

/// Re-signs the CRL and rewrites the partner table from the registry as it stands, and records
/// the outcome in the state folder's publish status (a failure is counted there, so gateways and
/// later commands see it after this process is gone).
///
/// # Errors
/// The registry, the signer or the file system failed; the previous files stay in place.
pub async fn publish(
    store: &mut Store,
    signer: &dyn Signer,
    state: &StateDir,
    next_update: Duration,
) -> Result<Publication, PublishError> {
    let result = publish_files(store, signer, state, next_update).await;
    let path = state.publish_status();
    let mut status = PublishStatus::read(&path).unwrap_or_default();
    match &result {
        Ok(_) if !status.pending => return result,
        Ok(_) => status.pending = false,
        Err(e) => {
            status.failures += 1;
            status.pending = true;
            status.last_failure = Some(now_rfc3339());
            status.last_error = Some(crate::error_chain(e));
        }
    }
    let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
    if let Err(e) = write_atomically(&path, &json) {
        tracing::warn!(error = %crate::error_chain(&e), "cannot record the publish status");
    }
    result
}

async fn publish_files(
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
    let mut revocations = Vec::new();
    let unix = |t: &Option<String>| {
        t.as_deref()
            .and_then(parse_time)
            .map(|t| t.unix_timestamp())
    };
    for r in &records {
        let latest_revocation = r
            .certificates
            .iter()
            .filter_map(|c| c.revoked_at.as_deref().and_then(parse_time))
            .max();
        let any_valid = r.certificates.iter().any(|c| c.status == CertStatus::Valid);
        if let (Some(at), false, Some(p)) = (latest_revocation, any_valid, &r.partner) {
            revocations.push(PublishedRevocation {
                partner: p.id.clone(),
                revoked_at: at.unix_timestamp(),
            });
        }
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
                let certificates = r
                    .certificates
                    .iter()
                    .filter(|c| c.status == CertStatus::Valid)
                    .map(|c| {
                        let bad = || PublishError::BadEntry {
                            serial: c.serial.clone(),
                        };
                        let serial = hex::decode(&c.serial).map_err(|_| bad())?;
                        let not_after = parse_time(&c.not_after).ok_or_else(bad)?;
                        Ok(PublishedCertificate {
                            serial: wire_serial(&serial),
                            not_after: not_after.unix_timestamp(),
                        })
                    })
                    .collect::<Result<Vec<_>, PublishError>>()?;
                partners.push(PublishedPartner {
                    id: p.id.clone(),
                    owner: p.owner.clone(),
                    identity: p.identity.clone(),
                    // A sandbox-only grant is published as the scopes' sandbox twins: the
                    // gateway's sandbox routes require exactly those, its production ones never.
                    scopes: if p.sandbox_only {
                        p.scopes.iter().map(|s| sandbox_scope(s)).collect()
                    } else {
                        p.scopes.clone()
                    },
                    certificates,
                    registered_at: parse_time(&p.registered_at).map(|t| t.unix_timestamp()),
                    approved_at: unix(&p.approved_at),
                    first_issued_at: unix(&p.first_issued_at),
                    enrolled_at: p
                        .enrolment
                        .as_ref()
                        .and_then(|e| parse_time(&e.submitted_at))
                        .map(|t| t.unix_timestamp()),
                    promoted_at: unix(&p.promoted_at),
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
        revocations,
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

/// A registry serial (big-endian bytes, leading zeros stripped) as a presented certificate
/// shows it: the DER INTEGER's content octets, which gain a leading zero byte when the top bit
/// is set, in upper-case hex.
fn wire_serial(serial: &[u8]) -> String {
    let sign = if serial.first().is_some_and(|b| b & 0x80 != 0) {
        "00"
    } else {
        ""
    };
    format!("{sign}{}", hex::encode_upper(serial))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_is_published_as_a_presented_certificate_shows_it() {
        assert_eq!(wire_serial(&[0x8f, 0x01]), "008F01");
        assert_eq!(wire_serial(&[0x12, 0xab]), "12AB");
    }
}
