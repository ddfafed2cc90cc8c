//! The `/status` document.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use super::State;
use crate::feed::mirror::SourceStatus;
use crate::revocation::CrlStatus;

#[derive(Debug, Serialize)]
pub(super) struct Status {
    /// SHA-256 of the YAML in service.
    version: String,
    /// The YAML file it was loaded from.
    source: String,
    /// When the generation in service was built (RFC 3339).
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    loaded_at: u64,
    partners: usize,
    routes: usize,
    upstreams: usize,
    connections_active: i64,
    draining: bool,
    bundles: Vec<Bundle>,
    ocsp: Ocsp,
    /// With `lifecycle.source`: whether the control plane answers, and the copy in service.
    #[serde(skip_serializing_if = "Option::is_none")]
    lifecycle_source: Option<Arc<SourceStatus>>,
}

#[derive(Debug, Serialize)]
struct Bundle {
    name: String,
    /// One row per configured CRL source; empty when the bundle checks no CRLs.
    crls: Vec<CrlStatus>,
    ocsp: bool,
}

#[derive(Debug, Serialize)]
struct Ocsp {
    cache_entries: usize,
    queries_sent: u64,
    cache_hits: u64,
    errors: u64,
    soft_fail_allowed: u64,
}

pub(super) fn of(state: &State) -> Status {
    let snapshot = state.current.load_full();
    let config = &snapshot.config;
    let mut crls = snapshot.revocation.crl().status();
    let bundles = config
        .trust_bundles
        .iter()
        .map(|b| Bundle {
            name: b.name.clone(),
            crls: {
                let (mine, rest) = crls.drain(..).partition(|s| s.bundle == b.name);
                crls = rest;
                mine
            },
            ocsp: b
                .ocsp
                .as_ref()
                .is_some_and(|o| o.mode != crate::config::model::OcspMode::Off),
        })
        .collect();
    let counters = snapshot.revocation.ocsp_counters();
    Status {
        version: config.version.clone(),
        source: config.source.display().to_string(),
        loaded_at: snapshot
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        partners: config.partners.len(),
        routes: config.routes.len(),
        upstreams: config.upstreams.len(),
        connections_active: state.metrics.connections_active(),
        draining: state.draining.load(std::sync::atomic::Ordering::Relaxed),
        bundles,
        ocsp: Ocsp {
            cache_entries: snapshot.revocation.ocsp_cache_entries(),
            queries_sent: counters.queries_sent,
            cache_hits: counters.cache_hits,
            errors: counters.errors,
            soft_fail_allowed: counters.soft_fail_allowed,
        },
        lifecycle_source: state.lifecycle_source.as_ref().map(|s| s.get()),
    }
}
