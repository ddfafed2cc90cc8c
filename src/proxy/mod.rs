//! The partner-facing data path: accept, per-connection task, per-request service, forwarding.
//!
//! Parses no configuration or certificate files and builds no TLS configuration: it runs on what
//! a [`crate::snapshot::Snapshot`] holds.

pub(crate) mod activity;
pub(crate) mod admission;
pub(crate) mod connection;
pub(crate) mod handshake_budget;
pub mod headers;
pub(crate) mod listener;
pub(crate) mod presented;
mod refused_handshake;
pub(crate) mod service;
pub mod tunnel;
pub(crate) mod wake_gate;
