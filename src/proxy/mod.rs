//! The partner-facing data path: accept, per-connection task, per-request service, forwarding.
//!
//! Parses no configuration or certificate files and builds no TLS configuration: it runs on what
//! a [`crate::snapshot::Snapshot`] holds.

pub mod admission;
pub mod connection;
pub mod headers;
pub mod listener;
pub mod refusal;
pub mod service;
pub mod wake_gate;
