//! The audit line of a refused TLS handshake: why, and whose certificate it was.
//!
//! Governance asks whose expired or revoked certificate keeps failing, so when the verifier
//! refused a presented certificate the line names it (subject, issuer, serial, SHA-256) and the
//! partner it would have been served as. All of that is parsed here, on the refusal path only;
//! an accepted handshake parses its leaf once, later, in the connection.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::identity::PeerIdentity;
use crate::snapshot::Snapshot;
use crate::tls::handshake::{HandshakeError, HandshakeFailure};

/// What the refused certificate says about itself.
struct Presented {
    /// `None` when the certificate does not parse: only its fingerprint is known.
    identity: Option<PeerIdentity>,
    sha256: String,
}

/// Writes the `handshake_refused` audit line.
pub(super) fn audit(
    snapshot: &Snapshot,
    id: u64,
    peer: SocketAddr,
    error: &HandshakeError,
    took: Duration,
) {
    let presented = error.leaf.as_ref().map(|leaf| {
        let identity = PeerIdentity::from_der(leaf).ok();
        let sha256 = match &identity {
            Some(identity) => identity.fingerprint_hex(),
            None => hex::encode(Sha256::digest(leaf.as_ref())),
        };
        Presented { identity, sha256 }
    });
    let partner = presented.as_ref().map(|p| {
        p.identity
            .as_ref()
            .and_then(|identity| snapshot.partners.lookup(identity))
            .and_then(|(id, _)| snapshot.config.partners.get(id.0))
            .map_or(crate::metrics::UNKNOWN_PARTNER, |p| p.id.as_str())
    });
    let identity = presented.as_ref().and_then(|p| p.identity.as_ref());
    let described = error.kind.describe();
    // The TLS library's own message says more about a protocol failure than a category does;
    // for a certificate, the category's sentence replaces the library's debug text.
    let detail: &dyn Display = match (&error.kind, &error.source) {
        (HandshakeFailure::ProtocolError, Some(source)) => source,
        _ => &described,
    };
    tracing::info!(
        target: "certgate::audit",
        event = "handshake_refused",
        decision = "deny",
        conn.id = id,
        client.addr = %peer,
        reason = error.kind.as_str(),
        error = %detail,
        partner = partner,
        cert.subject = identity.map(|i| i.subject.as_str()),
        cert.issuer = identity.map(|i| i.issuer.as_str()),
        cert.serial = identity.map(|i| i.serial.as_str()),
        cert.sha256 = presented.as_ref().map(|p| p.sha256.as_str()),
        duration_ms = took.as_secs_f64() * 1e3,
        "tls handshake refused"
    );
}
