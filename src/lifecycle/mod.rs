//! The partner lifecycle: an embedded CA and an audited registry that issue, approve, renew and
//! revoke partner certificates, and publish what the gateway serves.
//!
//! This is the control plane. It runs in CLI processes (and later an enrolment API) beside the
//! gateway, never inside a connection: every change is one hash-chained event in the registry,
//! after which [`publish`] writes the partner table and a freshly signed CRL into the state
//! folder. The gateway compiles those files into its next snapshot and polls the CRL, so its hot
//! path never touches the database.
//!
//! - [`store`]: the only code that speaks SQL.
//! - [`registry`]: the event model, its hash chain, replay and verification.
//! - [`commands`]: one function per lifecycle command, each writing exactly one event.
//! - [`ca`]: CSR checks and signing behind the [`ca::Signer`] trait.
//! - [`publish`]: the files the gateway reads, written atomically.

pub mod ca;
pub mod commands;
pub mod publish;
pub mod registry;
pub mod store;

use std::path::{Path, PathBuf};

/// Name of the trust bundle the embedded CA becomes in the gateway, unless configured otherwise.
pub const DEFAULT_BUNDLE: &str = "lifecycle";

/// The layout of a lifecycle state folder. Every path anything reads or writes is named here, so
/// the CLI, the publisher and the gateway agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA certificate (PEM): the gateway's trust anchor for lifecycle partners.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca").join("ca.pem")
    }

    /// The CA private key (PKCS#8 PEM, mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca").join("ca-key.pem")
    }

    /// The SQLite registry.
    pub fn database(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }

    /// Where the files the gateway reads are published.
    pub fn published(&self) -> PathBuf {
        self.root.join("published")
    }

    /// The CA's current CRL (DER).
    pub fn crl(&self) -> PathBuf {
        self.published().join("crl.der")
    }

    /// The approved partners, as the gateway compiles them into its partner table.
    pub fn partners(&self) -> PathBuf {
        self.published().join("partners.json")
    }
}
