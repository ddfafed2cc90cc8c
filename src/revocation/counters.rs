//! The counters revocation code increments where it decides: check outcomes by source and
//! result, and failed source loads by bundle. They live here, with the code that counts, and
//! `metrics` registers them; so revocation depends on no module above it.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, Opts};

/// CRL and OCSP check outcomes, counted where the revocation code decides.
#[derive(Debug)]
pub struct RevocationCounters {
    /// [`RevocationSource::ALL`] × [`RevocationResult::ALL`].
    counters: [[IntCounter; RevocationResult::ALL.len()]; RevocationSource::ALL.len()],
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

// === impl RevocationSource ===

impl RevocationSource {
    /// Every source, in discriminant order; a unit test fails when a variant is missing.
    pub const ALL: [Self; 2] = [Self::Crl, Self::Ocsp];

    /// The `source` (checks) and `kind` (source failures) label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crl => "crl",
            Self::Ocsp => "ocsp",
        }
    }
}

// === impl RevocationResult ===

impl RevocationResult {
    /// Every result, in discriminant order; a unit test fails when a variant is missing.
    pub const ALL: [Self; 5] = [
        Self::Good,
        Self::Revoked,
        Self::Unknown,
        Self::Error,
        Self::CacheHit,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Revoked => "revoked",
            Self::Unknown => "unknown",
            Self::Error => "error",
            Self::CacheHit => "cache_hit",
        }
    }
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
        Arc::new(Self::registered(
            &vec,
            Self::source_failures_vec().expect("valid metric definition"),
        ))
    }

    /// Counters on `checks` (`source` × `result` labels), registered by the caller.
    pub fn registered(checks: &IntCounterVec, source_failures: IntCounterVec) -> Self {
        Self {
            counters: RevocationSource::ALL.map(|s| {
                RevocationResult::ALL.map(|r| checks.with_label_values(&[s.as_str(), r.as_str()]))
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
        self.source_failures
            .with_label_values(&[bundle, kind.as_str()])
    }

    pub fn count(&self, source: RevocationSource, result: RevocationResult) {
        self.counters[source as usize][result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_and_result_is_in_all_in_place_with_its_own_label() {
        let sources = assert_all_lists_every_variant!(RevocationSource:
            RevocationSource::Crl,
            RevocationSource::Ocsp,
        );
        assert_eq!(sources.len(), RevocationSource::ALL.len());
        for (i, s) in RevocationSource::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?} is out of place in ALL");
        }
        let results = assert_all_lists_every_variant!(RevocationResult:
            RevocationResult::Good,
            RevocationResult::Revoked,
            RevocationResult::Unknown,
            RevocationResult::Error,
            RevocationResult::CacheHit,
        );
        assert_eq!(results.len(), RevocationResult::ALL.len());
        for (i, r) in RevocationResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of place in ALL");
        }
    }

    #[test]
    fn each_check_is_counted_under_its_own_labels() {
        let checks =
            IntCounterVec::new(Opts::new("checks", "test"), &["source", "result"]).unwrap();
        let counters = RevocationCounters::registered(
            &checks,
            RevocationCounters::source_failures_vec().unwrap(),
        );
        for s in RevocationSource::ALL {
            for r in RevocationResult::ALL {
                counters.count(s, r);
                assert_eq!(
                    checks.with_label_values(&[s.as_str(), r.as_str()]).get(),
                    1,
                    "{s:?} {r:?}"
                );
            }
        }
    }
}
