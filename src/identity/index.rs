//! [`PartnerIndex`]: certificate identity → partner, precompiled into hash maps at load.

use std::collections::HashMap;

use super::PeerIdentity;
use crate::config::model::{IdentityMatch, Partner, PartnerId};

/// How a certificate was bound to its partner; logged so an operator sees which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerMatch {
    Fingerprint,
    Spiffe,
    SanDns,
    SubjectCn,
}

impl PartnerMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fingerprint => "fingerprint_sha256",
            Self::Spiffe => "spiffe",
            Self::SanDns => "san_dns",
            Self::SubjectCn => "subject_cn",
        }
    }
}

/// Looks a peer up by, in order of strength: the exact certificate (fingerprint), its SPIFFE ID,
/// a DNS SAN, its subject CN. The first kind that matches decides; the loader has already refused
/// a configuration in which two partners claim the same value.
#[derive(Debug, Default)]
pub struct PartnerIndex {
    fingerprint: HashMap<[u8; 32], PartnerId>,
    spiffe: HashMap<String, PartnerId>,
    san_dns: HashMap<String, PartnerId>,
    subject_cn: HashMap<String, PartnerId>,
}

impl PartnerIndex {
    pub fn build(partners: &[Partner]) -> Self {
        let mut index = Self::default();
        for (i, partner) in partners.iter().enumerate() {
            let id = PartnerId(i);
            for identity in &partner.identities {
                match identity {
                    IdentityMatch::Fingerprint(fp) => {
                        index.fingerprint.entry(*fp).or_insert(id);
                    }
                    IdentityMatch::Spiffe(s) => {
                        index.spiffe.entry(s.clone()).or_insert(id);
                    }
                    IdentityMatch::SanDns(d) => {
                        index.san_dns.entry(d.to_ascii_lowercase()).or_insert(id);
                    }
                    IdentityMatch::SubjectCn(cn) => {
                        index.subject_cn.entry(cn.clone()).or_insert(id);
                    }
                }
            }
        }
        index
    }

    pub fn lookup(&self, peer: &PeerIdentity) -> Option<(PartnerId, PartnerMatch)> {
        if let Some(id) = self.fingerprint.get(&peer.fingerprint_sha256) {
            return Some((*id, PartnerMatch::Fingerprint));
        }
        if let Some(id) = peer.spiffe.as_ref().and_then(|s| self.spiffe.get(s)) {
            return Some((*id, PartnerMatch::Spiffe));
        }
        if let Some(id) = peer.san_dns.iter().find_map(|d| self.san_dns.get(d)) {
            return Some((*id, PartnerMatch::SanDns));
        }
        if let Some(id) = peer
            .subject_cn
            .as_ref()
            .and_then(|cn| self.subject_cn.get(cn))
        {
            return Some((*id, PartnerMatch::SubjectCn));
        }
        None
    }
}
