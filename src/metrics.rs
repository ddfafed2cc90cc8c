//! Prometheus metrics: one [`Metrics`] per gateway (its own [`Registry`], never the global one, so
//! several gateways can run in one process), and per configuration generation a [`Handles`]
//! table that resolves label values once, so the data path indexes arrays and bumps atomics.
//!
//! # Where what is counted
//! * `proxy::connection`: handshakes (result, duration), active connections, partner certificate
//!   expiry (once per connection), connections refused after the handshake (by reason).
//! * `proxy::listener`: the connection limit reached.
//! * `proxy::service`: requests, request and upstream latency, upstream errors, policy denials,
//!   through [`Handles`] (array index by `RouteId` / `PartnerId` / `UpstreamId`).
//! * `revocation`: CRL and OCSP checks where the verdict is made, through
//!   [`crate::revocation::RevocationCounters`], which this module registers.
//! * `runtime::reload`: reload outcomes.
//! * `admin`: the gauges read from revocation state at scrape time ([`Metrics::encode`]).
//! * `runtime`: the server certificates' expiry, set when a generation is published
//!   ([`Metrics::set_server_certificates`]); the lifecycle registry's partner certificates, set
//!   when it publishes ([`Metrics::set_registered_certificates`]).
//! * Linux only: the standard `process_*` metrics (memory, CPU, file descriptors), read from
//!   `/proc` at scrape time.
//!
//! # Label values
//! Only from configuration (route, partner, upstream, bundle names and CRL sources) or fixed enums.
//! A request that matched no route is counted under `route="none"`, a connection bound to no
//! partner under `partner="unknown"`. The one exception is `serial` on
//! `certgate_partner_cert_expiry_timestamp_seconds`: it comes from a certificate that verified and
//! bound to a configured partner, and is bounded to [`SERIALS_PER_PARTNER`] per partner, each
//! dropped a day after it was last seen; or from the lifecycle registry, whose certificates are
//! configuration too. `sni` on `certgate_server_certificate_expiry_timestamp_seconds` is a DNS
//! name of a configured server certificate, or [`DEFAULT_SNI`].
//!
//! Registration happens here only; nothing on the data path registers a metric.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::model::{Config, PartnerId, UpstreamId};
use crate::conn_refusal::ConnRefusal;
use crate::policy::RouteId;
use crate::revocation::RevocationCounters;
use crate::tls::handshake::HandshakeFailure;
use crate::tls::server::{ServedCertificate, DEFAULT_SNI};

/// Label value for a request that matched no route.
pub const NO_ROUTE: &str = "none";
/// Label value for a connection bound to no configured partner.
pub const UNKNOWN_PARTNER: &str = "unknown";
/// Serials per partner kept for `certgate_partner_cert_expiry_timestamp_seconds`.
pub const SERIALS_PER_PARTNER: usize = 4;
/// A certificate not seen for this long leaves the expiry gauge.
pub const SEEN_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// `status_class` label values, indexed by `status / 100 - 2` (1xx counts as 2xx).
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// `reason` label values of `certgate_policy_denials_total`: every refusal reason code except
/// the upstream failures, which `certgate_upstream_errors_total` counts.
pub const DENIAL_REASONS: [&str; 12] = [
    "no_route",
    "scope_denied",
    "method_not_allowed",
    "host_mismatch",
    "bad_path",
    "unknown_partner",
    "certificate_revoked",
    "revocation_unknown",
    "bad_request",
    "bad_host",
    "upgrade_not_allowed",
    "body_too_large",
];

/// `kind` label values of `certgate_upstream_errors_total` (`UpstreamFailure::kind`).
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "exchange"];

/// Request and upstream latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Handshake duration buckets, seconds.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Every metric of one gateway, registered in its own [`Registry`]. Survives reloads: the
/// runtime builds one and hands an `Arc` to every generation.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// Index 0 is `ok`, then [`HandshakeFailure::ALL`] in order.
    handshakes: [IntCounter; 1 + HandshakeFailure::ALL.len()],
    handshake_duration: Histogram,
    denials: IntCounterVec,
    revocation: Arc<RevocationCounters>,
    revocation_sources: RevocationSourceGauges,
    crl_next_update: GaugeVec,
    crl_entries: IntGaugeVec,
    ocsp_cache_entries: IntGauge,
    cert_expiry: GaugeVec,
    /// Partner id → recently seen certificates.
    seen_certs: DashMap<Box<str>, Vec<SeenCert>>,
    connections_active: IntGauge,
    connections_parked: IntGauge,
    /// In [`ConnRefusal::ALL`] order.
    connection_refusals: [IntCounter; ConnRefusal::ALL.len()],
    connection_limit_reached: IntCounter,
    reloads_applied: IntCounter,
    reloads_rejected: IntCounter,
    last_reload_success: Gauge,
    ops: OpsMetrics,
}

/// Expiry gauges for what certgate knows from configuration rather than from traffic.
struct OpsMetrics {
    server_cert_expiry: GaugeVec,
    /// The `sni` label values set by the last [`Metrics::set_server_certificates`], so the next
    /// call removes names a reload dropped.
    server_cert_names: ArcSwap<Vec<Box<str>>>,
    /// The lifecycle registry's certificates, merged into
    /// `certgate_partner_cert_expiry_timestamp_seconds` at scrape time.
    registered_certs: ArcSwap<Vec<RegisteredCert>>,
}

#[derive(Debug, Clone)]
struct RegisteredCert {
    partner: Box<str>,
    serial: Box<str>,
    not_after: i64,
}

#[derive(Debug, Clone)]
struct SeenCert {
    serial: Box<str>,
    not_after: i64,
    last_seen: u64,
}

/// Decrements its gauge (`certgate_connections_active` or `certgate_connections_parked`) when
/// dropped.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

/// One configuration generation's pre-resolved metric handles, indexed by the ids the data path
/// already holds. Built with the snapshot; counts land in the same series across reloads because
/// the underlying vectors belong to [`Metrics`].
pub struct Handles {
    metrics: Arc<Metrics>,
    /// Route names; index 0 is `none`, route `i` is at `i + 1`.
    routes: Box<[Box<str>]>,
    /// Partner ids; index 0 is `unknown`, partner `i` is at `i + 1`.
    partners: Box<[Box<str>]>,
    /// `((route + 1) * partners.len() + (partner + 1)) * 4 + class`, resolved on first use so a
    /// large route × partner matrix costs 16 bytes per cell until it is used.
    requests: Box<[OnceLock<IntCounter>]>,
    /// Per route slot (index 0 = `none`).
    durations: Box<[Histogram]>,
    upstream_durations: Box<[Histogram]>,
    /// Per upstream × [`UPSTREAM_ERROR_KINDS`].
    upstream_errors: Box<[[IntCounter; 3]]>,
    /// `reason * partners.len() + (partner + 1)`, resolved on first use.
    denials: Box<[OnceLock<IntCounter>]>,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric in a fresh registry.
    ///
    /// # Panics
    /// Never in practice: names and labels are constants checked by the unit tests.
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<Self> {
        Self::try_new().expect("metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "certgate_requests_total",
                "HTTP requests answered, by route, partner and status class.",
            ),
            &["route", "partner", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "certgate_request_duration_seconds",
                "Time from request head to the end of the response body (certgate plus upstream).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "certgate_upstream_duration_seconds",
                "Time from sending a request upstream to its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "certgate_upstream_errors_total",
                "Upstream exchanges that failed, by upstream and kind (connect, timeout, exchange).",
            ),
            &["upstream", "kind"],
        )?;
        let handshake_vec = IntCounterVec::new(
            Opts::new(
                "certgate_tls_handshakes_total",
                "Partner TLS handshakes by result.",
            ),
            &["result"],
        )?;
        let handshakes = std::array::from_fn(|i| {
            let result = match i {
                0 => "ok",
                i => HandshakeFailure::ALL[i - 1].as_str(),
            };
            handshake_vec.with_label_values(&[result])
        });
        let handshake_duration = Histogram::with_opts(
            HistogramOpts::new(
                "certgate_tls_handshake_duration_seconds",
                "Partner TLS handshake duration, successful or not.",
            )
            .buckets(HANDSHAKE_BUCKETS.to_vec()),
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "certgate_policy_denials_total",
                "Requests refused by policy or identity, by reason code and partner.",
            ),
            &["reason", "partner"],
        )?;
        let revocation_vec = IntCounterVec::new(
            Opts::new(
                "certgate_revocation_checks_total",
                "Revocation lookups by source (crl, ocsp) and result.",
            ),
            &["source", "result"],
        )?;
        let source_failures = RevocationCounters::source_failures_vec()?;
        let revocation_sources = RevocationSourceGauges::new()?;
        revocation_sources.register(&registry, &source_failures)?;
        let revocation = Arc::new(RevocationCounters::registered(
            &revocation_vec,
            source_failures,
        ));
        let crl_next_update = GaugeVec::new(
            Opts::new(
                "certgate_crl_next_update_timestamp_seconds",
                "Earliest nextUpdate (Unix seconds) of the CRLs a source has in force.",
            ),
            &["bundle", "source"],
        )?;
        let crl_entries = IntGaugeVec::new(
            Opts::new(
                "certgate_crl_entries",
                "Revoked serials in the CRLs a source has in force.",
            ),
            &["bundle", "source"],
        )?;
        let ocsp_cache_entries = IntGauge::new(
            "certgate_ocsp_cache_entries",
            "OCSP answers cached, across trust bundles.",
        )?;
        let cert_expiry = GaugeVec::new(
            Opts::new(
                "certgate_partner_cert_expiry_timestamp_seconds",
                "notAfter (Unix seconds) of partner certificates seen in the last day or in force in the lifecycle registry.",
            ),
            &["partner", "serial"],
        )?;
        let connections_active = IntGauge::new(
            "certgate_connections_active",
            "Partner connections open (handshake included).",
        )?;
        let connections_parked = IntGauge::new(
            "certgate_connections_parked",
            "HTTP/1.1 partner connections parked while idle: their HTTP connection and its buffers freed, the TLS stream kept.",
        )?;
        let refusal_vec = IntCounterVec::new(
            Opts::new(
                "certgate_connection_refusals_total",
                "Connections closed after the handshake because the client crossed a limit or broke the protocol, by reason.",
            ),
            &["reason"],
        )?;
        let connection_refusals =
            ConnRefusal::ALL.map(|r| refusal_vec.with_label_values(&[r.as_str()]));
        let connection_limit_reached = IntCounter::new(
            "certgate_connection_limit_reached_total",
            "Times every max_connections permit was taken: further connections wait in the kernel's backlog until one closes.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "certgate_config_reloads_total",
                "Configuration reloads by result (applied, rejected).",
            ),
            &["result"],
        )?;
        let last_reload_success = Gauge::new(
            "certgate_config_last_reload_success_timestamp_seconds",
            "When the configuration in service was loaded (Unix seconds); set at start too.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("certgate_build_info", "Always 1; the version is a label."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(handshake_vec),
            Box::new(handshake_duration.clone()),
            Box::new(denials.clone()),
            Box::new(revocation_vec),
            Box::new(crl_next_update.clone()),
            Box::new(crl_entries.clone()),
            Box::new(ocsp_cache_entries.clone()),
            Box::new(cert_expiry.clone()),
            Box::new(connections_active.clone()),
            Box::new(connections_parked.clone()),
            Box::new(refusal_vec),
            Box::new(connection_limit_reached.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            registry.register(c)?;
        }
        let ops = OpsMetrics::register(&registry)?;
        Ok(Arc::new(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            handshakes,
            handshake_duration,
            denials,
            revocation,
            revocation_sources,
            crl_next_update,
            crl_entries,
            ocsp_cache_entries,
            cert_expiry,
            seen_certs: DashMap::new(),
            connections_active,
            connections_parked,
            connection_refusals,
            connection_limit_reached,
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_rejected: reloads.with_label_values(&["rejected"]),
            last_reload_success,
            ops,
        }))
    }

    /// The counters the revocation code of every generation shares.
    pub fn revocation(&self) -> &Arc<RevocationCounters> {
        &self.revocation
    }

    /// Counts one handshake: `None` is success.
    pub fn handshake(&self, failure: Option<HandshakeFailure>, took: Duration) {
        let i = match failure {
            None => 0,
            Some(f) => 1 + f.index(),
        };
        self.handshakes[i].inc();
        self.handshake_duration.observe(took.as_secs_f64());
    }

    /// Counts an open connection until the guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections_active.inc();
        ConnectionGuard(self.connections_active.clone())
    }

    /// Counts a parked connection until the guard drops.
    pub fn parked(&self) -> ConnectionGuard {
        self.connections_parked.inc();
        ConnectionGuard(self.connections_parked.clone())
    }

    pub fn connections_active(&self) -> i64 {
        self.connections_active.get()
    }

    /// Counts a connection ended because its client crossed a limit or broke the protocol.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        let i = match reason {
            ConnRefusal::HeaderTooLarge => 0,
            ConnRefusal::HeaderTimeout => 1,
            ConnRefusal::BadRequest => 2,
            ConnRefusal::Http2ProtocolError => 3,
            ConnRefusal::Http2Flood => 4,
            ConnRefusal::Stalled => 5,
        };
        self.connection_refusals[i].inc();
    }

    /// Counts the accept loop finding every connection permit taken.
    pub fn connection_limit_reached(&self) {
        self.connection_limit_reached.inc();
    }

    /// Notes a verified partner certificate for the expiry gauge. Once per connection: one map
    /// lookup by partner id; allocates only for a partner or serial not seen before.
    pub fn saw_certificate(&self, partner: &str, serial: &str, not_after: i64) {
        let now = unix_now();
        let record = |certs: &mut Vec<SeenCert>| {
            if let Some(c) = certs.iter_mut().find(|c| &*c.serial == serial) {
                c.last_seen = now;
                return;
            }
            if certs.len() >= SERIALS_PER_PARTNER {
                // Forget the certificate seen longest ago.
                if let Some(oldest) = certs
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| c.last_seen)
                    .map(|(i, _)| i)
                {
                    certs.swap_remove(oldest);
                }
            }
            certs.push(SeenCert {
                serial: serial.into(),
                not_after,
                last_seen: now,
            });
        };
        if let Some(mut certs) = self.seen_certs.get_mut(partner) {
            record(&mut certs);
            return;
        }
        record(&mut self.seen_certs.entry(partner.into()).or_default());
    }

    pub fn reload_applied(&self) {
        self.reloads_applied.inc();
        self.loaded_now();
    }

    pub fn reload_rejected(&self) {
        self.reloads_rejected.inc();
    }

    /// Sets the last-successful-load time to now (start-up and applied reloads).
    pub fn loaded_now(&self) {
        self.last_reload_success.set(unix_now() as f64);
    }

    /// Refreshes the scrape-time gauges from `revocation` state, then renders every metric in
    /// the Prometheus text format. Callers serialise scrapes (the gauges are reset and refilled).
    pub fn encode(&self, scrape: &ScrapeState) -> String {
        self.crl_next_update.reset();
        self.crl_entries.reset();
        for s in &scrape.crls {
            let labels = [s.bundle.as_str(), s.source.as_str()];
            if let Some(next) = s.next_update {
                self.crl_next_update
                    .with_label_values(&labels)
                    .set(next as f64);
            }
            let entries = s.entries;
            self.crl_entries
                .with_label_values(&labels)
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
        }
        self.ocsp_cache_entries
            .set(i64::try_from(scrape.ocsp_cache_entries).unwrap_or(i64::MAX));
        self.revocation_sources.refresh(&scrape.crls, unix_now());

        let cutoff = unix_now().saturating_sub(SEEN_WINDOW.as_secs());
        self.seen_certs.retain(|_, certs| {
            certs.retain(|c| c.last_seen >= cutoff);
            !certs.is_empty()
        });
        self.cert_expiry.reset();
        for c in self.ops.registered_certs.load().iter() {
            self.cert_expiry
                .with_label_values(&[c.partner.as_ref(), c.serial.as_ref()])
                .set(c.not_after as f64);
        }
        for entry in self.seen_certs.iter() {
            for c in entry.value() {
                self.cert_expiry
                    .with_label_values(&[entry.key().as_ref(), c.serial.as_ref()])
                    .set(c.not_after as f64);
            }
        }

        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

// === impl Metrics: expiry known from configuration ===

impl Metrics {
    /// Publishes the expiry of the server certificates a generation serves, one series per SNI
    /// name, and removes the names the previous generation served and this one does not. Called
    /// when a generation is published (start-up and applied reloads), never per connection.
    pub fn set_server_certificates(&self, served: &[ServedCertificate]) {
        let names: Vec<Box<str>> = served.iter().map(|c| Box::from(c.sni.as_str())).collect();
        for old in self.ops.server_cert_names.load().iter() {
            if !names.contains(old) {
                let _ = self
                    .ops
                    .server_cert_expiry
                    .remove_label_values(&[old.as_ref()]);
            }
        }
        for c in served {
            self.ops
                .server_cert_expiry
                .with_label_values(&[c.sni.as_str()])
                .set(c.not_after as f64);
        }
        self.ops.server_cert_names.store(Arc::new(names));
    }

    /// Replaces the partner certificates the lifecycle registry holds in force, as
    /// `(partner id, serial, notAfter in Unix seconds)`, the serial in upper-case hex without
    /// colons as `openssl x509 -serial` prints it (the form traffic reports, so a certificate
    /// both registered and seen is one series). They are exported in
    /// `certgate_partner_cert_expiry_timestamp_seconds` beside the certificates seen in traffic,
    /// so a certificate that expires unused still raises the expiry alert. The registry calls
    /// this whenever it publishes a new partner table; revoked and superseded certificates
    /// should be left out, or their expiry alerts for nothing.
    pub fn set_registered_certificates<'a>(
        &self,
        certs: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
    ) {
        let certs = certs
            .into_iter()
            .map(|(partner, serial, not_after)| RegisteredCert {
                partner: partner.into(),
                serial: serial.into(),
                not_after,
            })
            .collect();
        self.ops.registered_certs.store(Arc::new(certs));
    }
}

// === impl OpsMetrics ===

impl OpsMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let server_cert_expiry = GaugeVec::new(
            Opts::new(
                "certgate_server_certificate_expiry_timestamp_seconds",
                format!(
                    "notAfter (Unix seconds) of the server certificate served for each SNI name; \
                     sni=\"{DEFAULT_SNI}\" is the one served without or for an unknown SNI."
                ),
            ),
            &["sni"],
        )?;
        registry.register(Box::new(server_cert_expiry.clone()))?;
        // The standard process_* metrics (resident memory, CPU seconds, open and max file
        // descriptors, start time) in this gateway's own registry.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            server_cert_expiry,
            server_cert_names: ArcSwap::from_pointee(Vec::new()),
            registered_certs: ArcSwap::from_pointee(Vec::new()),
        })
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What [`Metrics::encode`] reads from the generation in service. Plain numbers, filled by the
/// admin API from the revocation state, so metrics depends on no module that records into it.
#[derive(Debug, Default)]
pub struct ScrapeState {
    pub crls: Vec<CrlSourceScrape>,
    pub ocsp_cache_entries: usize,
}

/// One CRL source of one trust bundle, as a scrape reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSourceScrape {
    pub bundle: String,
    /// File path or URL.
    pub source: String,
    /// Unix seconds of the last successful load.
    pub last_success: Option<u64>,
    /// The earliest nextUpdate of the CRLs in force from this source.
    pub next_update: Option<u64>,
    /// Entries of the CRLs in force from this source.
    pub entries: usize,
}

// === revocation sources ===

/// Per-source gauges read from revocation state at scrape time, so an operator can alert on a
/// source that stopped loading before its CRL expires.
struct RevocationSourceGauges {
    /// Seconds since the source last loaded successfully.
    age: GaugeVec,
    /// Earliest nextUpdate of what the source has in force.
    next_update: GaugeVec,
}

impl RevocationSourceGauges {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            age: GaugeVec::new(
                Opts::new(
                    "certgate_revocation_source_age_seconds",
                    "Seconds since a revocation source last loaded successfully (absent until it has).",
                ),
                &["bundle", "kind", "source"],
            )?,
            next_update: GaugeVec::new(
                Opts::new(
                    "certgate_revocation_source_next_update_timestamp_seconds",
                    "Earliest nextUpdate (Unix seconds) of what a revocation source has in force.",
                ),
                &["bundle", "kind", "source"],
            )?,
        })
    }

    fn register(
        &self,
        registry: &Registry,
        failures: &IntCounterVec,
    ) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.age.clone()))?;
        registry.register(Box::new(self.next_update.clone()))?;
        registry.register(Box::new(failures.clone()))
    }

    fn refresh(&self, crls: &[CrlSourceScrape], now: u64) {
        self.age.reset();
        self.next_update.reset();
        for s in crls {
            let labels = [s.bundle.as_str(), "crl", s.source.as_str()];
            if let Some(success) = s.last_success {
                self.age
                    .with_label_values(&labels)
                    .set(now.saturating_sub(success) as f64);
            }
            if let Some(next) = s.next_update {
                self.next_update.with_label_values(&labels).set(next as f64);
            }
        }
    }
}

impl std::fmt::Debug for RevocationSourceGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSourceGauges")
            .finish_non_exhaustive()
    }
}

// === impl ConnectionGuard ===

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Handles ===

impl Handles {
    /// Resolves the per-route, per-upstream handles of `config` (the request and denial matrices
    /// are resolved cell by cell on first use).
    pub fn build(metrics: &Arc<Metrics>, config: &Config) -> Self {
        let routes: Box<[Box<str>]> = std::iter::once(NO_ROUTE)
            .chain(config.routes.iter().map(|r| r.name.as_str()))
            .map(Box::from)
            .collect();
        let partners: Box<[Box<str>]> = std::iter::once(UNKNOWN_PARTNER)
            .chain(config.partners.iter().map(|p| p.id.as_str()))
            .map(Box::from)
            .collect();
        let cells = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        Self {
            requests: cells(routes.len() * partners.len() * STATUS_CLASSES.len()),
            denials: cells(DENIAL_REASONS.len() * partners.len()),
            durations: routes
                .iter()
                .map(|r| metrics.request_duration.with_label_values(&[r.as_ref()]))
                .collect(),
            upstream_durations: config
                .upstreams
                .iter()
                .map(|u| metrics.upstream_duration.with_label_values(&[&u.name]))
                .collect(),
            upstream_errors: config
                .upstreams
                .iter()
                .map(|u| {
                    UPSTREAM_ERROR_KINDS
                        .map(|k| metrics.upstream_errors.with_label_values(&[&u.name, k]))
                })
                .collect(),
            routes,
            partners,
            metrics: metrics.clone(),
        }
    }

    /// The process-wide metrics these handles belong to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts one answered request and observes its duration.
    pub fn request(
        &self,
        route: Option<RouteId>,
        partner: Option<PartnerId>,
        status: u16,
        took: Duration,
    ) {
        let r = route.map_or(0, |r| r.0 + 1).min(self.routes.len() - 1);
        let p = partner.map_or(0, |p| p.0 + 1).min(self.partners.len() - 1);
        let class = usize::from(status / 100).clamp(2, 5) - 2;
        let cell = (r * self.partners.len() + p) * STATUS_CLASSES.len() + class;
        if let Some(slot) = self.requests.get(cell) {
            slot.get_or_init(|| {
                self.metrics.requests.with_label_values(&[
                    &*self.routes[r],
                    &*self.partners[p],
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        }
        if let Some(h) = self.durations.get(r) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Counts a refusal under its reason code; upstream failures are not policy denials and are
    /// ignored here.
    pub fn denial(&self, reason: &'static str, partner: Option<PartnerId>) {
        let Some(i) = DENIAL_REASONS.iter().position(|r| *r == reason) else {
            return;
        };
        let p = partner.map_or(0, |p| p.0 + 1).min(self.partners.len() - 1);
        if let Some(slot) = self.denials.get(i * self.partners.len() + p) {
            slot.get_or_init(|| {
                self.metrics
                    .denials
                    .with_label_values(&[DENIAL_REASONS[i], &*self.partners[p]])
            })
            .inc();
        }
    }

    /// Observes the time to an upstream's response head.
    pub fn upstream(&self, upstream: UpstreamId, took: Duration) {
        if let Some(h) = self.upstream_durations.get(upstream.0) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Counts an upstream failure of `kind` (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn upstream_error(&self, upstream: UpstreamId, kind: &'static str) {
        let Some(k) = UPSTREAM_ERROR_KINDS.iter().position(|x| *x == kind) else {
            return;
        };
        if let Some(errors) = self.upstream_errors.get(upstream.0) {
            errors[k].inc();
        }
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("routes", &self.routes.len())
            .field("partners", &self.partners.len())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `index` is each failure's place in `ALL`, which is what the handshake counters are laid
    /// out by: a variant missing from `ALL` (or out of place) has no label to be counted under.
    #[test]
    fn every_handshake_failure_has_its_own_label_and_is_counted_under_it() {
        let m = Metrics::new();
        let mut labels = std::collections::HashSet::new();
        for (i, f) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f:?} is out of place in ALL");
            assert!(labels.insert(f.as_str()), "{} used twice", f.as_str());
            m.handshake(Some(*f), Duration::ZERO);
            let text = m.encode(&ScrapeState::default());
            assert!(
                text.contains(&format!(
                    "certgate_tls_handshakes_total{{result=\"{}\"}} 1",
                    f.as_str()
                )),
                "{f:?} not counted under its label:\n{text}"
            );
        }
    }

    #[test]
    fn every_handshake_result_is_exported_at_zero() {
        let m = Metrics::new();
        let text = m.encode(&ScrapeState::default());
        for r in std::iter::once("ok").chain(HandshakeFailure::ALL.iter().map(|f| f.as_str())) {
            assert!(
                text.contains(&format!(
                    "certgate_tls_handshakes_total{{result=\"{r}\"}} 0"
                )),
                "{r} missing:\n{text}"
            );
        }
        assert!(text.contains("certgate_build_info{version=\""));
    }

    #[test]
    fn every_connection_refusal_is_exported_at_zero_and_counted_under_its_own_reason() {
        let m = Metrics::new();
        for r in ConnRefusal::ALL {
            let line = |n: u32| {
                format!(
                    "certgate_connection_refusals_total{{reason=\"{}\"}} {n}",
                    r.as_str()
                )
            };
            assert!(m.encode(&ScrapeState::default()).contains(&line(0)));
            m.connection_refused(r);
            assert!(
                m.encode(&ScrapeState::default()).contains(&line(1)),
                "{r:?}"
            );
        }
        assert!(m
            .encode(&ScrapeState::default())
            .contains("certgate_connection_limit_reached_total 0"));
    }

    #[test]
    fn expiry_gauge_keeps_a_bounded_number_of_serials() {
        let m = Metrics::new();
        for i in 0..20 {
            m.saw_certificate("acme", &format!("{i:02X}"), 1_900_000_000);
        }
        let text = m.encode(&ScrapeState::default());
        let lines = text
            .lines()
            .filter(|l| l.starts_with("certgate_partner_cert_expiry_timestamp_seconds{"))
            .count();
        assert_eq!(lines, SERIALS_PER_PARTNER);
    }
}
