//! PLACEHOLDER until the revocation branch merges: the interface the TLS verifier calls.
#![allow(missing_docs, unreachable_pub)]

use rustls_pki_types::UnixTime;

use crate::config::model::BundleId;

pub mod crl {
    pub fn issuer_and_serial(_der: &[u8]) -> Option<(&[u8], &[u8])> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Revoked,
    Unknown,
    NotChecked,
}

#[derive(Debug, Default)]
pub struct Checker;

impl Checker {
    pub fn check(&self, _b: BundleId, _i: &[u8], _s: &[u8], _now: UnixTime) -> Verdict {
        Verdict::NotChecked
    }
}
