//! certgate: a reverse-proxy gateway that enforces mutual TLS and certificate-bound partner access.
#![forbid(unsafe_code)]

pub mod config;
pub mod policy;
pub mod revocation;
