//! certgate: a reverse-proxy gateway that enforces mutual TLS and certificate-bound partner access.
// One audited exception, `runtime::trim` (a call into glibc), is allowed where it stands;
// `tests/architecture.rs` keeps it the only one.
#![deny(unsafe_code)]

/// Asserts that `$ty::ALL` holds exactly the values the patterns name, each once. The patterns
/// also form an exhaustive `match`, so a new variant does not compile here until it is named, and
/// once named the assertion fails until `ALL` lists it: a label set derived from `ALL` cannot
/// silently miss a value.
#[cfg(test)]
macro_rules! assert_all_lists_every_variant {
    ($ty:ty: $($variant:pat),+ $(,)?) => {{
        let _exhaustive = |v: $ty| match v {
            $($variant)|+ => (),
        };
        $(
            assert_eq!(
                <$ty>::ALL.iter().filter(|v| matches!(v, $variant)).count(),
                1,
                "{} must be in {}::ALL exactly once",
                stringify!($variant),
                stringify!($ty),
            );
        )+
        assert_eq!(
            <$ty>::ALL.len(),
            [$(stringify!($variant)),+].len(),
            "{}::ALL holds a value no pattern names",
            stringify!($ty),
        );
        let mut labels: Vec<&str> = <$ty>::ALL.iter().map(|v| v.as_str()).collect();
        assert!(labels.iter().all(|l| !l.is_empty()));
        labels.sort_unstable();
        labels.dedup();
        labels
    }};
}

pub(crate) mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conn_refusal;
pub(crate) mod control;
pub mod enrolment_code;
pub mod feed;
pub(crate) mod fswatch;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod onboarding;
pub(crate) mod plain_http;
pub mod policy;
pub mod proxy;
pub(crate) mod refusal;
pub mod revocation;
pub(crate) mod rfc3339;
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
