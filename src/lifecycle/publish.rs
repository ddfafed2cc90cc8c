//! What the gateway reads from a state folder, and how it gets there.
//!
//! After every change the CLI re-signs the CA's CRL (a larger CRL number each time) and writes the
//! approved partners as `published/partners.json`, each file to a temporary name first and then
//! renamed over the old one, so a gateway polling them sees either the old file or the new one,
//! never half of one. Publishing takes the registry's write lock, so concurrent CLI processes
//! publish one after the other and the last file written reflects the last change.
//!
//! The CRL goes first, built from the revoked rows of the certificates table alone: a gateway
//! polls it every 200 ms and cuts a revoked certificate's connections as soon as it changes, so
//! a revocation takes effect without waiting for the partner table, whose size grows with every
//! registered partner. The table follows under the same lock. Neither order leaks access: the
//! table only adds or removes partners and scopes, and a new certificate is handed out only
//! after both files are in place.
//!
//! The registry keeps the same publication (CA certificate, partner table, CRL) in the
//! transaction that takes its CRL number. Control-plane replicas sharing a PostgreSQL registry
//! serve it from there: a change made in one replica's pod reaches the gateways of all, and one
//! CRL number always names the same bytes.
//!
//! [`merge`] is the gateway's side: it turns the published files into one more trust bundle and
//! more partners of the validated configuration, so the snapshot build treats them exactly like
//! YAML ones and the hot path never sees the registry.
//!
//! [`merge`]: crate::config::published::merge

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use super::ca::{CaError, Signer};
use super::commands::{now_rfc3339, parse_time};
use super::registry::PartnerStatus;
use super::store::{RevokedCertificate, Store, StoreError, StoredPublication, Writer};
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
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {serial}: invalid serial or revocation time in the registry")]
    BadEntry { serial: String },
    /// The revocations are in force; partner and scope changes are not yet.
    #[error("CRL #{crl_number} is published, but the partner table is not")]
    PartnerTable {
        crl_number: i64,
        #[source]
        source: Box<PublishError>,
    },
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
/// The registry, the signer or the file system failed. A file that was not written keeps its
/// previous content; [`PublishError::PartnerTable`] says the CRL was written all the same.
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

/// The CRL, then the partner table, under one hold of the write lock.
///
/// The CRL number is spent once its CRL is on disk: the transaction that took it commits even
/// when the table fails, so the next publication signs a larger one. (The table's reads cannot
/// spoil that transaction: a row that does not parse fails in this process, not in the
/// database.)
async fn publish_files(
    store: &mut Store,
    signer: &dyn Signer,
    state: &StateDir,
    next_update: Duration,
) -> Result<Publication, PublishError> {
    let mut w = store.write().await?;
    let crl_number = w.next_crl_number().await?;
    let revoked = w.revoked_certificates().await?;
    let now = OffsetDateTime::now_utc();
    let crl = sign_crl(signer, crl_number, &revoked, now, next_update)?;
    std::fs::create_dir_all(state.published()).map_err(|source| PublishError::Write {
        path: state.published(),
        source,
    })?;
    write_atomically(&state.crl(), &crl)?;
    let table = publish_table(&mut w, state, crl_number, &revoked, &crl).await;
    // Nothing in the registry changed but the CRL number, which must stay taken.
    w.commit().await?;
    let partners = table.map_err(|source| PublishError::PartnerTable {
        crl_number,
        source: Box::new(source),
    })?;
    Ok(Publication {
        crl_number,
        revoked: revoked.len(),
        partners,
    })
}

fn sign_crl(
    signer: &dyn Signer,
    crl_number: i64,
    revoked: &[RevokedCertificate],
    now: OffsetDateTime,
    next_update: Duration,
) -> Result<Vec<u8>, PublishError> {
    let revoked_certs = revoked
        .iter()
        .map(|c| {
            let bad = || PublishError::BadEntry {
                serial: c.serial.clone(),
            };
            let serial = hex::decode(&c.serial).map_err(|_| bad())?;
            let at = c
                .revoked_at
                .as_deref()
                .and_then(parse_time)
                .ok_or_else(bad)?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: c.reason.as_deref().and_then(reason_code),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PublishError>>()?;
    let next = time::Duration::try_from(next_update).unwrap_or(time::Duration::days(7));
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + next,
        crl_number: SerialNumber::from(u64::try_from(crl_number).unwrap_or(0)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    signer.sign_crl(&params).map_err(PublishError::Sign)
}

/// Writes the approved partners with their valid certificates, and the partners a revocation
/// left without one; returns how many partners the table holds. Three queries (approved
/// partners, valid certificates, and the revoked ones already read for the CRL), whatever the
/// registry's size.
async fn publish_table(
    w: &mut Writer,
    state: &StateDir,
    crl_number: i64,
    revoked: &[RevokedCertificate],
    crl: &[u8],
) -> Result<usize, PublishError> {
    let approved = w.partners_with(PartnerStatus::Approved).await?;
    let valid = w.valid_certificates().await?;
    let mut certificates: HashMap<&str, Vec<PublishedCertificate>> = HashMap::new();
    for c in &valid {
        let bad = || PublishError::BadEntry {
            serial: c.serial.clone(),
        };
        let serial = hex::decode(&c.serial).map_err(|_| bad())?;
        let not_after = parse_time(&c.not_after).ok_or_else(bad)?;
        certificates
            .entry(c.partner.as_str())
            .or_default()
            .push(PublishedCertificate {
                serial: wire_serial(&serial),
                not_after: not_after.unix_timestamp(),
            });
    }
    let unix = |t: &Option<String>| {
        t.as_deref()
            .and_then(parse_time)
            .map(|t| t.unix_timestamp())
    };
    let partners: Vec<PublishedPartner> = approved
        .into_iter()
        .map(|p| PublishedPartner {
            certificates: certificates.remove(p.id.as_str()).unwrap_or_default(),
            // A sandbox-only grant is published as the scopes' sandbox twins: the gateway's
            // sandbox routes require exactly those, its production ones never.
            scopes: if p.sandbox_only {
                p.scopes.iter().map(|s| sandbox_scope(s)).collect()
            } else {
                p.scopes
            },
            registered_at: parse_time(&p.registered_at).map(|t| t.unix_timestamp()),
            approved_at: unix(&p.approved_at),
            first_issued_at: unix(&p.first_issued_at),
            enrolled_at: p
                .enrolment
                .as_ref()
                .and_then(|e| parse_time(&e.submitted_at))
                .map(|t| t.unix_timestamp()),
            promoted_at: unix(&p.promoted_at),
            id: p.id,
            owner: p.owner,
            identity: p.identity,
        })
        .collect();
    // Partners left without a valid certificate, with the time of their latest revocation.
    let with_valid: HashSet<&str> = valid.iter().map(|c| c.partner.as_str()).collect();
    let mut latest: HashMap<&str, OffsetDateTime> = HashMap::new();
    for c in revoked {
        let Some(at) = c.revoked_at.as_deref().and_then(parse_time) else {
            continue;
        };
        if with_valid.contains(c.partner.as_str()) {
            continue;
        }
        let entry = latest.entry(c.partner.as_str()).or_insert(at);
        *entry = (*entry).max(at);
    }
    let mut revocations: Vec<PublishedRevocation> = latest
        .into_iter()
        .map(|(partner, at)| PublishedRevocation {
            partner: partner.to_owned(),
            revoked_at: at.unix_timestamp(),
        })
        .collect();
    revocations.sort_by(|a, b| a.partner.cmp(&b.partner));
    let table = PublishedPartners {
        crl_number,
        published_at: now_rfc3339(),
        partners,
        revocations,
    };
    let json = serde_json::to_vec_pretty(&table).unwrap_or_default();
    // The registry keeps the publication too, numbered in this transaction: control-plane
    // replicas on a shared database serve it from there, whichever replica made the change.
    let ca_pem = std::fs::read(state.ca_cert()).map_err(|source| PublishError::Read {
        path: state.ca_cert(),
        source,
    })?;
    w.store_publication(&StoredPublication {
        crl_number,
        ca_pem,
        partners: json.clone(),
        crl: crl.to_vec(),
    })
    .await?;
    write_atomically(&state.partners(), &json)?;
    Ok(table.partners.len())
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
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// [`write_atomically`] for content written in pieces (through a buffer), so a large file is
/// never held in memory whole.
///
/// # Errors
/// `write` or any other step failed; `path` is unchanged.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), PublishError> {
    let err = |source| PublishError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|file| {
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
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
