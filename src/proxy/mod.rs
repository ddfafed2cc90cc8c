//! The partner-facing data path: accept, per-connection task, per-request service, forwarding.
//!
//! Parses no configuration or certificate files and builds no TLS configuration: it runs on what
//! a [`crate::snapshot::Snapshot`] holds.

pub mod activity;
pub mod admission;
pub mod connection;
pub mod headers;
pub mod listener;
mod refused_handshake;
pub mod service;
pub mod tunnel;
pub mod wake_gate;
