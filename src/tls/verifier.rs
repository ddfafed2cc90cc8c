//! The client-certificate verifier: webpki chain validation per trust bundle, then revocation.
//!
//! Built without rustls' own CRL support on purpose: webpki re-verifies a CRL's signature on every
//! lookup and scans its serials, which does not scale to large CRLs. Revocation here is one O(1)
//! lookup per chain certificate in sets whose signatures were verified once, at load.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::trust::TrustStore;
use crate::config::model::BundleId;
use crate::revocation::Revocation;

/// Verifies partner certificates against every configured trust bundle.
#[derive(Debug)]
pub struct ClientVerifier {
    store: Arc<TrustStore>,
    revocation: Arc<Revocation>,
    algs: WebPkiSupportedAlgorithms,
    limits: ChainLimits,
}

/// Bounds on what a client may present, checked before any parsing or path building.
#[derive(Debug, Clone, Copy)]
pub struct ChainLimits {
    pub max_intermediates: usize,
    pub max_bytes: usize,
}

impl ClientVerifier {
    pub fn new(store: Arc<TrustStore>, revocation: Arc<Revocation>, limits: ChainLimits) -> Self {
        Self {
            store,
            revocation,
            limits,
            algs: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        }
    }

    /// Verifies the chain against one bundle only.
    ///
    /// The handshake accepts a chain that any bundle anchors; when several bundles are configured,
    /// the connection calls this afterwards so a partner is only served through its own bundle.
    ///
    /// # Errors
    /// The chain does not verify against that bundle, or a certificate in it is revoked.
    pub fn verify_for_bundle(
        &self,
        bundle: BundleId,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        self.verify_for_bundle_with_usage(
            bundle,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )
    }

    /// [`Self::verify_for_bundle`] with another extended key usage than clientAuth.
    ///
    /// The gateway itself always requires clientAuth; this exists so conformance suites
    /// (`tests/limbo.rs`) can run vectors written for other usages through the same chain and
    /// revocation code.
    ///
    /// # Errors
    /// As [`Self::verify_for_bundle`].
    pub fn verify_for_bundle_with_usage(
        &self,
        bundle: BundleId,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), Error> {
        let ee = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        self.verify_with(&ee, bundle, end_entity, intermediates, now, usage)
    }

    /// Checks every certificate in a presented chain against the bundle's revocation state (CRL,
    /// and the OCSP cache for the leaf).
    ///
    /// Run once per connection after the handshake too: a resumed TLS session skips the verifier,
    /// and this is what stops resumption from bypassing a revocation made since.
    ///
    /// # Errors
    /// `Revoked`, or `UnknownRevocationStatus` when revocation is configured but cannot answer.
    pub fn check_chain_revocation(
        &self,
        bundle: BundleId,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(CertificateError::BadEncoding);
        };
        self.revocation
            .check_cert(bundle, leaf.as_ref(), true, now)?;
        for cert in rest {
            self.revocation
                .check_presented(bundle, cert.as_ref(), now)?;
        }
        Ok(())
    }

    fn verify_with(
        &self,
        ee: &EndEntityCert<'_>,
        bundle: BundleId,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), Error> {
        let anchors = match self.store.get(bundle) {
            Some(b) => &b.anchors[..],
            None => return Err(CertificateError::UnknownIssuer.into()),
        };
        let path = ee
            .verify_for_usage(
                self.algs.all,
                anchors,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(pki_error)?;
        self.revocation
            .check_cert(bundle, end_entity.as_ref(), true, now)?;
        for cert in path.intermediate_certificates() {
            self.revocation
                .check_cert(bundle, cert.der().as_ref(), false, now)?;
        }
        Ok(())
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.store.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bytes = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
        if intermediates.len() > self.limits.max_intermediates || bytes > self.limits.max_bytes {
            // The one use of this error in certgate: `HandshakeFailure` reads it as
            // `chain_too_long`. rustls answers it with the access_denied alert.
            return Err(CertificateError::ApplicationVerificationFailure.into());
        }
        let ee = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let mut best: Option<Error> = None;
        for index in 0..self.store.bundles.len() {
            match self.verify_with(
                &ee,
                BundleId(index),
                end_entity,
                intermediates,
                now,
                KeyUsage::client_auth(),
            ) {
                Ok(()) => return Ok(ClientCertVerified::assertion()),
                // An unknown issuer under one bundle says nothing; any other failure (expired,
                // wrong EKU, revoked) is what the client must be told.
                Err(e) if is_unknown_issuer(&e) => {
                    best.get_or_insert(e);
                }
                Err(e) => best = Some(e),
            }
        }
        Err(best.unwrap_or(CertificateError::UnknownIssuer.into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn is_unknown_issuer(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

/// webpki's errors in rustls' terms, so the right TLS alert goes out.
fn pki_error(error: webpki::Error) -> Error {
    use webpki::Error as E;
    let cert = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertExpired { .. } | E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(cert)
}
