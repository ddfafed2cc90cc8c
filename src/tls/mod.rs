//! TLS for the partner listener: PEM loading, trust bundles, the client verifier, the server
//! configuration and the handshake with its failure classification.
//!
//! Nothing here reads files at handshake time or knows partners, routes or HTTP.

pub mod handshake;
pub mod pem;
pub mod server;
pub mod trust;
pub mod verifier;
