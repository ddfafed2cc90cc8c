//! Certificate revocation: CRLs verified once at load, an O(1) lookup for the handshake path, and
//! the registry that ends live connections when their certificate is revoked.
//!
//! # How the pieces are called
//! * A gateway owns one [`RevocationService`] for its whole life. Each configuration generation
//!   asks it for a [`Revocation`] ([`RevocationService::revocation`]): a bundle whose definition
//!   (CA certificates, CRL sources, OCSP settings, policies) is unchanged gets the state it already
//!   has, so loaded CRLs, their fetch schedule and cached OCSP answers outlive a reload. A changed
//!   definition gets fresh state that keeps the old one's CRLs in force until its own sources load.
//! * Before serving: [`Revocation::load`] loads the CRL sources of the states this generation
//!   created and returns each problem with its source (`certgate check` prints them); after the
//!   generation is published, [`Revocation::start`] starts their refresh tasks. A state's tasks
//!   stop when no generation uses it any more, or at [`RevocationService::shutdown`].
//! * TLS verifier, per certificate of the verified path: [`Revocation::check_cert`] (the CRL
//!   [`Checker::check`], the bundle's coverage policy, the OCSP cache): sync, no I/O, no lock, no
//!   allocation. `Revoked` → `certificate_revoked` alert; unknown → refuse (fail closed).
//! * Connection task, after the handshake: [`Registry::register_chain`] first, then the check
//!   again (that order closes the race with a CRL swapped in meanwhile), then race the connection
//!   against [`RevokedSignal::revoked`].
//! * Tests and benchmarks can still build a [`Checker`] alone ([`Checker::new`],
//!   [`Checker::load_initial`], [`Checker::spawn_refresh`]).
//!
//! The OCSP half (`ocsp.rs`) is separate; it can cut connections through [`Registry::revoke`].

// The std mutexes in this module guard load bookkeeping only (one loader per source, status
// reads for the admin API); `Checker::check`, the handshake path, never takes them.
#![allow(clippy::disallowed_types)]

mod counters;
pub mod crl;
mod der;
pub mod fetch;
pub mod live;
pub mod ocsp;
mod signed;
mod state;

pub use counters::{RevocationCounters, RevocationResult, RevocationSource};
pub(crate) use state::certificates_digest;
pub use state::{BundleRevocation, Revocation, RevocationService};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use crate::config::model::{BundleId, CrlExpiredPolicy, CrlSource, TrustBundle};
use crate::error_chain;

pub use crl::{is_whole_tlv, issuer_and_serial, CaKey, CrlError, CrlSet};
pub use fetch::{FetchError, FetchOptions, RefreshTasks};
pub use live::{Guard, Registry, RevokedSignal};

/// The answer for one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A current CRL from this certificate's issuer does not list it.
    Good,
    /// A CRL from this certificate's issuer lists it.
    Revoked,
    /// The bundle has CRLs configured but none usable for this issuer: a source has never loaded
    /// successfully (its CRL might be the one for this issuer), or the issuer's CRL has expired under
    /// `crl_expired: reject`. Also returned for a `BundleId` this checker does not know. Refuse.
    Unknown,
    /// No CRL speaks for this certificate: the bundle has no CRL sources, or every source has
    /// loaded and none of them is from this certificate's issuer (a CRL from issuer A says nothing
    /// about issuer B's certificates). Whether that passes is the bundle's `revocation` scope,
    /// applied by [`Revocation::check_cert`]: by default it does not.
    NotChecked,
}

/// What [`Checker::new`] needs per trust bundle, in [`BundleId`] order.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub name: String,
    /// Every CA certificate of the bundle. A CRL is accepted only if one of these signed it, so
    /// include intermediates whose CRLs are configured.
    pub cas: Vec<CertificateDer<'static>>,
    pub crls: Vec<CrlSource>,
    pub crl_expired: CrlExpiredPolicy,
}

/// The CRL view of every trust bundle of one configuration, indexed by [`BundleId`]. Each bundle's
/// state is shared: a reload that keeps a bundle's definition hands the same state to the next
/// checker (see [`RevocationService`]).
pub struct Checker {
    bundles: Box<[Arc<BundleState>]>,
    registry: Arc<Registry>,
}

/// A source failed to load; the previous good CRL (if any) stays in force.
#[derive(Debug, thiserror::Error)]
#[error("trust bundle {bundle}: CRL source {origin}")]
pub struct CrlLoadError {
    pub bundle: String,
    /// The file path or URL.
    pub origin: String,
    #[source]
    pub cause: LoadFailure,
}

/// Why one load of a source failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    #[error("cannot fetch the CRL")]
    Fetch(#[source] FetchError),
    #[error("invalid CRL")]
    Crl(#[source] CrlError),
    #[error("CRL from {issuer} is older than the one in force (replayed or misordered)")]
    Rollback { issuer: String },
    #[error("the parse task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// [`Checker::from_config`] could not read a bundle's CA file.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("trust bundle {bundle}: cannot read CA file {path}")]
    CaFile {
        bundle: String,
        path: PathBuf,
        #[source]
        cause: rustls_pki_types::pem::Error,
    },
    #[error("trust bundle {bundle}: bad CA certificate")]
    Ca {
        bundle: String,
        #[source]
        cause: CrlError,
    },
}

/// One row of the admin `/status` CRL section: a configured source and what it last produced.
#[derive(Debug, Clone, Serialize)]
pub struct CrlStatus {
    pub bundle: String,
    /// File path or URL.
    pub source: String,
    /// Whether a good CRL from this source is in force.
    pub loaded: bool,
    /// Unix seconds of the last load attempt, successful or not; RFC 3339 in `/status`.
    #[serde(serialize_with = "crate::rfc3339::serialize_option")]
    pub last_attempt: Option<u64>,
    /// Unix seconds of the last successful load; RFC 3339 in `/status`.
    #[serde(serialize_with = "crate::rfc3339::serialize_option")]
    pub last_success: Option<u64>,
    /// The last attempt's error chain, if it failed.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Handshake lookups answered with an expired CRL of this bundle (`allow_with_warning`).
    pub expired_crl_uses: u64,
    pub crls: Vec<CrlInfo>,
}

/// One CRL in force.
#[derive(Debug, Clone, Serialize)]
pub struct CrlInfo {
    pub issuer: String,
    /// Unix seconds; RFC 3339 in `/status`.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub this_update: u64,
    /// Unix seconds; RFC 3339 in `/status`.
    #[serde(serialize_with = "crate::rfc3339::serialize_option")]
    pub next_update: Option<u64>,
    /// Hex.
    pub crl_number: Option<String>,
    pub entries: usize,
    pub expired: bool,
}

/// Successful load summary, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// CRLs in the source.
    pub crls: usize,
    /// Revoked serials across them.
    pub entries: usize,
    /// Live connections signalled because their certificate is now revoked.
    pub connections_cut: usize,
}

/// The CRL state of one trust bundle: its sources, what each last loaded, and the merged view the
/// handshake path reads. Lives as long as the bundle's definition, across reloads.
pub(crate) struct BundleState {
    name: String,
    policy: CrlExpiredPolicy,
    cas: Vec<CaKey>,
    sources: Box<[SourceState]>,
    /// What the handshake path reads: one atomic load.
    current: ArcSwap<BundleCrls>,
    /// The merged CRLs of the definition this one replaced, kept in force for issuers none of
    /// this bundle's sources has produced yet, until every source has loaded once: a changed
    /// source keeps the last good CRL until the new one loads.
    inherited: Mutex<Option<Arc<BundleCrls>>>,
    /// Signalled when a CRL newly revokes a live connection's certificate.
    registry: Arc<Registry>,
    /// `certgate_revocation_source_failures_total{bundle, kind="crl"}`.
    failures: Option<prometheus::IntCounter>,
    /// Serialises loads within the bundle so a merge never loses another source's update.
    update: Mutex<()>,
    expired_uses: AtomicU64,
    /// Unix seconds of the last "expired CRL used" warning: one per minute per bundle at most.
    expired_warned_at: AtomicU64,
}

/// The merged CRLs of one bundle, immutable once published.
#[derive(Default)]
struct BundleCrls {
    by_issuer: HashMap<Box<[u8]>, Arc<CrlSet>>,
    /// Every source has loaded successfully at least once, so an issuer absent here truly has no
    /// CRL configured.
    complete: bool,
}

pub(crate) struct SourceState {
    pub(crate) source: CrlSource,
    pub(crate) origin: String,
    record: Mutex<SourceRecord>,
    /// Last file stamp the poller acted on (files only).
    pub(crate) file_stamp: Mutex<Option<crate::fswatch::FileStamp>>,
}

#[derive(Default, Clone)]
struct SourceRecord {
    /// Last good CRLs of this source, per issuer. A later load that lacks an issuer keeps its old
    /// CRL: last good wins, and an expiring CRL then shows the problem instead of a silent gap.
    crls: HashMap<Box<[u8]>, Arc<CrlSet>>,
    ever_loaded: bool,
    last_attempt: Option<u64>,
    last_success: Option<u64>,
    last_error: Option<String>,
    consecutive_failures: u32,
}

/// How often an "expired CRL in use" warning may repeat per bundle.
const EXPIRED_WARN_EVERY_SECS: u64 = 60;

// === impl Checker ===

impl Checker {
    /// Builds the checker from the validated configuration, reading each bundle's CA file.
    /// No CRL is loaded yet: every bundle with CRL sources answers `Unknown` until
    /// [`Self::load_initial`] (or a refresh task) loads them.
    ///
    /// # Errors
    /// A CA file that cannot be read or holds a malformed certificate.
    pub fn from_config(
        bundles: &[TrustBundle],
        registry: Arc<Registry>,
    ) -> Result<Self, BuildError> {
        let mut specs = Vec::with_capacity(bundles.len());
        for b in bundles {
            let cas = CertificateDer::pem_file_iter(&b.ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|cause| BuildError::CaFile {
                    bundle: b.name.clone(),
                    path: b.ca.clone(),
                    cause,
                })?;
            specs.push(BundleSpec {
                name: b.name.clone(),
                cas,
                crls: b.crls.clone(),
                crl_expired: b.crl_expired,
            });
        }
        Self::new(specs, registry)
    }

    /// Builds the checker from bundles given in [`BundleId`] order.
    ///
    /// # Errors
    /// A malformed CA certificate.
    pub fn new(bundles: Vec<BundleSpec>, registry: Arc<Registry>) -> Result<Self, BuildError> {
        let states = bundles
            .into_iter()
            .map(|spec| BundleState::new(spec, registry.clone(), None).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self::from_states(states, registry))
    }

    /// A checker over bundle states that may be shared with other generations.
    pub(crate) fn from_states(bundles: Vec<Arc<BundleState>>, registry: Arc<Registry>) -> Self {
        Self {
            bundles: bundles.into(),
            registry,
        }
    }

    /// The live-connection registry this checker signals on CRL changes.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Revocation verdict for one certificate, identified by its issuer Name (raw DER) and serial
    /// (big-endian, leading zeros stripped), as [`issuer_and_serial`] returns them.
    ///
    /// Sync, lock-free and allocation-free: one `ArcSwap` load and one hash lookup. See [`Verdict`]
    /// for what each answer means. An expired CRL under `allow_with_warning` is still used; that is
    /// counted in [`Self::status`] and logged at most once a minute per bundle.
    pub fn check(
        &self,
        bundle: BundleId,
        issuer_dn: &[u8],
        serial: &[u8],
        now: UnixTime,
    ) -> Verdict {
        let Some(b) = self.bundles.get(bundle.0) else {
            return Verdict::Unknown;
        };
        if b.sources.is_empty() {
            return Verdict::NotChecked;
        }
        let crls = b.current.load();
        let Some(set) = crls.by_issuer.get(issuer_dn) else {
            return if crls.complete {
                Verdict::NotChecked
            } else {
                Verdict::Unknown
            };
        };
        if set.is_expired(now) {
            match b.policy {
                CrlExpiredPolicy::Reject => return Verdict::Unknown,
                CrlExpiredPolicy::AllowWithWarning => b.note_expired_use(set, now),
            }
        }
        if set.is_revoked(serial) {
            Verdict::Revoked
        } else {
            Verdict::Good
        }
    }

    /// The origin (file path or URL) of the source whose CRL for `issuer_dn` is in force in
    /// `bundle`, if any. For diagnostics such as `certgate inspect`: it takes the bookkeeping
    /// locks, so the handshake path never calls it.
    pub fn crl_origin(&self, bundle: BundleId, issuer_dn: &[u8]) -> Option<&str> {
        let b = self.bundles.get(bundle.0)?;
        let crls = b.current.load();
        let in_force = crls.by_issuer.get(issuer_dn)?;
        b.sources
            .iter()
            .find(|s| {
                lock(&s.record)
                    .crls
                    .get(issuer_dn)
                    .is_some_and(|c| Arc::ptr_eq(c, in_force))
            })
            .map(|s| s.origin.as_str())
    }

    /// Every configured source with its last load result, for the admin JSON.
    pub fn status(&self) -> Vec<CrlStatus> {
        let now = UnixTime::now();
        let mut out = Vec::new();
        for b in self.bundles.iter() {
            let expired_crl_uses = b.expired_uses.load(Ordering::Relaxed);
            for s in b.sources.iter() {
                let rec = lock(&s.record);
                let mut crls: Vec<CrlInfo> = rec
                    .crls
                    .values()
                    .map(|c| CrlInfo {
                        issuer: c.issuer_text().to_owned(),
                        this_update: c.this_update().as_secs(),
                        next_update: c.next_update().map(|t| t.as_secs()),
                        crl_number: c.crl_number().map(hex::encode),
                        entries: c.len(),
                        expired: c.is_expired(now),
                    })
                    .collect();
                crls.sort_by(|a, b| a.issuer.cmp(&b.issuer));
                out.push(CrlStatus {
                    bundle: b.name.clone(),
                    source: s.origin.clone(),
                    loaded: !rec.crls.is_empty(),
                    last_attempt: rec.last_attempt,
                    last_success: rec.last_success,
                    last_error: rec.last_error.clone(),
                    consecutive_failures: rec.consecutive_failures,
                    expired_crl_uses,
                    crls,
                });
            }
        }
        out
    }

    /// Parses `bytes` as the new content of source `source` (index into the bundle's `crls`) of
    /// `bundle`, verifies it, and publishes it, signalling live connections whose certificate it
    /// newly revokes. On any error the previous good CRLs stay in force and the error is recorded
    /// for [`Self::status`]. CPU-heavy for big CRLs: call from `spawn_blocking` in async code.
    ///
    /// Logs the outcome with the source in the message.
    ///
    /// # Errors
    /// The CRL is invalid, not signed by a CA of the bundle, or older than the one in force.
    ///
    /// An unknown bundle or source index loads nothing and returns a zero report.
    pub fn load_bytes(
        &self,
        bundle: BundleId,
        source: usize,
        bytes: &[u8],
    ) -> Result<LoadReport, CrlLoadError> {
        match self.bundles.get(bundle.0) {
            Some(b) => b.load_bytes(source, bytes),
            None => Ok(LoadReport::default()),
        }
    }

    /// The bundle states in [`BundleId`] order.
    pub(crate) fn bundles(&self) -> &[Arc<BundleState>] {
        &self.bundles
    }
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field(
                "bundles",
                &self.bundles.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl BundleState ===

impl BundleState {
    /// Verifies the CA keys; no CRL is loaded yet, so every lookup answers `Unknown` until one is.
    pub(crate) fn new(
        spec: BundleSpec,
        registry: Arc<Registry>,
        failures: Option<prometheus::IntCounter>,
    ) -> Result<Self, BuildError> {
        let cas = CaKey::from_bundle(&spec.cas).map_err(|cause| BuildError::Ca {
            bundle: spec.name.clone(),
            cause,
        })?;
        let sources = spec
            .crls
            .into_iter()
            .map(|source| SourceState {
                origin: origin_of(&source),
                source,
                record: Mutex::default(),
                file_stamp: Mutex::default(),
            })
            .collect();
        Ok(Self {
            name: spec.name,
            policy: spec.crl_expired,
            cas,
            sources,
            current: ArcSwap::from_pointee(BundleCrls::default()),
            inherited: Mutex::new(None),
            registry,
            failures,
            update: Mutex::new(()),
            expired_uses: AtomicU64::new(0),
            expired_warned_at: AtomicU64::new(0),
        })
    }

    /// Starts from what `previous` (the same bundle's former definition, same CA certificates)
    /// has in force: a source with the same origin keeps its CRLs and history, and the previous
    /// merged view covers issuers the new sources have not produced yet. Call before the first
    /// load; the bundle then never fails closed for a CRL the gateway already had.
    pub(crate) fn inherit(&self, previous: &BundleState) {
        let _update = lock(&self.update);
        for s in self.sources.iter() {
            if let Some(p) = previous.sources.iter().find(|p| p.origin == s.origin) {
                let record = lock(&p.record).clone();
                *lock(&s.record) = record;
            }
        }
        *lock(&self.inherited) = Some(previous.current.load_full());
        let merged = Arc::new(self.merged());
        self.current.store(merged);
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn source(&self, source: usize) -> Option<&SourceState> {
        self.sources.get(source)
    }

    pub(crate) fn sources(&self) -> &[SourceState] {
        &self.sources
    }

    /// Whether CRLs are in force and every one has passed its nextUpdate under
    /// `crl_expired: reject`: the bundle then refuses every certificate its CRLs would cover.
    /// (A source that never loaded is reported by [`Checker::status`].)
    pub(crate) fn all_expired(&self, now: UnixTime) -> bool {
        let crls = self.current.load();
        self.policy == CrlExpiredPolicy::Reject
            && !crls.by_issuer.is_empty()
            && crls.by_issuer.values().all(|c| c.is_expired(now))
    }

    /// Parses `bytes` as the new content of source `source`, verifies and publishes it. See
    /// [`Checker::load_bytes`].
    pub(crate) fn load_bytes(
        &self,
        source: usize,
        bytes: &[u8],
    ) -> Result<LoadReport, CrlLoadError> {
        let Some(s) = self.sources.get(source) else {
            return Ok(LoadReport::default());
        };
        match CrlSet::parse_all(bytes, &self.cas)
            .map_err(LoadFailure::Crl)
            .and_then(|sets| self.publish(s, sets))
        {
            Ok(report) => {
                self.record_success(s, report);
                Ok(report)
            }
            Err(cause) => Err(self.record_failure(s, cause)),
        }
    }

    /// The earliest nextUpdate among the CRLs a source currently provides.
    pub(crate) fn earliest_next_update(&self, source: usize) -> Option<UnixTime> {
        let s = self.sources.get(source)?;
        let rec = lock(&s.record);
        rec.crls
            .values()
            .filter_map(|c| c.next_update())
            .min_by_key(|t| t.as_secs())
    }

    /// Merges a source's new CRLs into the bundle and publishes the result.
    fn publish(&self, s: &SourceState, sets: Vec<CrlSet>) -> Result<LoadReport, LoadFailure> {
        let _update = lock(&self.update);
        let mut rec = lock(&s.record);
        for set in &sets {
            if let Some(old) = rec.crls.get(set.issuer()) {
                if set.is_older_than(old) {
                    return Err(LoadFailure::Rollback {
                        issuer: set.issuer_text().to_owned(),
                    });
                }
            }
        }
        let report = LoadReport {
            crls: sets.len(),
            entries: sets.iter().map(CrlSet::len).sum(),
            connections_cut: 0,
        };
        for set in sets {
            rec.crls.insert(set.issuer().into(), Arc::new(set));
        }
        rec.ever_loaded = true;
        drop(rec);
        let merged = Arc::new(self.merged());

        // Cut live connections: walk the (small) registry, look each key up in the new sets.
        // Once before publishing, so no request on a newly revoked connection slips into the
        // moment between the swap and the signal; once after, for a connection that registered
        // meanwhile. Signalling a connection twice is harmless. `update` is held, so the set in
        // force cannot change between the two.
        let before = self.current.load_full();
        let signalled = self.cut_newly_revoked(&merged, &before);
        let previous = self.current.swap(Arc::clone(&merged));
        let connections_cut = signalled.max(self.cut_newly_revoked(&merged, &previous));
        Ok(LoadReport {
            connections_cut,
            ..report
        })
    }

    /// Per issuer, the newest CRL any source has; while some source has never loaded, the
    /// inherited view fills issuers none has produced. Call with `update` held.
    fn merged(&self) -> BundleCrls {
        let mut merged = BundleCrls {
            by_issuer: HashMap::new(),
            complete: true,
        };
        for src in self.sources.iter() {
            let rec = lock(&src.record);
            merged.complete &= rec.ever_loaded;
            for (issuer, set) in &rec.crls {
                match merged.by_issuer.get(issuer) {
                    Some(have) if !have.is_older_than(set) => {}
                    _ => {
                        merged.by_issuer.insert(issuer.clone(), Arc::clone(set));
                    }
                }
            }
        }
        let mut inherited = lock(&self.inherited);
        if merged.complete {
            *inherited = None;
        } else if let Some(old) = inherited.as_ref() {
            for (issuer, set) in &old.by_issuer {
                merged
                    .by_issuer
                    .entry(issuer.clone())
                    .or_insert_with(|| Arc::clone(set));
            }
        }
        merged
    }

    /// Signals every live connection whose certificate `new` revokes; issuers whose CRL object is
    /// the same in `old` are skipped.
    fn cut_newly_revoked(&self, new: &BundleCrls, old: &BundleCrls) -> usize {
        self.registry.revoke_where(|issuer, serial| {
            let Some(set) = new.by_issuer.get(issuer) else {
                return false;
            };
            let unchanged = old
                .by_issuer
                .get(issuer)
                .is_some_and(|prev| Arc::ptr_eq(prev, set));
            !unchanged && set.is_revoked(serial)
        })
    }

    /// Records a successful load for status, and logs it with the source.
    fn record_success(&self, s: &SourceState, report: LoadReport) {
        let mut rec = lock(&s.record);
        let now = UnixTime::now();
        rec.last_attempt = Some(now.as_secs());
        rec.last_success = Some(now.as_secs());
        rec.last_error = None;
        rec.consecutive_failures = 0;
        let expired = rec.crls.values().filter(|c| c.is_expired(now)).count();
        drop(rec);
        tracing::info!(
            crl.bundle = %self.name,
            crl.crls = report.crls,
            crl.entries = report.entries,
            crl.connections_cut = report.connections_cut,
            crl.expired = expired,
            "loaded CRL from {}",
            s.origin
        );
    }

    /// Records a failed load for status and metrics (the last good CRLs stay), logs it, and
    /// returns the error.
    pub(crate) fn record_failure(&self, s: &SourceState, cause: LoadFailure) -> CrlLoadError {
        if let Some(failures) = &self.failures {
            failures.inc();
        }
        let err = CrlLoadError {
            bundle: self.name.clone(),
            origin: s.origin.clone(),
            cause,
        };
        let chain = error_chain(&err);
        let mut rec = lock(&s.record);
        rec.last_attempt = Some(UnixTime::now().as_secs());
        rec.last_error = Some(chain.clone());
        rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
        let kept = rec.crls.len();
        drop(rec);
        tracing::warn!(
            crl.bundle = %self.name,
            crl.kept = kept,
            "CRL load from {} failed, keeping the last good CRL: {}",
            s.origin,
            chain
        );
        err
    }

    fn note_expired_use(&self, set: &CrlSet, now: UnixTime) {
        let uses = self.expired_uses.fetch_add(1, Ordering::Relaxed) + 1;
        let now_s = now.as_secs();
        let last = self.expired_warned_at.load(Ordering::Relaxed);
        if now_s >= last.saturating_add(EXPIRED_WARN_EVERY_SECS)
            && self
                .expired_warned_at
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                crl.bundle = %self.name,
                crl.issuer = %set.issuer_text(),
                crl.next_update = set.next_update().map(|t| crate::rfc3339::from_unix(t.as_secs())),
                crl.expired_uses = uses,
                "using an expired CRL (crl_expired: allow_with_warning)"
            );
        }
    }
}

impl SourceState {
    /// Whether the last attempt failed.
    pub(crate) fn has_failed(&self) -> bool {
        lock(&self.record).last_error.is_some()
    }
}

fn origin_of(source: &CrlSource) -> String {
    match source {
        CrlSource::File(path) => path.display().to_string(),
        CrlSource::Url { url, .. } => url.clone(),
    }
}

/// Locks a mutex that guards only bookkeeping: a panic elsewhere must not wedge CRL loading.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
