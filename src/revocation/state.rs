//! [`RevocationService`] owns revocation state for the life of the process, one
//! [`BundleRevocation`] per trust-bundle definition (its CRLs, their fetch schedule, its OCSP
//! cache). [`Revocation`] is one configuration's view of it — shared handles indexed by bundle —
//! behind the two questions the data path asks: "may this chain pass the handshake?" (sync,
//! cache-only) and "what does OCSP say?" (async, once per connection).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use x509_parser::prelude::FromDer;

use super::counters::{RevocationCounters, RevocationResult, RevocationSource};
use super::der::strip_leading_zeros;
use super::ocsp::{
    CertKey, OcspCache, OcspCounters, OcspError, OcspStatus, OcspVerdict, PreparedRequest,
    RefuseReason,
};
use super::{
    issuer_and_serial, BuildError, BundleSpec, BundleState, Checker, CrlLoadError, FetchOptions,
    Registry, Verdict,
};
use crate::config::model::{
    BundleId, Coverage, CrlExpiredPolicy, CrlSource, Ocsp, OcspMode, RevocationScope, TrustBundle,
    UnknownIssuer,
};

/// How often OCSP caches look for entries to refresh before they expire.
const OCSP_REFRESH_TICK: Duration = Duration::from_secs(10);

struct BundleOcsp {
    cache: OcspCache,
    mode: OcspMode,
    timeout: Duration,
    /// The configured responder URL; `None` means each leaf's AIA URL.
    responder: Option<String>,
    /// The bundle's CA certificates by subject (raw DER Name), to find a leaf's issuer when the
    /// client sent no intermediate.
    issuers: HashMap<Vec<u8>, CertificateDer<'static>>,
}

impl BundleOcsp {
    /// The leaf's issuer certificate: the chain's second certificate, or the bundle CA whose
    /// subject is the leaf's issuer when the client sent no intermediate.
    fn issuer_of<'a>(&'a self, chain: &'a [CertificateDer<'_>]) -> Option<&'a [u8]> {
        match chain.get(1) {
            Some(intermediate) => Some(intermediate.as_ref()),
            None => issuer_and_serial(chain.first()?)
                .and_then(|(issuer, _)| self.issuers.get(issuer))
                .map(|ca| ca.as_ref()),
        }
    }

    /// Asks the responder (or joins the in-flight query) under the configured timeout.
    async fn query(&self, chain: &[CertificateDer<'_>]) -> Result<OcspStatus, OcspError> {
        let (Some(leaf), Some(issuer)) = (chain.first(), self.issuer_of(chain)) else {
            return Err(OcspError::NoResponder);
        };
        tokio::time::timeout(self.timeout, self.cache.query(leaf, issuer))
            .await
            .unwrap_or(Err(OcspError::Timeout(self.timeout)))
    }
}

/// The revocation-relevant definition of one trust bundle. Two generations with the same
/// definition share one [`BundleRevocation`]; anything that changes a lookup's answer is part of
/// it, so a shared state never answers for a definition it was not built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BundleKey {
    name: String,
    /// SHA-256 over the bundle's CA certificates (DER, in file order).
    cas: [u8; 32],
    crls: Vec<CrlSource>,
    crl_expired: CrlExpiredPolicy,
    ocsp: Option<Ocsp>,
    scope: RevocationScope,
}

/// The revocation state of one trust-bundle definition: its CRLs and their fetch schedule, its
/// OCSP cache. It lives as long as some generation uses the definition, so a reload that keeps
/// the definition keeps the state; dropping the last handle stops its background tasks.
pub struct BundleRevocation {
    key: BundleKey,
    crl: Arc<BundleState>,
    ocsp: Option<BundleOcsp>,
    scope: RevocationScope,
    /// A CRL source or OCSP is configured: the bundle's chains need statuses.
    configured: bool,
    /// The initial load has been done (by the generation that created this state).
    loaded: AtomicBool,
    /// Background tasks have been started.
    started: AtomicBool,
    /// Flips to `true` (or is dropped with this state) to stop the refresh tasks.
    stop: watch::Sender<bool>,
    /// CRL refresh tasks and the OCSP refresher.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for BundleRevocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleRevocation")
            .field("bundle", &self.key.name)
            .finish_non_exhaustive()
    }
}

impl BundleRevocation {
    fn build(
        b: &TrustBundle,
        cas: &[CertificateDer<'static>],
        registry: &Arc<Registry>,
        counters: Option<&RevocationCounters>,
    ) -> Result<Self, BuildError> {
        let key = BundleKey {
            name: b.name.clone(),
            cas: certificates_digest(cas),
            crls: b.crls.clone(),
            crl_expired: b.crl_expired,
            ocsp: b.ocsp.clone().filter(|o| o.mode != OcspMode::Off),
            scope: b.revocation,
        };
        let crl = BundleState::new(
            BundleSpec {
                name: b.name.clone(),
                cas: cas.to_vec(),
                crls: b.crls.clone(),
                crl_expired: b.crl_expired,
            },
            registry.clone(),
            counters
                .filter(|_| !b.crls.is_empty())
                .map(|c| c.source_failures(&b.name, RevocationSource::Crl)),
        )?;
        let ocsp = key.ocsp.as_ref().map(|config| {
            let cache = OcspCache::new(config);
            if let Some(c) = counters {
                cache.count_failures_into(c.source_failures(&b.name, RevocationSource::Ocsp));
            }
            let hook_registry = registry.clone();
            cache.set_on_revoked(move |r| {
                let cut = hook_registry.revoke(r.issuer_dn, strip_leading_zeros(r.serial));
                tracing::warn!(
                    connections = cut,
                    "OCSP reports a certificate revoked; its live connections are cut"
                );
            });
            let issuers = cas
                .iter()
                .filter_map(|ca| {
                    let (_, parsed) =
                        x509_parser::certificate::X509Certificate::from_der(ca).ok()?;
                    Some((parsed.subject().as_raw().to_vec(), ca.clone()))
                })
                .collect();
            BundleOcsp {
                cache,
                mode: config.mode,
                timeout: config.timeout,
                responder: config.responder.clone(),
                issuers,
            }
        });
        let (stop, _) = watch::channel(false);
        Ok(Self {
            configured: !b.crls.is_empty() || ocsp.is_some(),
            scope: b.revocation,
            key,
            crl: Arc::new(crl),
            ocsp,
            loaded: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stop,
            tasks: std::sync::Mutex::default(),
        })
    }

    /// Whether `unknown_issuer` and `coverage` demand a status for this certificate: a leaf always
    /// (unless OCSP answers for it), an intermediate under `full_chain`.
    fn requires_status(&self, leaf: bool) -> bool {
        self.configured
            && self.scope.unknown_issuer == UnknownIssuer::Reject
            && if leaf {
                self.ocsp.is_none()
            } else {
                self.scope.coverage == Coverage::FullChain
            }
    }

    /// Starts the CRL refresh tasks and the OCSP refresher, once.
    fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = super::fetch::http_client();
        let mut tasks =
            self.crl
                .spawn_refresh(&client, &FetchOptions::default(), &self.stop.subscribe());
        if let Some(o) = &self.ocsp {
            tasks.push(o.cache.spawn_refresher(OCSP_REFRESH_TICK));
        }
        *self.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
    }

    /// Stops the background tasks and waits for them to end.
    async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for BundleRevocation {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Process-lifetime owner of revocation state, keyed by trust-bundle definition, plus the
/// live-connection registry. Every configuration generation asks it for its bundles
/// ([`Self::revocation`]): an unchanged definition gets the existing shared state (loaded CRLs,
/// fetch schedule, OCSP cache), so a reload never forgets what the gateway already knew.
pub struct RevocationService {
    registry: Arc<Registry>,
    counters: Arc<RevocationCounters>,
    /// Weak, so a definition no generation uses any more is dropped and its tasks stop. The
    /// number says which state of a bundle is the newest.
    entries: std::sync::Mutex<HashMap<BundleKey, (u64, Weak<BundleRevocation>)>>,
    created: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RevocationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationService").finish_non_exhaustive()
    }
}

impl RevocationService {
    /// A service counting into `counters` (the gateway's metrics).
    pub fn new(registry: Arc<Registry>, counters: Arc<RevocationCounters>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            counters,
            entries: std::sync::Mutex::default(),
            created: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A service with its own registry and unregistered counters: for one-off builds
    /// (`certgate check`, `inspect`).
    pub fn detached() -> Arc<Self> {
        Self::new(Registry::new(), RevocationCounters::detached())
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The revocation state for one configuration: `cas[i]` holds bundle `i`'s CA certificates,
    /// as the TLS trust store loaded them. A bundle whose definition is in use already shares
    /// that state; a new definition gets fresh state that, when the same bundle (same name and
    /// CA certificates) had one before, starts from what that one has in force.
    ///
    /// # Errors
    /// A CA certificate the CRL verifier cannot use.
    pub fn revocation(
        &self,
        bundles: &[TrustBundle],
        cas: &[Vec<CertificateDer<'static>>],
    ) -> Result<Revocation, BuildError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (_, e)| e.strong_count() > 0);
        let mut shared = Vec::with_capacity(bundles.len());
        for (b, cas) in bundles.iter().zip(cas) {
            let fresh = BundleRevocation::build(b, cas, &self.registry, Some(&self.counters))?;
            if let Some(existing) = entries.get(&fresh.key).and_then(|(_, e)| e.upgrade()) {
                shared.push(existing);
                continue;
            }
            // The newest loaded state of the same bundle (an older generation may still be
            // pinned by connections).
            let predecessor = entries
                .iter()
                .filter(|(k, _)| k.name == fresh.key.name && k.cas == fresh.key.cas)
                .filter_map(|(_, (n, e))| Some((*n, e.upgrade()?)))
                .filter(|(_, e)| e.loaded.load(Ordering::Acquire))
                .max_by_key(|(n, _)| *n)
                .map(|(_, e)| e);
            if let Some(previous) = predecessor {
                fresh.crl.inherit(&previous.crl);
                if let (Some(new), Some(old)) = (&fresh.ocsp, &previous.ocsp) {
                    new.cache.adopt_from(&old.cache);
                }
            }
            let fresh = Arc::new(fresh);
            let n = self.created.fetch_add(1, Ordering::Relaxed);
            entries.insert(fresh.key.clone(), (n, Arc::downgrade(&fresh)));
            shared.push(fresh);
        }
        drop(entries);
        Ok(Revocation::from_shared(
            shared,
            self.registry.clone(),
            self.counters.clone(),
        ))
    }

    /// Stops every state's background tasks (gateway shutdown) and waits for them.
    pub async fn shutdown(&self) {
        let live: Vec<_> = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|(_, e)| e.upgrade())
            .collect();
        for e in live {
            e.stop().await;
        }
    }
}

/// Revocation state for every trust bundle of one configuration: shared handles into the
/// process-lifetime [`BundleRevocation`]s, indexed by [`BundleId`].
pub struct Revocation {
    crl: Arc<Checker>,
    bundles: Box<[Arc<BundleRevocation>]>,
    registry: Arc<Registry>,
    counters: Arc<RevocationCounters>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field(
                "ocsp_bundles",
                &self.bundles.iter().filter(|b| b.ocsp.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl Revocation {
    /// Fresh revocation state for `bundles`, shared with nothing: for tests and one-off checks.
    /// A gateway builds through [`RevocationService::revocation`] instead. `cas[i]` holds bundle
    /// `i`'s CA certificates, as the TLS trust store loaded them.
    ///
    /// # Errors
    /// A CA certificate the CRL verifier cannot use.
    pub fn new(
        bundles: &[TrustBundle],
        cas: &[Vec<CertificateDer<'static>>],
        registry: Arc<Registry>,
    ) -> Result<Self, BuildError> {
        let shared = bundles
            .iter()
            .zip(cas)
            .map(|(b, cas)| BundleRevocation::build(b, cas, &registry, None).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_shared(
            shared,
            registry,
            RevocationCounters::detached(),
        ))
    }

    fn from_shared(
        bundles: Vec<Arc<BundleRevocation>>,
        registry: Arc<Registry>,
        counters: Arc<RevocationCounters>,
    ) -> Self {
        let crl = Arc::new(Checker::from_states(
            bundles.iter().map(|b| b.crl.clone()).collect(),
            registry.clone(),
        ));
        Self {
            crl,
            bundles: bundles.into(),
            registry,
            counters,
        }
    }

    /// Counts checks into `counters` (the gateway's metrics) instead of detached ones.
    #[must_use]
    pub fn with_counters(mut self, counters: Arc<RevocationCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// OCSP answers cached across bundles.
    pub fn ocsp_cache_entries(&self) -> usize {
        self.ocsps().map(|o| o.cache.len()).sum()
    }

    /// The OCSP caches' counters, summed across bundles.
    pub fn ocsp_counters(&self) -> OcspCounters {
        self.ocsps()
            .map(|o| o.cache.counters())
            .fold(OcspCounters::default(), |a, c| OcspCounters {
                queries_sent: a.queries_sent + c.queries_sent,
                cache_hits: a.cache_hits + c.cache_hits,
                errors: a.errors + c.errors,
                soft_fail_allowed: a.soft_fail_allowed + c.soft_fail_allowed,
            })
    }

    /// Whether any bundle has an OCSP cache.
    pub fn has_ocsp(&self) -> bool {
        self.ocsps().next().is_some()
    }

    pub fn crl(&self) -> &Arc<Checker> {
        &self.crl
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Loads the CRL sources of every bundle state this generation created (shared states were
    /// loaded by the generation that created them and keep refreshing); returns every problem
    /// with its source. Until a source has loaded, certificates of its bundle fail closed, unless
    /// the bundle's previous definition had a CRL for their issuer.
    pub async fn load(&self) -> Vec<CrlLoadError> {
        let client = super::fetch::http_client();
        let opts = FetchOptions::default();
        let loads = self
            .bundles
            .iter()
            .filter(|b| !b.loaded.swap(true, Ordering::AcqRel))
            .map(|b| b.crl.load_all(&client, &opts));
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Starts CRL refresh (file polling, URL fetching) and OCSP pre-expiry refresh for the bundle
    /// states that are not running yet. They run until no generation uses their state, or until
    /// [`RevocationService::shutdown`].
    pub fn start(&self) {
        for b in self.bundles.iter() {
            b.start();
        }
    }

    /// Why this generation's revocation cannot vouch for partners, per bundle: every CRL in force
    /// has expired under `crl_expired: reject`. (Sources that never loaded are in
    /// [`Checker::status`].) Empty when every bundle can answer.
    pub fn unready_reasons(&self, now: UnixTime) -> Vec<String> {
        self.bundles
            .iter()
            .filter(|b| b.crl.all_expired(now))
            .map(|b| {
                format!(
                    "trust bundle {}: every CRL in force is past its nextUpdate (crl_expired: reject), so its partners are refused",
                    b.crl.name()
                )
            })
            .collect()
    }

    /// The CA certificates of each bundle that no CRL in force comes from, for `certgate check`:
    /// under `unknown_issuer: reject` every certificate such a CA issues is refused as
    /// `revocation_unknown` (leaves excepted when OCSP is configured, intermediates under
    /// `coverage: leaf_only`). Call after [`Self::load`]. Each item is `(bundle, CA subject)`.
    pub fn issuers_without_source(
        &self,
        cas: &[Vec<CertificateDer<'static>>],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for ((i, b), cas) in self.bundles.iter().enumerate().zip(cas) {
            if !b.requires_status(false) && !b.requires_status(true) {
                continue;
            }
            for ca in cas {
                let Ok((_, parsed)) = x509_parser::certificate::X509Certificate::from_der(ca)
                else {
                    continue;
                };
                if self
                    .crl
                    .crl_origin(BundleId(i), parsed.subject().as_raw())
                    .is_none()
                {
                    out.push((b.crl.name().to_owned(), parsed.subject().to_string()));
                }
            }
        }
        out
    }

    /// Handshake path, per certificate of the verified path below the trust anchor: the CRL
    /// lookup, and for the leaf the OCSP cache. Sync, no I/O, no allocation. An OCSP cache miss
    /// passes here and is settled by [`Revocation::check_ocsp`] before the connection serves any
    /// request. A certificate whose issuer no configured source covers is refused when the
    /// bundle's `coverage` includes it and `unknown_issuer` is `reject`.
    ///
    /// # Errors
    /// `Revoked`; `UnknownRevocationStatus` when a configured source cannot answer or none covers
    /// the certificate (fail closed).
    pub fn check_cert(
        &self,
        bundle: BundleId,
        cert: &[u8],
        leaf: bool,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        self.check_one(bundle, cert, leaf, true, now)
    }

    /// [`Self::check_cert`] for a certificate the client presented beside the leaf, outside a
    /// verified path (the connection's re-check after the handshake, which also runs for resumed
    /// sessions): a CRL that lists it or a source that never loaded refuses it, but no coverage is
    /// demanded, since it may be the trust anchor itself or an unrelated extra certificate. The
    /// handshake has already demanded coverage for the path it verified.
    ///
    /// # Errors
    /// As [`Self::check_cert`].
    pub fn check_presented(
        &self,
        bundle: BundleId,
        cert: &[u8],
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        self.check_one(bundle, cert, false, false, now)
    }

    fn check_one(
        &self,
        bundle: BundleId,
        cert: &[u8],
        leaf: bool,
        on_path: bool,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let (issuer, serial) = issuer_and_serial(cert).ok_or(CertificateError::BadEncoding)?;
        let count = |result| self.counters.count(RevocationSource::Crl, result);
        let Some(state) = self.bundles.get(bundle.0) else {
            count(RevocationResult::Unknown);
            return Err(CertificateError::UnknownRevocationStatus);
        };
        match self.crl.check(bundle, issuer, serial, now) {
            Verdict::NotChecked if on_path && state.requires_status(leaf) => {
                count(RevocationResult::Unknown);
                return Err(CertificateError::UnknownRevocationStatus);
            }
            Verdict::NotChecked => {}
            Verdict::Good => count(RevocationResult::Good),
            Verdict::Revoked => {
                count(RevocationResult::Revoked);
                return Err(CertificateError::Revoked);
            }
            Verdict::Unknown => {
                count(RevocationResult::Unknown);
                return Err(CertificateError::UnknownRevocationStatus);
            }
        }
        if !leaf {
            return Ok(());
        }
        let Some(ocsp) = state.ocsp.as_ref() else {
            return Ok(());
        };
        let key = ocsp_key(cert).ok_or(CertificateError::BadEncoding)?;
        match ocsp.cache.cached(&key, Instant::now()) {
            None => Ok(()),
            Some(status) => {
                self.counters
                    .count(RevocationSource::Ocsp, RevocationResult::CacheHit);
                verdict_to_result(ocsp.cache.decide(ocsp.mode, &Ok(status)))
            }
        }
    }

    /// Whether the leaf still needs an OCSP answer before the connection may serve requests.
    pub fn needs_ocsp(&self, bundle: BundleId, leaf: &[u8]) -> bool {
        let Some(ocsp) = self.ocsp_for(bundle) else {
            return false;
        };
        ocsp_key(leaf).is_none_or(|key| ocsp.cache.cached(&key, Instant::now()).is_none())
    }

    /// Connection path: asks the responder (or joins the in-flight query for the same
    /// certificate) under the configured timeout, and applies the bundle's OCSP mode.
    ///
    /// # Errors
    /// `Revoked`, or `UnknownRevocationStatus` under `hard_fail` when no valid answer came.
    pub async fn check_ocsp(
        &self,
        bundle: BundleId,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), CertificateError> {
        let Some(ocsp) = self.ocsp_for(bundle) else {
            return Ok(());
        };
        if chain.is_empty() {
            return Err(CertificateError::BadEncoding);
        }
        let result = ocsp.query(chain).await;
        self.counters.count(
            RevocationSource::Ocsp,
            match &result {
                Ok(OcspStatus::Good) => RevocationResult::Good,
                Ok(OcspStatus::Revoked) => RevocationResult::Revoked,
                Ok(OcspStatus::Unknown) => RevocationResult::Unknown,
                Err(_) => RevocationResult::Error,
            },
        );
        if let Err(e) = &result {
            tracing::warn!(error = %e, mode = ?ocsp.mode, "no valid OCSP answer for a client certificate");
        }
        verdict_to_result(ocsp.cache.decide(ocsp.mode, &result))
    }

    /// What the bundle's OCSP responder says about the chain's leaf, without applying the
    /// soft/hard-fail mode: for diagnostics such as `certgate inspect`. Uses and fills the cache
    /// like [`Self::check_ocsp`]. `None` when the bundle has no OCSP configured; otherwise the
    /// responder URL asked (when one could be determined) and its answer.
    pub async fn query_ocsp(
        &self,
        bundle: BundleId,
        chain: &[CertificateDer<'_>],
    ) -> Option<(Option<String>, Result<OcspStatus, OcspError>)> {
        let ocsp = self.ocsp_for(bundle)?;
        let url = match (chain.first(), ocsp.issuer_of(chain)) {
            (Some(leaf), Some(issuer)) => {
                PreparedRequest::new(leaf.as_ref(), issuer, ocsp.responder.as_deref())
                    .ok()
                    .map(|r| r.url().to_string())
            }
            _ => None,
        };
        Some((url, ocsp.query(chain).await))
    }

    /// The live-connection keys of a chain: `(issuer, serial)` of every certificate.
    pub fn chain_keys<'a>(
        chain: &'a [CertificateDer<'_>],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        chain.iter().filter_map(|c| issuer_and_serial(c.as_ref()))
    }

    fn ocsp_for(&self, bundle: BundleId) -> Option<&BundleOcsp> {
        self.bundles.get(bundle.0).and_then(|b| b.ocsp.as_ref())
    }

    fn ocsps(&self) -> impl Iterator<Item = &BundleOcsp> + '_ {
        self.bundles.iter().filter_map(|b| b.ocsp.as_ref())
    }
}

/// The OCSP cache key: issuer Name and the serial exactly as encoded (what the responder is asked).
fn ocsp_key(cert: &[u8]) -> Option<CertKey> {
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).ok()?;
    let (issuer, _) = issuer_and_serial(cert)?;
    Some(CertKey::new(issuer, ee.serial()))
}

/// SHA-256 over certificates in order, each prefixed by its length: equal only for the same
/// certificates in the same order. The CA part of a [`BundleKey`], and the key of a client's
/// presented chain (`proxy::presented`).
pub(crate) fn certificates_digest(certs: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for cert in certs {
        hash.update((cert.len() as u64).to_be_bytes());
        hash.update(cert.as_ref());
    }
    hash.finalize().into()
}

fn verdict_to_result(verdict: OcspVerdict) -> Result<(), CertificateError> {
    match verdict {
        OcspVerdict::Allow => Ok(()),
        OcspVerdict::Refuse(RefuseReason::Revoked) => Err(CertificateError::Revoked),
        OcspVerdict::Refuse(RefuseReason::Unknown) => {
            Err(CertificateError::UnknownRevocationStatus)
        }
    }
}
