//! certgate: a reverse-proxy gateway that enforces mutual TLS and certificate-bound partner access.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod revocation;
pub mod runtime;
pub mod tls;
