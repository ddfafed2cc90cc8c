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

pub(crate) mod ca;
pub(crate) mod commands;
pub(crate) mod publish;
pub(crate) mod registry;
pub(crate) mod store;

pub(crate) use crate::config::published::StateDir;
