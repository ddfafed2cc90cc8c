//! Trust bundles: the CA certificates a partner's chain must end in, parsed once at load.

use std::path::{Path, PathBuf};

use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::pem::{self, PemError};
use crate::config::model;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: certificate #{index} is not a usable trust anchor: {source}", path.display())]
    Anchor {
        path: PathBuf,
        index: usize,
        #[source]
        source: webpki::Error,
    },
}

impl TrustError {
    pub fn path(&self) -> &Path {
        match self {
            Self::Pem(e) => e.path(),
            Self::Anchor { path, .. } => path,
        }
    }
}

/// One configured trust bundle, ready for webpki.
#[derive(Debug)]
pub struct Bundle {
    pub name: String,
    /// The CA certificates as loaded; the revocation loader verifies CRL signatures against these.
    pub certs: Vec<CertificateDer<'static>>,
    pub anchors: Vec<TrustAnchor<'static>>,
}

/// Every configured bundle, indexed by [`model::BundleId`].
#[derive(Debug)]
pub struct TrustStore {
    pub bundles: Vec<Bundle>,
    /// Subjects of all anchors, sent in the CertificateRequest so clients pick the right certificate.
    pub hints: Vec<DistinguishedName>,
}

impl TrustStore {
    /// Loads every bundle's CA file; returns every failure, not only the first.
    ///
    /// # Errors
    /// One entry per unreadable file, bad PEM or certificate webpki cannot use as an anchor.
    pub fn load(bundles: &[model::TrustBundle]) -> Result<Self, Vec<TrustError>> {
        let mut errors = Vec::new();
        let mut loaded = Vec::with_capacity(bundles.len());
        for bundle in bundles {
            match Bundle::load(bundle) {
                Ok(b) => loaded.push(b),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let hints = loaded
            .iter()
            .flat_map(|b| b.anchors.iter())
            // webpki keeps the Name without its SEQUENCE header; the hint must be the full DER Name.
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        Ok(Self {
            bundles: loaded,
            hints,
        })
    }

    pub fn get(&self, id: model::BundleId) -> Option<&Bundle> {
        self.bundles.get(id.0)
    }
}

impl Bundle {
    fn load(config: &model::TrustBundle) -> Result<Self, TrustError> {
        let certs = pem::load_certs(&config.ca)?;
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(index, cert)| {
                webpki::anchor_from_trusted_cert(cert)
                    .map(|a| a.to_owned())
                    .map_err(|source| TrustError::Anchor {
                        path: config.ca.clone(),
                        index,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: config.name.clone(),
            certs,
            anchors,
        })
    }
}
