//! Who presented a client certificate on the onboarding listener: a partner renewing with the
//! certificate the embedded CA issued it, or an approver signing in to the portal.
//!
//! The listener offers both CAs in one optional client-auth handshake, so one certificate must
//! never count as both: each role re-verifies the presented chain against its own roots, once per
//! connection. A partner certificate therefore never reaches the approver's view, whatever its
//! names, and an approver's never renews.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// One optional client-auth verifier over the partner CA and, when the portal has one, the
/// approver CA.
#[derive(Debug)]
pub(crate) struct Clients {
    partner: Arc<dyn ClientCertVerifier>,
    approver: Option<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
}

/// The role a verified client certificate has on this listener.
pub(crate) enum Client<'a> {
    None,
    /// Chains to the embedded (partner-issuing) CA: may renew over EST.
    Partner(&'a CertificateDer<'static>),
    /// Chains to the approver CA: may act in the portal.
    Approver(&'a CertificateDer<'static>),
}

impl Clients {
    pub(crate) fn new(
        partner: Arc<dyn ClientCertVerifier>,
        approver: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Self {
        let mut hints = partner.root_hint_subjects().to_vec();
        if let Some(a) = &approver {
            hints.extend_from_slice(a.root_hint_subjects());
        }
        Self {
            partner,
            approver,
            hints,
        }
    }

    /// The role of the chain a finished handshake verified (`[leaf, intermediates…]`).
    pub(crate) fn classify<'a>(&self, chain: Option<&'a [CertificateDer<'static>]>) -> Client<'a> {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return Client::None;
        };
        let now = UnixTime::now();
        let verifies =
            |v: &dyn ClientCertVerifier| v.verify_client_cert(leaf, intermediates, now).is_ok();
        if verifies(&*self.partner) {
            Client::Partner(leaf)
        } else if self.approver.as_deref().is_some_and(verifies) {
            Client::Approver(leaf)
        } else {
            Client::None
        }
    }
}

impl ClientCertVerifier for Clients {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .partner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(e) => match &self.approver {
                Some(a) => a.verify_client_cert(end_entity, intermediates, now),
                None => Err(e),
            },
        }
    }

    // The handshake signature proves possession of the key, whichever CA issued it.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.partner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.partner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.partner.supported_verify_schemes()
    }
}
