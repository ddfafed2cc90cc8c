//! The registry's vocabulary: partners, certificates, events, and the hash chain over events.
//!
//! Partners and certificates are derived state. Every event carries the whole record of its
//! partner (the partner and all of its certificates) before and after the change, so applying an
//! event is one replace, and replaying the log from the first event rebuilds the tables exactly:
//! the code path a command takes and the one replay takes are the same [`Record`] replace.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::config::published::Identity;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerStatus {
    /// Registered, waiting for a second person's approval.
    Pending,
    /// Approved: may be issued certificates, and is in the gateway's partner table.
    Approved,
    /// The request was closed without approval.
    Rejected,
    /// Every certificate revoked, every scope removed. The ID stays taken.
    Offboarded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub id: String,
    /// The accountable owner (an e-mail address).
    pub owner: String,
    pub identity: Identity,
    pub status: PartnerStatus,
    /// Granted scopes, sorted.
    pub scopes: Vec<String>,
    /// Scopes asked for and not yet approved, sorted (at registration, or added later).
    pub requested_scopes: Vec<String>,
    /// Who asked for the pending request (registration or scope addition): that actor may not
    /// approve it.
    pub requested_by: String,
    pub registered_at: String,
    pub approved_at: Option<String>,
    pub first_issued_at: Option<String>,
    /// The enrolment invitation, for a partner created by `partner invite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<Invitation>,
    /// The request the partner's developer submitted with the invitation's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolment: Option<Enrolment>,
    /// The scopes are granted on sandbox routes only, until `partner promote`. Set for every
    /// partner that came through an invitation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox_only: bool,
    /// RFC 3339: when `partner promote` granted production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<String>,
}

/// A one-time enrolment token's record. The token itself is never stored: whoever can read the
/// registry (or its backups) must not be able to enrol in the partner's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// SHA-256 of the token, lower-case hex.
    pub token_sha256: String,
    /// RFC 3339; the token is refused from then on.
    pub expires_at: String,
    /// RFC 3339, set when the token was traded for an enrolment: it is never accepted again.
    pub used_at: Option<String>,
}

/// A CSR submitted through the enrolment API, waiting for (or past) an approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// Public handle of the request (hex), part of its status URL.
    pub id: String,
    /// SHA-256 of the status URL's secret, lower-case hex: only the submitter knows the secret.
    pub secret_sha256: String,
    pub csr_pem: String,
    pub contact: Option<String>,
    pub description: Option<String>,
    /// RFC 3339.
    pub submitted_at: String,
    pub status: EnrolmentStatus,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The serial of the certificate issued from it.
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolmentStatus {
    Pending,
    Rejected,
    Issued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertStatus {
    Valid,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Lower-case hex, no leading zero bytes.
    pub serial: String,
    pub partner: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint_sha256: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    pub status: CertStatus,
    /// One of [`REVOCATION_REASONS`], when revoked.
    pub revocation_reason: Option<String>,
    pub revoked_at: Option<String>,
    /// The serial of the certificate this one renews.
    pub renews: Option<String>,
    /// RFC 3339: from then on the certificate this one renews is revoked as superseded (a
    /// renewal over EST). `None`: it stays valid until it expires or is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes_at: Option<String>,
    pub pem: String,
}

/// One partner and all its certificates: the unit an event changes and records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub partner: Option<Partner>,
    pub certificates: Vec<Certificate>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: i64,
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: String,
    pub action: String,
    pub partner: String,
    pub reason: Option<String>,
    /// [`Record`] as JSON.
    pub before: String,
    /// [`Record`] as JSON.
    pub after: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// The event's own hash does not match its contents: the row was edited.
    Hash { id: i64 },
    /// The event does not point at the hash of the event before it: one was removed, inserted or
    /// reordered.
    Link { id: i64 },
    /// Event ids are not consecutive from 1.
    Gap { id: i64, expected: i64 },
    /// The event's data is not a record.
    Data { id: i64 },
}

/// RFC 5280 reason codes accepted by `partner revoke`, by their CRL name.
pub const REVOCATION_REASONS: &[&str] = &[
    "unspecified",
    "keyCompromise",
    "caCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
];

// === impl PartnerStatus ===

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Offboarded => "offboarded",
        }
    }
}

impl fmt::Display for PartnerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl EnrolmentStatus ===

impl EnrolmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Rejected => "rejected",
            Self::Issued => "issued",
        }
    }
}

// === impl CertStatus ===

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Revoked => "revoked",
        }
    }
}

// === impl Record ===

impl Record {
    /// The record as stored in an event.
    pub fn to_json(&self) -> String {
        // A record is plain strings, enums and lists: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// # Errors
    /// The text is not a record.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

// === impl Event ===

impl Event {
    /// The SHA-256 of the event's canonical encoding: every field but `hash`, in a fixed order,
    /// each as an 8-byte big-endian length and its bytes, so no two different rows encode alike.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(&self.id.to_be_bytes());
        field(self.time.as_bytes());
        field(self.actor.as_bytes());
        field(self.action.as_bytes());
        field(self.partner.as_bytes());
        match &self.reason {
            Some(r) => {
                field(b"1");
                field(r.as_bytes());
            }
            None => field(b"0"),
        }
        field(self.before.as_bytes());
        field(self.after.as_bytes());
        field(self.prev_hash.as_bytes());
        hex::encode(h.finalize())
    }
}

/// Walks `events` (in id order) and returns the first break, if any.
pub fn verify_chain<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<ChainBreak> {
    let mut prev = GENESIS.to_owned();
    for (expected, e) in (1..).zip(events) {
        if e.id != expected {
            return Some(ChainBreak::Gap { id: e.id, expected });
        }
        if e.compute_hash() != e.hash {
            return Some(ChainBreak::Hash { id: e.id });
        }
        if e.prev_hash != prev {
            return Some(ChainBreak::Link { id: e.id });
        }
        if Record::from_json(&e.after).is_err() || Record::from_json(&e.before).is_err() {
            return Some(ChainBreak::Data { id: e.id });
        }
        prev.clone_from(&e.hash);
    }
    None
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hash { id } => write!(f, "event {id}: its hash does not match its contents (the row was changed)"),
            Self::Link { id } => write!(f, "event {id}: prev_hash is not the hash of the event before it (an event was removed, inserted or reordered)"),
            Self::Gap { id, expected } => write!(f, "event {id}: expected event {expected} here (an event is missing)"),
            Self::Data { id } => write!(f, "event {id}: its data is not a partner record"),
        }
    }
}

/// Serial bytes as the registry writes them: lower-case hex without leading zero bytes.
pub fn serial_hex(serial: &[u8]) -> String {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    hex::encode(&serial[start..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(id: i64, prev: &str) -> Event {
        let mut e = Event {
            id,
            time: "2026-01-01T00:00:00Z".into(),
            actor: "alice".into(),
            action: "register".into(),
            partner: "acme".into(),
            reason: None,
            before: Record::default().to_json(),
            after: Record::default().to_json(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn a_chain_verifies_and_any_edit_names_the_event() {
        let a = event(1, GENESIS);
        let b = event(2, &a.hash);
        let c = event(3, &b.hash);
        assert_eq!(verify_chain([&a, &b, &c]), None);

        let mut edited = b.clone();
        edited.actor = "mallory".into();
        assert_eq!(
            verify_chain([&a, &edited, &c]),
            Some(ChainBreak::Hash { id: 2 })
        );
        // Rewriting the hash too moves the break to the next link.
        edited.hash = edited.compute_hash();
        assert_eq!(
            verify_chain([&a, &edited, &c]),
            Some(ChainBreak::Link { id: 3 })
        );
        assert_eq!(
            verify_chain([&a, &c]),
            Some(ChainBreak::Gap { id: 3, expected: 2 })
        );
    }

    #[test]
    fn a_missing_reason_and_an_empty_one_hash_differently() {
        let a = event(1, GENESIS);
        let mut b = a.clone();
        b.reason = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    #[test]
    fn serials_are_written_without_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0, 0x8f, 1]), "8f01");
        assert_eq!(serial_hex(&[0x12]), "12");
    }
}
