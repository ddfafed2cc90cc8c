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
//! * lifecycle evidence: onboarding lead times and time to revoke from the registry facts of a
//!   published generation ([`Metrics::set_registry`], [`Metrics::observe_revocations`]), the
//!   issued → first call and enrolled → first sandbox call lead times when [`Handles::accepted`]
//!   sees a partner's first call, and from the state folder at every usage flush (`runtime`):
//!   partners without traffic and the registry's publish status.
//! * `onboarding`: refused enrolment submissions by error code, and the registry's enrolment
//!   tokens (issued, used, expired), counted by the enrolment API of the same process.
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

use crate::config::model::{Config, PartnerId, RegistryFacts, ScopeId, UpstreamId};
use crate::config::published::PublishStatus;
use crate::conn_refusal::ConnRefusal;
use crate::enrolment_code::Code as EnrolmentCode;
use crate::policy::RouteId;
use crate::refusal::Refusal;
use crate::revocation::{RevocationCounters, RevocationSource};
use crate::tls::handshake::HandshakeFailure;
use crate::tls::server::{ServedCertificate, DEFAULT_SNI};
use crate::upstream::UpstreamErrorKind;
use crate::usage::{Accepted, CallOutcome, Usage, UsageTable};

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

/// The `result` of `certgate_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new generation was built and published.
    Applied,
    /// The new configuration was invalid; the old generation stays in service.
    Rejected,
}

impl ReloadResult {
    /// Every result, in declaration order; a unit test fails when a variant is missing.
    pub const ALL: [Self; 2] = [Self::Applied, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
        }
    }
}

/// Request and upstream latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Onboarding lead-time buckets, seconds: a minute to two months.
const LEAD_TIME_BUCKETS: [f64; 12] = [
    60.0,
    300.0,
    900.0,
    3600.0,
    14_400.0,
    43_200.0,
    86_400.0,
    259_200.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
    5_184_000.0,
];
/// Time-to-revoke buckets, seconds (the registry's revocation time has one-second resolution).
const REVOKE_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// `within` label values of `certgate_registry_certificates_expiring` and their seconds.
const EXPIRY_WINDOWS: [(&str, i64); 2] = [("7d", 7 * 86_400), ("30d", 30 * 86_400)];
/// A partner without accepted traffic for this long counts in `certgate_partners_without_traffic`.
pub const IDLE_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// Handshake duration buckets, seconds.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What happened to enrolment tokens: the `event` label of `certgate_onboarding_tokens_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEvent {
    /// An invitation handed one out.
    Issued,
    /// It was traded for an enrolment request.
    Used,
    /// It expired unused.
    Expired,
}

/// How many enrolment tokens the registry holds in each state; see [`Metrics::set_tokens`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub issued: u64,
    pub used: u64,
    pub expired: u64,
}

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
    handshakes_queued: IntGauge,
    handshake_queue_duration: Histogram,
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
    /// In [`ReloadResult::ALL`] order.
    reloads: [IntCounter; ReloadResult::ALL.len()],
    last_reload_success: Gauge,
    ops: OpsMetrics,
    /// Scope usage slots: process-lifetime like the counters, recorded through [`Handles`].
    usage: Arc<Usage>,
    lifecycle: LifecycleMetrics,
}

/// The partner lifecycle's evidence: onboarding lead times, time to revoke, certificates about to
/// expire, idle partners and publication failures.
struct LifecycleMetrics {
    registered_to_approved: Histogram,
    approved_to_issued: Histogram,
    issued_to_first_call: Histogram,
    enrolled_to_first_call: Histogram,
    first_call_to_production: Histogram,
    /// In [`EnrolmentCode::ALL`] order.
    enrolments_failed: [IntCounter; EnrolmentCode::ALL.len()],
    /// In [`TokenEvent::ALL`] order.
    tokens: [IntCounter; TokenEvent::ALL.len()],
    time_to_revoke: Histogram,
    /// In [`EXPIRY_WINDOWS`] order; set at scrape time from the registered certificates.
    expiring: [IntGauge; 2],
    partners_idle: IntGauge,
    publish_failures: IntCounter,
    publish_pending: IntGauge,
    /// Partner id → which lead times this process has observed (bit 0: registered→approved,
    /// bit 1: approved→issued, bit 2: first call→production), so each partner counts once per
    /// process.
    onboarding_seen: DashMap<Box<str>, u8>,
    /// Revocations (partner, time) taken in: `Some(when applied)` until observed, `None` after.
    /// The first generation's revocations predate this process and are never observed.
    revocations: DashMap<(Box<str>, i64), Option<std::time::Instant>>,
    started: std::sync::atomic::AtomicBool,
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
    /// The control plane a gateway mirrors (`lifecycle.source`), set at scrape time.
    source_up: IntGaugeVec,
    source_last_success: GaugeVec,
    source_generation: IntGaugeVec,
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

/// Decrements its gauge (`certgate_connections_active`, `certgate_connections_parked` or
/// `certgate_tls_handshakes_queued`) when dropped.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

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
    /// Per upstream × [`UpstreamErrorKind::ALL`].
    upstream_errors: Box<[[IntCounter; UpstreamErrorKind::ALL.len()]]>,
    /// `refusal * partners.len() + (partner + 1)`, where `refusal` is the position in
    /// [`Refusal::ALL`], resolved on first use. Refusals sharing a reason code share its series.
    denials: Box<[OnceLock<IntCounter>]>,
    /// Scope usage slots, by partner id.
    usage: UsageTable,
    /// The scope each route needs, by route id.
    route_scopes: Box<[ScopeId]>,
    /// When each partner's first certificate was issued (Unix seconds), by partner id.
    issued_at: Box<[Option<i64>]>,
    /// When each partner's enrolment request was submitted (Unix seconds), by partner id.
    enrolled_at: Box<[Option<i64>]>,
}

// === impl TokenEvent ===

impl TokenEvent {
    pub const ALL: [TokenEvent; 3] = [Self::Issued, Self::Used, Self::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Used => "used",
            Self::Expired => "expired",
        }
    }
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
                "Upstream exchanges that failed, by upstream and kind (connect, timeout, exchange, client_body).",
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
        let handshakes_queued = IntGauge::new(
            "certgate_tls_handshakes_queued",
            "Handshakes with bytes to work on, waiting for one of max_concurrent_handshakes slots.",
        )?;
        let handshake_queue_duration = Histogram::with_opts(
            HistogramOpts::new(
                "certgate_tls_handshake_queue_seconds",
                "Time from a handshake's bytes arriving to its getting a slot.",
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
            Box::new(handshakes_queued.clone()),
            Box::new(handshake_queue_duration.clone()),
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
        let lifecycle = LifecycleMetrics::register(&registry)?;
        Ok(Arc::new(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            handshakes,
            handshake_duration,
            handshakes_queued,
            handshake_queue_duration,
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
            reloads: ReloadResult::ALL.map(|r| reloads.with_label_values(&[r.as_str()])),
            last_reload_success,
            ops,
            usage: Usage::new(),
            lifecycle,
        }))
    }

    /// The scope usage slots every generation records into.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
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

    /// Counts a handshake waiting for a slot until the guard drops.
    pub fn handshake_queued(&self) -> GaugeGuard {
        self.handshakes_queued.inc();
        GaugeGuard(self.handshakes_queued.clone())
    }

    /// A handshake got its slot after waiting `waited` (zero when one was free).
    pub fn handshake_slot_taken(&self, waited: Duration) {
        self.handshake_queue_duration.observe(waited.as_secs_f64());
    }

    /// Counts an open connection until the guard drops.
    pub fn connection(&self) -> GaugeGuard {
        self.connections_active.inc();
        GaugeGuard(self.connections_active.clone())
    }

    /// Counts a parked connection until the guard drops.
    pub fn parked(&self) -> GaugeGuard {
        self.connections_parked.inc();
        GaugeGuard(self.connections_parked.clone())
    }

    /// Handshakes finished, successful or not, since start.
    pub fn handshakes_done(&self) -> u64 {
        self.handshake_duration.get_sample_count()
    }

    pub fn connections_parked(&self) -> i64 {
        self.connections_parked.get()
    }

    pub fn connections_active(&self) -> i64 {
        self.connections_active.get()
    }

    /// Counts a connection ended because its client crossed a limit or broke the protocol.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.connection_refusals[reason.index()].inc();
    }

    /// Counts the accept loop finding every connection permit taken.
    pub fn connection_limit_reached(&self) {
        self.connection_limit_reached.inc();
    }

    /// Whether a connection of `partner` presented the certificate with `serial` (hex, any case)
    /// in the last [`SEEN_WINDOW`], as far as this process saw.
    pub fn seen_certificate(&self, partner: &str, serial: &str) -> bool {
        let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
        let wanted = norm(serial);
        self.seen_certs
            .get(partner)
            .is_some_and(|certs| certs.iter().any(|c| norm(&c.serial) == wanted))
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
        self.reloads[ReloadResult::Applied as usize].inc();
        self.loaded_now();
    }

    pub fn reload_rejected(&self) {
        self.reloads[ReloadResult::Rejected as usize].inc();
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
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let registered = self.ops.registered_certs.load();
        for (gauge, (_, window)) in self.lifecycle.expiring.iter().zip(EXPIRY_WINDOWS) {
            let n = registered
                .iter()
                .filter(|c| c.not_after <= now + window)
                .count();
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for c in registered.iter() {
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

        self.ops.source_up.reset();
        self.ops.source_last_success.reset();
        self.ops.source_generation.reset();
        if let Some(s) = &scrape.lifecycle_source {
            let labels = [s.source.as_str()];
            self.ops
                .source_up
                .with_label_values(&labels)
                .set(i64::from(s.up));
            if let Some(t) = s.last_success {
                self.ops
                    .source_last_success
                    .with_label_values(&labels)
                    .set(t as f64);
            }
            if let Some(g) = s.generation {
                self.ops.source_generation.with_label_values(&labels).set(g);
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

// === impl Metrics: lifecycle evidence ===

impl Metrics {
    /// Takes in what a newly published generation knows from the lifecycle registry: observes
    /// the onboarding lead times of partners this process has not observed yet, and the time to
    /// revoke of partners newly left without a valid certificate (revoke time → the last request
    /// this process accepted from them, 0 when none came after). Called when a generation is
    /// published, never per connection.
    pub fn set_registry(&self, registry: &RegistryFacts) {
        let l = &self.lifecycle;
        for p in &registry.partners {
            let mut seen = l.onboarding_seen.entry(p.id.as_str().into()).or_insert(0);
            if *seen & 1 == 0 {
                if let (Some(r), Some(a)) = (p.registered_at, p.approved_at) {
                    l.registered_to_approved.observe((a - r).max(0) as f64);
                    *seen |= 1;
                }
            }
            if *seen & 2 == 0 {
                if let (Some(a), Some(i)) = (p.approved_at, p.first_issued_at) {
                    l.approved_to_issued.observe((i - a).max(0) as f64);
                    *seen |= 2;
                }
            }
            if *seen & 4 == 0 {
                let first = self
                    .usage
                    .first_call(&p.id)
                    .and_then(|f| i64::try_from(f).ok());
                if let (Some(f), Some(promoted)) = (first, p.promoted_at) {
                    l.first_call_to_production
                        .observe((promoted - f).max(0) as f64);
                    *seen |= 4;
                }
            }
        }
        let first = !l.started.swap(true, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        for r in &registry.revocations {
            l.revocations
                .entry((Box::from(r.partner.as_str()), r.revoked_at))
                .or_insert((!first).then_some(now));
        }
    }

    /// Observes the time to revoke of revocations applied at least `settle` ago: by then the
    /// partner's open connections have been cut, so its last accepted request is final.
    pub fn observe_revocations(&self, settle: Duration) {
        let l = &self.lifecycle;
        for mut entry in l.revocations.iter_mut() {
            let Some(applied) = *entry.value() else {
                continue;
            };
            if applied.elapsed() < settle {
                continue;
            }
            let (partner, revoked_at) = entry.key();
            let last_ms = self
                .usage
                .last_call_ms(partner)
                .and_then(|ms| i64::try_from(ms).ok())
                .unwrap_or(0);
            let after = (last_ms - revoked_at.saturating_mul(1000)).max(0);
            l.time_to_revoke.observe(after as f64 / 1000.0);
            *entry.value_mut() = None;
        }
    }

    /// Counts an enrolment submission the enrolment API refused with `code`.
    pub fn enrolment_failed(&self, code: EnrolmentCode) {
        if let Some(i) = EnrolmentCode::ALL.iter().position(|c| *c == code) {
            self.lifecycle.enrolments_failed[i].inc();
        }
    }

    /// Takes in the registry's token counts: each counter moves up to its count, never down (a
    /// registry's invitations are never removed, so a lower count is another registry's view).
    pub fn set_tokens(&self, counts: TokenCounts) {
        for (event, counter) in TokenEvent::ALL.iter().zip(&self.lifecycle.tokens) {
            let n = match event {
                TokenEvent::Issued => counts.issued,
                TokenEvent::Used => counts.used,
                TokenEvent::Expired => counts.expired,
            };
            let have = counter.get();
            if n > have {
                counter.inc_by(n - have);
            }
        }
    }

    /// Sets the number of registry partners with no accepted request within [`IDLE_WINDOW`].
    pub fn set_partners_without_traffic(&self, n: usize) {
        self.lifecycle
            .partners_idle
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Takes in the state folder's publish status: the failure counter moves up to its count
    /// (never down: a removed file starts counting again from this process's value).
    pub fn set_publish_status(&self, status: &PublishStatus) {
        let l = &self.lifecycle;
        let counted = l.publish_failures.get();
        if status.failures > counted {
            l.publish_failures.inc_by(status.failures - counted);
        }
        l.publish_pending.set(i64::from(status.pending));
    }
}

// === impl LifecycleMetrics ===

impl LifecycleMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let lead = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LEAD_TIME_BUCKETS.to_vec()))
        };
        let registered_to_approved = lead(
            "certgate_onboarding_registered_to_approved_seconds",
            "Registration to approval of registry partners, each partner observed once per gateway process when it loads the partner table.",
        )?;
        let approved_to_issued = lead(
            "certgate_onboarding_approved_to_issued_seconds",
            "Approval to first certificate of registry partners, each observed once per gateway process.",
        )?;
        let issued_to_first_call = lead(
            "certgate_onboarding_issued_to_first_call_seconds",
            "First certificate to first accepted request of registry partners, observed by the gateway that sees the first call.",
        )?;
        let enrolled_to_first_call = lead(
            "certgate_onboarding_enrolled_to_first_sandbox_call_seconds",
            "Enrolment request submitted to first accepted (sandbox) request of partners that came through the enrolment API, observed by the gateway that sees the first call.",
        )?;
        let first_call_to_production = lead(
            "certgate_onboarding_first_sandbox_call_to_production_seconds",
            "First accepted (sandbox) request to promotion into production, each partner observed once per gateway process that knows its first call.",
        )?;
        let failed_vec = IntCounterVec::new(
            Opts::new(
                "certgate_onboarding_enrolments_failed_total",
                "Enrolment submissions the enrolment API refused, by its error code.",
            ),
            &["reason"],
        )?;
        let enrolments_failed =
            EnrolmentCode::ALL.map(|c| failed_vec.with_label_values(&[c.as_str()]));
        let tokens_vec = IntCounterVec::new(
            Opts::new(
                "certgate_onboarding_tokens_total",
                "Enrolment tokens in the registry that were issued, used, or expired unused, as the enrolment API of this process last counted them.",
            ),
            &["event"],
        )?;
        let tokens = TokenEvent::ALL.map(|e| tokens_vec.with_label_values(&[e.as_str()]));
        let time_to_revoke = Histogram::with_opts(
            HistogramOpts::new(
                "certgate_time_to_revoke_seconds",
                "Revocation that left a partner without a valid certificate to the last request this gateway accepted from it (0 when none came after).",
            )
            .buckets(REVOKE_BUCKETS.to_vec()),
        )?;
        let expiring_vec = IntGaugeVec::new(
            Opts::new(
                "certgate_registry_certificates_expiring",
                "Valid lifecycle registry certificates whose notAfter is within the window (expired ones included).",
            ),
            &["within"],
        )?;
        let expiring = EXPIRY_WINDOWS.map(|(w, _)| expiring_vec.with_label_values(&[w]));
        let partners_idle = IntGauge::new(
            "certgate_partners_without_traffic",
            "Registry partners approved over 30 days ago with no accepted request in the last 30 days, from the usage records of every gateway sharing the state folder.",
        )?;
        let publish_failures = IntCounter::new(
            "certgate_registry_publish_failures_total",
            "Registry changes or republications whose CRL and partner table could not be written, as recorded in the state folder.",
        )?;
        let publish_pending = IntGauge::new(
            "certgate_registry_publish_pending",
            "1 when the latest publication failed: a recorded change (a revocation, say) is not in force yet; run `certgate registry publish`.",
        )?;
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(registered_to_approved.clone()),
            Box::new(approved_to_issued.clone()),
            Box::new(issued_to_first_call.clone()),
            Box::new(enrolled_to_first_call.clone()),
            Box::new(first_call_to_production.clone()),
            Box::new(failed_vec),
            Box::new(tokens_vec),
            Box::new(time_to_revoke.clone()),
            Box::new(expiring_vec),
            Box::new(partners_idle.clone()),
            Box::new(publish_failures.clone()),
            Box::new(publish_pending.clone()),
        ];
        for c in collectors {
            registry.register(c)?;
        }
        Ok(Self {
            registered_to_approved,
            approved_to_issued,
            issued_to_first_call,
            enrolled_to_first_call,
            first_call_to_production,
            enrolments_failed,
            tokens,
            time_to_revoke,
            expiring,
            partners_idle,
            publish_failures,
            publish_pending,
            onboarding_seen: DashMap::new(),
            revocations: DashMap::new(),
            started: std::sync::atomic::AtomicBool::new(false),
        })
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
        let source_up = IntGaugeVec::new(
            Opts::new(
                "certgate_lifecycle_source_up",
                "1 when the last exchange with the control plane (lifecycle.source) succeeded, 0 \
                 while the gateway serves its last copy of the partner table and CRL.",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_up.clone()))?;
        let source_last_success = GaugeVec::new(
            Opts::new(
                "certgate_lifecycle_source_last_success_timestamp_seconds",
                "When the control plane (lifecycle.source) last answered (Unix seconds).",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_last_success.clone()))?;
        let source_generation = IntGaugeVec::new(
            Opts::new(
                "certgate_lifecycle_source_generation",
                "The generation (CRL number) of the control plane's publication in service.",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_generation.clone()))?;
        Ok(Self {
            server_cert_expiry,
            server_cert_names: ArcSwap::from_pointee(Vec::new()),
            registered_certs: ArcSwap::from_pointee(Vec::new()),
            source_up,
            source_last_success,
            source_generation,
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
    /// The control plane a gateway mirrors, when `lifecycle.source` is set.
    pub lifecycle_source: Option<LifecycleSourceScrape>,
}

/// The mirror of a control plane's publication, as a scrape reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSourceScrape {
    /// `http://host:port`, from the configuration.
    pub source: String,
    pub up: bool,
    /// Unix seconds.
    pub last_success: Option<u64>,
    pub generation: Option<i64>,
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
            let labels = [
                s.bundle.as_str(),
                RevocationSource::Crl.as_str(),
                s.source.as_str(),
            ];
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

// === impl GaugeGuard ===

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Handles ===

impl Handles {
    /// Resolves the per-route, per-upstream handles of `config` (the request and denial matrices
    /// are resolved cell by cell on first use).
    pub fn build(metrics: &Arc<Metrics>, config: &Config) -> Self {
        let facts: std::collections::HashMap<&str, &crate::config::model::RegisteredPartner> =
            config
                .registry
                .partners
                .iter()
                .map(|p| (p.id.as_str(), p))
                .collect();
        let fact = |id: &str, f: fn(&crate::config::model::RegisteredPartner) -> Option<i64>| {
            facts.get(id).and_then(|p| f(p))
        };
        Self {
            usage: UsageTable::build(&metrics.usage, config),
            route_scopes: config.routes.iter().map(|r| r.scope).collect(),
            issued_at: config
                .partners
                .iter()
                .map(|p| fact(&p.id, |r| r.first_issued_at))
                .collect(),
            enrolled_at: config
                .partners
                .iter()
                .map(|p| fact(&p.id, |r| r.enrolled_at))
                .collect(),
            ..Self::named(
                metrics,
                config.routes.iter().map(|r| r.name.as_str()),
                config.partners.iter().map(|p| p.id.as_str()),
                config.upstreams.iter().map(|u| u.name.as_str()),
            )
        }
    }

    fn named<'a>(
        metrics: &Arc<Metrics>,
        routes: impl Iterator<Item = &'a str>,
        partners: impl Iterator<Item = &'a str>,
        upstreams: impl Iterator<Item = &'a str> + Clone,
    ) -> Self {
        let routes: Box<[Box<str>]> = std::iter::once(NO_ROUTE)
            .chain(routes)
            .map(Box::from)
            .collect();
        let partners: Box<[Box<str>]> = std::iter::once(UNKNOWN_PARTNER)
            .chain(partners)
            .map(Box::from)
            .collect();
        let cells = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        Self {
            requests: cells(routes.len() * partners.len() * STATUS_CLASSES.len()),
            denials: cells(Refusal::ALL.len() * partners.len()),
            usage: UsageTable::default(),
            route_scopes: Box::default(),
            issued_at: Box::default(),
            enrolled_at: Box::default(),
            durations: routes
                .iter()
                .map(|r| metrics.request_duration.with_label_values(&[r.as_ref()]))
                .collect(),
            upstream_durations: upstreams
                .clone()
                .map(|u| metrics.upstream_duration.with_label_values(&[u]))
                .collect(),
            upstream_errors: upstreams
                .map(|u| {
                    UpstreamErrorKind::ALL
                        .map(|k| metrics.upstream_errors.with_label_values(&[u, k.as_str()]))
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

    /// Counts a refusal under its reason code; upstream failures are not policy denials
    /// (`certgate_upstream_errors_total` counts them) and are ignored here.
    pub fn denial(&self, refusal: Refusal, partner: Option<PartnerId>) {
        if refusal.is_upstream_failure() {
            return;
        }
        let Some(i) = Refusal::ALL.iter().position(|r| *r == refusal) else {
            return;
        };
        let p = partner.map_or(0, |p| p.0 + 1).min(self.partners.len() - 1);
        if let Some(slot) = self.denials.get(i * self.partners.len() + p) {
            slot.get_or_init(|| {
                self.metrics
                    .denials
                    .with_label_values(&[refusal.as_str(), &*self.partners[p]])
            })
            .inc();
        }
    }

    /// Records a request of `partner` that policy accepted on a route needing `scope`.
    /// The partner's first accepted call (as far as this process and the usage file know)
    /// observes the issued → first call lead time.
    pub fn accepted(&self, partner: PartnerId, scope: ScopeId) -> Option<Accepted> {
        let accepted = self.usage.accepted(partner, scope)?;
        if accepted.first {
            let at = i64::try_from(accepted.at).unwrap_or(i64::MAX);
            let lifecycle = &self.metrics.lifecycle;
            if let Some(issued) = self.issued_at.get(partner.0).copied().flatten() {
                lifecycle
                    .issued_to_first_call
                    .observe((at - issued).max(0) as f64);
            }
            // An enrolled partner is granted sandbox routes only until promoted, and promotion
            // needs sandbox calls: its first accepted call is a sandbox call.
            if let Some(enrolled) = self.enrolled_at.get(partner.0).copied().flatten() {
                lifecycle
                    .enrolled_to_first_call
                    .observe((at - enrolled).max(0) as f64);
            }
        }
        Some(accepted)
    }

    /// Counts a finished call of `partner` on `route` for the promotion evidence: `refused` when
    /// the gateway refused it, otherwise by the status it was answered with. Calls that matched
    /// no route need no scope and are not counted.
    pub fn call(
        &self,
        route: Option<RouteId>,
        partner: Option<PartnerId>,
        refused: bool,
        status: u16,
    ) {
        let (Some(route), Some(partner)) = (route, partner) else {
            return;
        };
        let Some(scope) = self.route_scopes.get(route.0) else {
            return;
        };
        let outcome = if refused {
            CallOutcome::Refused
        } else if status < 400 {
            CallOutcome::Ok
        } else {
            CallOutcome::Other
        };
        self.usage.call(partner, *scope, outcome);
    }

    /// Observes the time to an upstream's response head.
    pub fn upstream(&self, upstream: UpstreamId, took: Duration) {
        if let Some(h) = self.upstream_durations.get(upstream.0) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Counts an upstream failure of `kind`.
    pub fn upstream_error(&self, upstream: UpstreamId, kind: UpstreamErrorKind) {
        if let Some(errors) = self.upstream_errors.get(upstream.0) {
            errors[kind.index()].inc();
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
    fn every_enrolment_code_and_token_event_is_exported_at_zero_and_counted() {
        let labels = assert_all_lists_every_variant!(TokenEvent:
            TokenEvent::Issued,
            TokenEvent::Used,
            TokenEvent::Expired,
        );
        assert_eq!(labels.len(), TokenEvent::ALL.len());
        let labels = assert_all_lists_every_variant!(EnrolmentCode:
            EnrolmentCode::BadRequest,
            EnrolmentCode::BodyTooLarge,
            EnrolmentCode::RequestTimeout,
            EnrolmentCode::RateLimited,
            EnrolmentCode::NotFound,
            EnrolmentCode::MethodNotAllowed,
            EnrolmentCode::InvalidToken,
            EnrolmentCode::TokenUsed,
            EnrolmentCode::TokenExpired,
            EnrolmentCode::PartnerNotEnrollable,
            EnrolmentCode::FieldTooLong,
            EnrolmentCode::CsrUnparseable,
            EnrolmentCode::CsrBadSignature,
            EnrolmentCode::CsrWeakKey,
            EnrolmentCode::CsrUnsupportedKey,
            EnrolmentCode::CsrIdentityMismatch,
            EnrolmentCode::ClientCertificateRequired,
            EnrolmentCode::CertificateNotValid,
            EnrolmentCode::RenewalUnavailable,
            EnrolmentCode::Internal,
        );
        assert_eq!(labels.len(), EnrolmentCode::ALL.len(), "codes are distinct");
        let m = Metrics::new();
        let text = m.encode(&ScrapeState::default());
        for code in EnrolmentCode::ALL {
            let line = format!(
                "certgate_onboarding_enrolments_failed_total{{reason=\"{}\"}} 0",
                code.as_str()
            );
            assert!(text.contains(&line), "{line}");
        }
        m.enrolment_failed(EnrolmentCode::CsrWeakKey);
        m.set_tokens(TokenCounts {
            issued: 3,
            used: 2,
            expired: 1,
        });
        // A lower count never moves a counter back.
        m.set_tokens(TokenCounts {
            issued: 2,
            used: 2,
            expired: 0,
        });
        let text = m.encode(&ScrapeState::default());
        for line in [
            "certgate_onboarding_enrolments_failed_total{reason=\"csr_weak_key\"} 1",
            "certgate_onboarding_tokens_total{event=\"issued\"} 3",
            "certgate_onboarding_tokens_total{event=\"used\"} 2",
            "certgate_onboarding_tokens_total{event=\"expired\"} 1",
        ] {
            assert!(text.contains(line), "{line}");
        }
    }

    #[test]
    fn every_reload_result_is_in_all_and_exported_at_zero() {
        let labels = assert_all_lists_every_variant!(ReloadResult:
            ReloadResult::Applied,
            ReloadResult::Rejected,
        );
        assert_eq!(labels.len(), ReloadResult::ALL.len());
        let m = Metrics::new();
        for (i, r) in ReloadResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of place in ALL");
            let line = format!(
                "certgate_config_reloads_total{{result=\"{}\"}} 0",
                r.as_str()
            );
            assert!(m.encode(&ScrapeState::default()).contains(&line), "{r:?}");
        }
        m.reload_rejected();
        assert!(m
            .encode(&ScrapeState::default())
            .contains("certgate_config_reloads_total{result=\"rejected\"} 1"));
    }

    #[test]
    fn every_refusal_but_an_upstream_failure_is_counted_as_a_denial_under_its_reason() {
        let m = Metrics::new();
        let handles = Handles::named(
            &m,
            std::iter::empty(),
            ["acme"].into_iter(),
            ["orders"].into_iter(),
        );
        for r in Refusal::ALL {
            let count = || m.denials.with_label_values(&[r.as_str(), "acme"]).get();
            if r.is_upstream_failure() {
                handles.denial(r, Some(PartnerId(0)));
                continue;
            }
            let before = count();
            handles.denial(r, Some(PartnerId(0)));
            assert_eq!(count(), before + 1, "{r:?}");
        }
        let text = m.encode(&ScrapeState::default());
        assert!(!text.contains("reason=\"upstream_"), "{text}");
    }

    #[test]
    fn every_upstream_error_kind_is_exported_at_zero_and_counted_under_its_own_kind() {
        let m = Metrics::new();
        let handles = Handles::named(
            &m,
            std::iter::empty(),
            std::iter::empty(),
            ["orders"].into_iter(),
        );
        for k in UpstreamErrorKind::ALL {
            let line = |n: u32| {
                format!(
                    "certgate_upstream_errors_total{{kind=\"{}\",upstream=\"orders\"}} {n}",
                    k.as_str()
                )
            };
            assert!(
                m.encode(&ScrapeState::default()).contains(&line(0)),
                "{k:?}"
            );
            handles.upstream_error(UpstreamId(0), k);
            assert!(
                m.encode(&ScrapeState::default()).contains(&line(1)),
                "{k:?}"
            );
        }
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
