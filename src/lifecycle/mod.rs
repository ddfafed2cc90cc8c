//! The partner lifecycle: an embedded CA and an audited registry that issue, approve, renew and
//! revoke partner certificates, and publish what the gateway serves.
//!
//! This is the control plane. It runs in CLI processes and in the enrolment API beside the
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
//! - [`token`]: the enrolment flow's one-time secrets, kept only as hashes.

pub mod ca;
pub mod commands;
pub mod publish;
pub mod registry;
pub mod store;
pub mod token;

pub use crate::config::published::{Identity, StateDir, DEFAULT_BUNDLE};
