//! The partner-facing data path: accept, per-connection task, per-request service, forwarding.
//!
//! Parses no configuration or certificate files and builds no TLS configuration: it runs on what
//! a [`crate::runtime::Snapshot`] holds.

pub mod admission;
pub mod body;
pub mod conn_refusal;
pub mod connection;
pub mod dedicated;
pub mod headers;
pub mod listener;
pub mod refusal;
pub mod service;
pub mod upstream;
pub mod upstream_h1;
pub mod wake_gate;
