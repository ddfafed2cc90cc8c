//! certgate: a reverse-proxy gateway that enforces mutual TLS and certificate-bound partner access.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conn_refusal;
pub mod control;
pub mod feed;
pub mod fswatch;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod onboarding;
pub mod policy;
pub mod proxy;
pub mod revocation;
pub mod rfc3339;
pub mod runtime;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod usage;

/// An error and its sources as one line (`outer: cause: root cause`), for logs and diagnostics
/// where the chain would otherwise be lost.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
