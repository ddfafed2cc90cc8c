//! What every connection presenting the same certificate chain shares.
//!
//! A partner holds many connections with one certificate: a client's connection pool, and all of
//! them again after a deploy or a network blip. Parsing the leaf and rendering the certificate
//! headers once per chain, rather than once per connection, takes that work off all but the
//! first handshake and leaves each connection a reference instead of its own copy (about 2 KB
//! an idle connection no longer holds).
//!
//! Only what follows from the chain's bytes is shared. Whether the certificate is revoked, and
//! which partner it maps to, are still decided for every connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use rustls_pki_types::CertificateDer;

use super::headers::CertificateHeaders;
use crate::audit;
use crate::config::model::{ClientCertHeader, Forward};
use crate::identity::{IdentityError, PeerIdentity};
use crate::revocation::certificates_digest;

/// A verified chain as its connections see it.
#[derive(Debug)]
pub struct Presented {
    pub identity: PeerIdentity,
    /// `identity`'s SHA-256 fingerprint in hex, for every audit line.
    pub fingerprint_hex: Box<str>,
    /// The certificate's fields of a request audit line, rendered once for every line of every
    /// connection presenting this chain.
    pub certificate_json: Box<str>,
    pub headers: Arc<CertificateHeaders>,
    /// The setting `headers` were rendered for: a reload may change it.
    rendered_for: ClientCertHeader,
}

impl Presented {
    /// Parses `chain`'s leaf and renders its headers.
    ///
    /// # Errors
    /// The chain is empty, or its leaf cannot be parsed.
    pub fn parse(chain: &[CertificateDer<'_>], forward: &Forward) -> Result<Self, PresentedError> {
        let leaf = chain.first().ok_or(PresentedError::Empty)?;
        let identity = PeerIdentity::from_der(leaf)?;
        let headers = Arc::new(CertificateHeaders::render(forward, &identity, chain));
        let fingerprint_hex: Box<str> = identity.fingerprint_hex().into();
        Ok(Self {
            certificate_json: audit::request::certificate_json(
                &identity.subject,
                &identity.serial,
                &fingerprint_hex,
            ),
            fingerprint_hex,
            identity,
            headers,
            rendered_for: forward.client_cert_header,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresentedError {
    #[error("no client certificate")]
    Empty,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The chains of the open connections, across configuration generations: a chain's headers are
/// rendered again when a reload changed `forward.client_cert_header`.
///
/// Entries are weak: a chain's parse lives as long as a connection holds it. Dead entries are
/// swept once as many chains were added since the last sweep as were live after it, so the
/// table stays within about twice the chains in use and a sweep costs O(1) per insertion.
#[derive(Debug, Default)]
pub(crate) struct PresentedChains {
    by_chain: DashMap<[u8; 32], Weak<Presented>>,
    inserted_since_sweep: AtomicUsize,
    live_after_sweep: AtomicUsize,
}

/// Fewer entries than this are never worth a sweep.
const MIN_SWEEP: usize = 256;

impl PresentedChains {
    /// The shared view of `chain`, parsed now if no open connection presented it.
    ///
    /// # Errors
    /// As [`Presented::parse`].
    pub(crate) fn get_or_parse(
        &self,
        chain: &[CertificateDer<'_>],
        forward: &Forward,
    ) -> Result<Arc<Presented>, PresentedError> {
        // Two chains share an entry only if they are the same certificates in the same order.
        let key = certificates_digest(chain);
        let cached = self.by_chain.get(&key).and_then(|weak| weak.upgrade());
        if let Some(presented) = cached.filter(|p| p.rendered_for == forward.client_cert_header) {
            return Ok(presented);
        }
        // Two handshakes with the same new chain may both parse it; the later entry wins and
        // the other connection keeps its own copy, which is only memory.
        let presented = Arc::new(Presented::parse(chain, forward)?);
        self.by_chain.insert(key, Arc::downgrade(&presented));
        self.sweep_if_due();
        Ok(presented)
    }

    fn sweep_if_due(&self) {
        let inserted = self.inserted_since_sweep.fetch_add(1, Ordering::Relaxed) + 1;
        if inserted < self.live_after_sweep.load(Ordering::Relaxed).max(MIN_SWEEP) {
            return;
        }
        self.inserted_since_sweep.store(0, Ordering::Relaxed);
        self.by_chain.retain(|_, weak| weak.strong_count() > 0);
        self.live_after_sweep
            .store(self.by_chain.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::StripHeaders;
    use http::HeaderName;

    fn forward_as(client_cert_header: ClientCertHeader) -> Forward {
        Forward {
            client_cert_header,
            partner_header: HeaderName::from_static("x-partner"),
            strip_headers: StripHeaders::with_defaults(std::iter::empty::<&str>()),
        }
    }

    /// `chain`'s shared view, rendered with `Client-Cert` headers.
    fn parse(chains: &PresentedChains, chain: &[CertificateDer<'_>]) -> Arc<Presented> {
        parse_as(chains, chain, ClientCertHeader::Rfc9440)
    }

    fn parse_as(
        chains: &PresentedChains,
        chain: &[CertificateDer<'_>],
        header: ClientCertHeader,
    ) -> Arc<Presented> {
        chains.get_or_parse(chain, &forward_as(header)).unwrap()
    }

    fn leaf(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn connections_with_one_chain_share_its_parse_and_others_do_not() {
        let chains = PresentedChains::default();
        let (a, b) = (leaf("a"), leaf("b"));
        let first = parse(&chains, std::slice::from_ref(&a));
        let again = parse(&chains, std::slice::from_ref(&a));
        assert!(Arc::ptr_eq(&first, &again));
        let other = parse(&chains, std::slice::from_ref(&b));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_ne!(first.fingerprint_hex, other.fingerprint_hex);
        // The same leaf sent with an intermediate renders another Client-Cert-Chain.
        let longer = parse(&chains, &[a.clone(), b]);
        assert!(!Arc::ptr_eq(&first, &longer));
        assert_eq!(first.fingerprint_hex, longer.fingerprint_hex);
    }

    #[test]
    fn a_chain_no_connection_holds_is_parsed_again_and_dead_entries_are_swept() {
        let chains = PresentedChains::default();
        let a = leaf("a");
        let first = parse(&chains, std::slice::from_ref(&a));
        let weak = Arc::downgrade(&first);
        drop(first);
        assert!(weak.upgrade().is_none());
        let again = parse(&chains, std::slice::from_ref(&a));
        assert_eq!(again.fingerprint_hex, leaf_fingerprint(&a));
        // Entries nobody holds go at the next sweep, those still held stay: the table does not
        // grow with every chain ever seen.
        for i in 0..MIN_SWEEP {
            let dead = CertificateDer::from(format!("never parsed {i}").into_bytes());
            chains
                .by_chain
                .insert(certificates_digest(&[dead]), Weak::new());
        }
        chains
            .inserted_since_sweep
            .store(MIN_SWEEP - 1, Ordering::Relaxed);
        chains.sweep_if_due();
        assert_eq!(chains.by_chain.len(), 1);
        let still = parse(&chains, &[a]);
        assert!(Arc::ptr_eq(&again, &still));
    }

    #[test]
    fn a_reload_that_changes_the_certificate_header_renders_it_again() {
        let chains = PresentedChains::default();
        let a = leaf("a");
        let rfc = parse(&chains, std::slice::from_ref(&a));
        let xfcc = parse_as(&chains, std::slice::from_ref(&a), ClientCertHeader::Xfcc);
        assert!(!Arc::ptr_eq(&rfc, &xfcc));
        let rendered = |p: &Presented| p.headers.names().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(rendered(&rfc), ["client-cert"]);
        assert_eq!(rendered(&xfcc), ["x-forwarded-client-cert"]);
        let again = parse_as(&chains, &[a], ClientCertHeader::Xfcc);
        assert!(Arc::ptr_eq(&xfcc, &again));
    }

    #[test]
    fn an_empty_chain_is_an_error() {
        let chains = PresentedChains::default();
        assert!(matches!(
            chains.get_or_parse(&[], &forward_as(ClientCertHeader::Rfc9440)),
            Err(PresentedError::Empty)
        ));
        assert!(chains.by_chain.is_empty());
    }

    fn leaf_fingerprint(der: &CertificateDer<'_>) -> Box<str> {
        PeerIdentity::from_der(der)
            .unwrap()
            .fingerprint_hex()
            .into()
    }
}
