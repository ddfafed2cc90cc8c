//! The client-certificate verifier: webpki chain validation per trust bundle, then revocation.
//!
//! Built without rustls' own CRL support on purpose: webpki re-verifies a CRL's signature on every
//! lookup and scans its serials, which does not scale to large CRLs. Revocation here is one O(1)
//! lookup per chain certificate in sets whose signatures were verified once, at load.

use std::cell::Cell;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage};

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
    allow_missing_eku: bool,
}

/// The gateway's EKU rule: the client's own certificate must list clientAuth, and must carry the
/// extension at all unless missing ones are allowed; an intermediate that has the extension must
/// list clientAuth too (RFC 5280's reading, which webpki applies to every certificate in a path).
///
/// webpki hands one validator every certificate of a candidate path, the end entity first (its
/// own checks open path building, before any issuer is looked at), and does not say which is
/// which; this validator holds the leaf's rule for that first call. Built afresh per verification.
struct ClientAuthUsage {
    leaf: KeyUsage,
    seen_leaf: Cell<bool>,
}

/// `id-kp-clientAuth` (1.3.6.1.5.5.7.3.2), DER content octets.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

thread_local! {
    /// The leaf of the last chain [`ClientVerifier::verify_client_cert`] refused on this thread.
    /// rustls keeps no peer certificates on a refused connection, so the handshake
    /// ([`super::handshake::accept`]) takes this right after the poll in which the verifier ran
    /// (a poll runs on one thread, start to end) to say whose certificate was refused. Written only
    /// on refusal: an accepted handshake stores and copies nothing.
    static REFUSED_LEAF: Cell<Option<CertificateDer<'static>>> = const { Cell::new(None) };
}

/// Takes the leaf the verifier last refused on this thread, if any.
pub(crate) fn take_refused_leaf() -> Option<CertificateDer<'static>> {
    REFUSED_LEAF.try_with(Cell::take).ok().flatten()
}

fn record_refused_leaf(leaf: &CertificateDer<'_>) {
    let _ = REFUSED_LEAF.try_with(|slot| slot.set(Some(leaf.clone().into_owned())));
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
            allow_missing_eku: false,
        }
    }

    /// Whether a certificate without an extended key usage extension is accepted (default: no).
    ///
    /// RFC 5280 lets a certificate without the extension serve any purpose, and webpki's
    /// `client_auth()` follows it; certgate requires `id-kp-clientAuth` to be present, so a
    /// certificate issued for something else entirely cannot pass as a partner's. Legacy PKIs
    /// that issue client certificates without EKU opt in through
    /// `server.client_auth.allow_missing_eku`. A certificate that has the extension must list
    /// clientAuth either way.
    #[must_use]
    pub fn allow_missing_eku(mut self, allow: bool) -> Self {
        self.allow_missing_eku = allow;
        self
    }

    fn client_auth_usage(&self) -> ClientAuthUsage {
        ClientAuthUsage {
            leaf: if self.allow_missing_eku {
                KeyUsage::client_auth()
            } else {
                KeyUsage::required(EKU_CLIENT_AUTH)
            },
            seen_leaf: Cell::new(false),
        }
    }

    /// Verifies the chain against one bundle only, with the gateway's own EKU rule.
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
        let ee = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let usage = self.client_auth_usage();
        self.verify_with(&ee, bundle, end_entity, intermediates, now, usage)
    }

    /// [`Self::verify_for_bundle`] with another extended key usage than clientAuth.
    ///
    /// The gateway itself always requires clientAuth (present, unless
    /// [`Self::allow_missing_eku`]); this exists so conformance suites
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
        usage: impl ExtendedKeyUsageValidator,
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

    /// The handshake's verdict: the chain bounds, then every bundle in turn.
    fn verify_client_chain(
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
                self.client_auth_usage(),
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
}

impl ExtendedKeyUsageValidator for ClientAuthUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        if self.seen_leaf.replace(true) {
            KeyUsage::client_auth().validate(iter)
        } else {
            self.leaf.validate(iter)
        }
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
        let verified = self.verify_client_chain(end_entity, intermediates, now);
        if verified.is_err() {
            record_refused_leaf(end_entity);
        }
        verified
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
