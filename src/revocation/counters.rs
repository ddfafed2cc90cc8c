//! The counters revocation code increments where it decides: check outcomes by source and
//! result, and failed source loads by bundle. They live here, with the code that counts, and
//! `metrics` registers them; so revocation depends on no module above it.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, Opts};

/// CRL and OCSP check outcomes, counted where the revocation code decides.
#[derive(Debug)]
pub struct RevocationCounters {
    /// [`RevocationSource`] × [`RevocationResult`].
    counters: [[IntCounter; 5]; 2],
    /// `certgate_revocation_source_failures_total{bundle, kind}`.
    source_failures: IntCounterVec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationSource {
    Crl = 0,
    Ocsp = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationResult {
    Good = 0,
    Revoked = 1,
    Unknown = 2,
    Error = 3,
    CacheHit = 4,
}

// === impl RevocationCounters ===

impl RevocationCounters {
    /// Counters registered nowhere: for revocation state built outside a gateway.
    #[allow(clippy::expect_used)]
    pub fn detached() -> Arc<Self> {
        let vec = IntCounterVec::new(
            Opts::new("certgate_revocation_checks_total", "detached"),
            &["source", "result"],
        )
        .expect("valid metric definition");
        Arc::new(Self {
            counters: std::array::from_fn(|s| {
                std::array::from_fn(|r| vec.with_label_values(&[&s.to_string(), &r.to_string()]))
            }),
            source_failures: Self::source_failures_vec().expect("valid metric definition"),
        })
    }

    /// Counters on `checks` (`source` × `result` labels), registered by the caller.
    pub fn registered(checks: &IntCounterVec, source_failures: IntCounterVec) -> Self {
        Self {
            counters: std::array::from_fn(|s| {
                std::array::from_fn(|r| {
                    checks.with_label_values(&[
                        ["crl", "ocsp"][s],
                        ["good", "revoked", "unknown", "error", "cache_hit"][r],
                    ])
                })
            }),
            source_failures,
        }
    }

    pub fn source_failures_vec() -> Result<IntCounterVec, prometheus::Error> {
        IntCounterVec::new(
            Opts::new(
                "certgate_revocation_source_failures_total",
                "Failed CRL loads (read, fetch, parse, signature, rollback) and failed OCSP queries, by trust bundle and kind (crl, ocsp).",
            ),
            &["bundle", "kind"],
        )
    }

    /// The failure counter of one bundle's CRL sources or OCSP responder. Label values come from
    /// the configuration (bundle names) and [`RevocationSource`].
    pub fn source_failures(&self, bundle: &str, kind: RevocationSource) -> IntCounter {
        let kind = match kind {
            RevocationSource::Crl => "crl",
            RevocationSource::Ocsp => "ocsp",
        };
        self.source_failures.with_label_values(&[bundle, kind])
    }

    pub fn count(&self, source: RevocationSource, result: RevocationResult) {
        self.counters[source as usize][result as usize].inc();
    }
}
