//! The OCSP answer cache: sync lookups, single-flight async queries, background refresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::request::{CertKey, PreparedRequest};
use super::response::{verify_response, VerifiedResponse};
use super::{
    decide, OcspError, OcspStatus, OcspVerdict, MAX_RESPONSE_SIZE, NO_NEXT_UPDATE_MAX_AGE,
};
use crate::config::model::{Ocsp, OcspMode};

/// Refresh an entry once this fraction of its life has passed (i.e. in its last 20 %).
const REFRESH_AT: f64 = 0.8;

/// Refresh queries running at once, so a burst of entries coming due does not flood the
/// responder or the runtime.
const REFRESH_CONCURRENCY: usize = 4;

/// At most one soft-fail log line per this interval; the counter still counts every allowance.
const SOFT_FAIL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Idle pooled connections to responders are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared cache of OCSP answers for client certificates. Cheap to clone (one `Arc`); all clones
/// share the same entries, in-flight queries and counters.
#[derive(Clone)]
pub struct OcspCache {
    inner: Arc<Inner>,
}

/// A certificate whose OCSP status turned `revoked`, as passed to the hook set with
/// [`OcspCache::set_on_revoked`].
#[derive(Debug, Clone, Copy)]
pub struct OcspRevoked<'a> {
    pub key: CertKey,
    /// The issuer's distinguished name, raw DER.
    pub issuer_dn: &'a [u8],
    /// The certificate's serial, the INTEGER's contents as encoded in the certificate.
    pub serial: &'a [u8],
}

/// A snapshot of the cache's counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OcspCounters {
    /// HTTP requests sent to responders (queries and refreshes).
    pub queries_sent: u64,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Queries that ended without a valid answer.
    pub errors: u64,
    /// Certificates allowed only because of soft-fail.
    pub soft_fail_allowed: u64,
}

type OnRevoked = Box<dyn Fn(&OcspRevoked<'_>) + Send + Sync>;
type FlightFuture = Shared<BoxFuture<'static, Result<OcspStatus, OcspError>>>;

struct Inner {
    responder: Option<String>,
    timeout: Duration,
    max_cache_age: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    entries: DashMap<CertKey, Entry>,
    inflight: DashMap<CertKey, Flight>,
    next_flight: AtomicU64,
    refresh_permits: Arc<Semaphore>,
    on_revoked: ArcSwapOption<OnRevoked>,
    /// Origin of the millisecond timestamps kept in atomics.
    epoch: Instant,
    queries_sent: AtomicU64,
    cache_hits: AtomicU64,
    errors: AtomicU64,
    soft_fail_allowed: AtomicU64,
    /// Counts failed queries into the gateway's metrics, once set.
    failures: std::sync::OnceLock<prometheus::IntCounter>,
    /// Milliseconds since `epoch` of the last soft-fail log line, plus one (0 = never).
    soft_fail_logged: AtomicU64,
}

struct Entry {
    status: OcspStatus,
    fetched_at: Instant,
    expires_at: Instant,
    /// Milliseconds since `Inner::epoch` of the last lookup; decides whether to refresh.
    last_used: AtomicU64,
    request: Arc<PreparedRequest>,
}

struct Flight {
    id: u64,
    result: FlightFuture,
}

// === impl OcspCache ===

impl OcspCache {
    /// A cache for the given settings. `config.mode` is not kept: pass it to [`Self::decide`].
    ///
    /// Needs no runtime to construct; queries and the refresher need a tokio runtime.
    pub fn new(config: &Ocsp) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        // Only plain HTTP: see the module docs.
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                responder: config.responder.clone(),
                timeout: config.timeout,
                max_cache_age: config.max_cache_age,
                client,
                entries: DashMap::new(),
                inflight: DashMap::new(),
                next_flight: AtomicU64::new(0),
                refresh_permits: Arc::new(Semaphore::new(REFRESH_CONCURRENCY)),
                on_revoked: ArcSwapOption::empty(),
                epoch: Instant::now(),
                queries_sent: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                soft_fail_allowed: AtomicU64::new(0),
                failures: std::sync::OnceLock::new(),
                soft_fail_logged: AtomicU64::new(0),
            }),
        }
    }

    /// The cached status of `key` if it is still fresh at `now`.
    ///
    /// For the TLS handshake path: no await, no I/O, no allocation; one shard read lock.
    /// A hit marks the entry as used, which keeps it refreshed in the background.
    pub fn cached(&self, key: &CertKey, now: Instant) -> Option<OcspStatus> {
        let entry = self.inner.entries.get(key)?;
        if entry.expires_at <= now {
            return None;
        }
        entry
            .last_used
            .fetch_max(self.inner.millis(now), Ordering::Relaxed);
        self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.status)
    }

    /// The status of `leaf_der` (issued by `issuer_der`): from the cache when fresh, else from
    /// the responder. Concurrent callers for one certificate share one HTTP exchange, which runs
    /// in its own task and fills the cache even if every caller gives up waiting.
    ///
    /// The exchange is bounded by the configured timeout; callers may add their own deadline.
    ///
    /// # Errors
    /// Bad input certificates, no usable responder, or no valid answer (see [`OcspError`]). An
    /// error is never cached: the next call asks again.
    pub async fn query(&self, leaf_der: &[u8], issuer_der: &[u8]) -> Result<OcspStatus, OcspError> {
        let key = CertKey::from_leaf_der(leaf_der)?;
        if let Some(status) = self.cached(&key, Instant::now()) {
            return Ok(status);
        }
        let flight = match self.inner.inflight.entry(key) {
            MapEntry::Occupied(flight) => flight.get().result.clone(),
            MapEntry::Vacant(slot) => {
                // A flight may have completed between the lookup above and taking this slot.
                if let Some(status) = self.cached(&key, Instant::now()) {
                    return Ok(status);
                }
                let request =
                    PreparedRequest::new(leaf_der, issuer_der, self.inner.responder.as_deref())?;
                let flight = Inner::start_flight(&self.inner, Arc::new(request), None);
                let result = flight.result.clone();
                slot.insert(flight);
                result
            }
        };
        flight.await
    }

    /// The verdict for `result` under `mode` (see [`decide`]), counting and logging (at most
    /// once per 10 s) each certificate allowed only because of soft-fail.
    pub fn decide(&self, mode: OcspMode, result: &Result<OcspStatus, OcspError>) -> OcspVerdict {
        let verdict = decide(mode, result);
        if mode == OcspMode::SoftFail
            && verdict == OcspVerdict::Allow
            && !matches!(result, Ok(OcspStatus::Good))
        {
            let allowed = self.inner.soft_fail_allowed.fetch_add(1, Ordering::Relaxed) + 1;
            if self.inner.should_log_soft_fail(Instant::now()) {
                match result {
                    Err(error) => tracing::warn!(
                        ocsp.error = %error,
                        ocsp.soft_fail_allowed = allowed,
                        "ocsp check failed; certificate allowed under soft_fail"
                    ),
                    Ok(status) => tracing::warn!(
                        ocsp.status = ?status,
                        ocsp.soft_fail_allowed = allowed,
                        "ocsp status not good; certificate allowed under soft_fail"
                    ),
                }
            }
        }
        verdict
    }

    /// Sets the hook called when a query or refresh finds a certificate `revoked` that the cache
    /// did not already hold as revoked, so its live connections can be cut. It runs on a tokio
    /// worker: it must not block (send on a channel or cancel a token).
    pub fn set_on_revoked(&self, hook: impl Fn(&OcspRevoked<'_>) + Send + Sync + 'static) {
        let hook: OnRevoked = Box::new(hook);
        self.inner.on_revoked.store(Some(Arc::new(hook)));
    }

    /// Takes over `previous`'s fresh answers when both ask the same responder (or both each
    /// leaf's AIA URL): a reload that changes other OCSP settings then keeps what it knew until
    /// the answers expire or are refreshed. An answer's lifetime is capped by this cache's
    /// `max_cache_age`, counted from when it was fetched.
    pub fn adopt_from(&self, previous: &OcspCache) {
        if self.inner.responder != previous.inner.responder {
            return;
        }
        let now = Instant::now();
        let used = self.inner.millis(now);
        for entry in previous.inner.entries.iter() {
            let capped = entry
                .fetched_at
                .checked_add(self.inner.max_cache_age)
                .map_or(entry.expires_at, |cap| cap.min(entry.expires_at));
            if capped <= now {
                continue;
            }
            self.inner.entries.entry(*entry.key()).or_insert(Entry {
                status: entry.status,
                fetched_at: entry.fetched_at,
                expires_at: capped,
                last_used: AtomicU64::new(used),
                request: Arc::clone(&entry.request),
            });
        }
    }

    /// Also counts every failed query (for a connection or a refresh) into `failures`; the first
    /// counter set stays.
    pub fn count_failures_into(&self, failures: prometheus::IntCounter) {
        let _ = self.inner.failures.set(failures);
    }

    /// Starts the background refresher, which every `every` re-queries the entries in the last
    /// 20 % of their life that were used within one lifetime, at most four at a time, and drops
    /// expired entries. A failed refresh keeps the old answer until it expires.
    ///
    /// The task ends by itself once every clone of the cache is dropped; abort the handle to
    /// stop it sooner.
    pub fn spawn_refresher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                Inner::refresh_due(&inner, Instant::now());
            }
        })
    }

    /// Number of cached entries, fresh or not yet purged.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    pub fn queries_sent(&self) -> u64 {
        self.inner.queries_sent.load(Ordering::Relaxed)
    }

    pub fn cache_hits(&self) -> u64 {
        self.inner.cache_hits.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    pub fn soft_fail_allowed(&self) -> u64 {
        self.inner.soft_fail_allowed.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> OcspCounters {
        OcspCounters {
            queries_sent: self.queries_sent(),
            cache_hits: self.cache_hits(),
            errors: self.errors(),
            soft_fail_allowed: self.soft_fail_allowed(),
        }
    }
}

impl std::fmt::Debug for OcspCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspCache")
            .field("entries", &self.inner.entries.len())
            .field("inflight", &self.inner.inflight.len())
            .field("counters", &self.counters())
            .finish()
    }
}

// === impl Inner ===

impl Inner {
    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn should_log_soft_fail(&self, now: Instant) -> bool {
        let now_ms = self.millis(now).saturating_add(1);
        let last = self.soft_fail_logged.load(Ordering::Relaxed);
        let every = u64::try_from(SOFT_FAIL_LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now_ms.saturating_sub(last) >= every)
            && self
                .soft_fail_logged
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Spawns the exchange for `request`. The caller inserts the returned flight into
    /// `inflight`; the task removes it (by id, so a newer flight is left alone) when done.
    fn start_flight(
        this: &Arc<Self>,
        request: Arc<PreparedRequest>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Flight {
        let id = this.next_flight.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(this);
        let task = tokio::spawn(async move {
            let _permit = permit;
            let result = match inner.fetch(&request).await {
                Ok(verified) => {
                    inner.store(&request, verified);
                    Ok(verified.status)
                }
                Err(error) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(failures) = inner.failures.get() {
                        failures.inc();
                    }
                    tracing::debug!(ocsp.error = %error, ocsp.url = %request.url(), "ocsp query failed");
                    Err(error)
                }
            };
            inner
                .inflight
                .remove_if(&request.key(), |_, flight| flight.id == id);
            result
        });
        let result = async move { task.await.unwrap_or(Err(OcspError::Aborted)) }
            .boxed()
            .shared();
        Flight { id, result }
    }

    /// One HTTP exchange plus validation, bounded as a whole by the configured timeout.
    async fn fetch(&self, request: &PreparedRequest) -> Result<VerifiedResponse, OcspError> {
        self.queries_sent.fetch_add(1, Ordering::Relaxed);
        let body = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| OcspError::Timeout(self.timeout))??;
        verify_response(request, &body, SystemTime::now())
    }

    async fn exchange(&self, request: &PreparedRequest) -> Result<Bytes, OcspError> {
        let http_request = http::Request::post(request.url().clone())
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(Full::new(request.body.clone()))
            .map_err(|e| OcspError::Http(Arc::new(e)))?;
        let response = self
            .client
            .request(http_request)
            .await
            .map_err(|e| OcspError::Http(Arc::new(e)))?;
        if response.status() != http::StatusCode::OK {
            return Err(OcspError::HttpStatus(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_SIZE)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    OcspError::TooLarge
                } else {
                    OcspError::Http(Arc::from(e))
                }
            })?;
        Ok(body.to_bytes())
    }

    /// Caches a validated answer until min(nextUpdate, now + max_cache_age), and calls the
    /// revocation hook if the certificate newly turned `revoked`.
    fn store(&self, request: &Arc<PreparedRequest>, verified: VerifiedResponse) {
        let now = Instant::now();
        let life = match verified.next_update {
            Some(next) => next
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(self.max_cache_age),
            None => NO_NEXT_UPDATE_MAX_AGE.min(self.max_cache_age),
        };
        let expires_at = now.checked_add(life).unwrap_or(now);
        let key = request.key();
        let last_used = match self.entries.get(&key) {
            // A refresh is not a use: keep the old entry's last use.
            Some(old) => old.last_used.load(Ordering::Relaxed),
            None => self.millis(now),
        };
        let previous = self.entries.insert(
            key,
            Entry {
                status: verified.status,
                fetched_at: now,
                expires_at,
                last_used: AtomicU64::new(last_used),
                request: Arc::clone(request),
            },
        );
        let was_revoked = previous.is_some_and(|old| old.status == OcspStatus::Revoked);
        if verified.status == OcspStatus::Revoked && !was_revoked {
            tracing::info!(
                ocsp.serial = %hex::encode(&request.serial),
                "ocsp: certificate revoked"
            );
            if let Some(hook) = self.on_revoked.load_full() {
                hook(&OcspRevoked {
                    key,
                    issuer_dn: &request.issuer_dn,
                    serial: &request.serial,
                });
            }
        }
    }

    /// Purges expired entries and starts refreshes for the ones due (see
    /// [`OcspCache::spawn_refresher`]).
    fn refresh_due(this: &Arc<Self>, now: Instant) {
        let now_ms = this.millis(now);
        let mut due = Vec::new();
        let mut expired = Vec::new();
        // Read locks only: handshakes keep reading while the scan runs.
        for entry in this.entries.iter() {
            if entry.expires_at <= now {
                expired.push(*entry.key());
                continue;
            }
            let life = entry.expires_at.saturating_duration_since(entry.fetched_at);
            let refresh_from = entry.fetched_at + life.mul_f64(REFRESH_AT);
            let idle = Duration::from_millis(
                now_ms.saturating_sub(entry.last_used.load(Ordering::Relaxed)),
            );
            // A revoked certificate stays revoked: no point asking again.
            if entry.status != OcspStatus::Revoked && now >= refresh_from && idle <= life {
                due.push((*entry.key(), Arc::clone(&entry.request)));
            }
        }
        for key in expired {
            this.entries
                .remove_if(&key, |_, entry| entry.expires_at <= now);
        }
        for (key, request) in due {
            let Ok(permit) = Arc::clone(&this.refresh_permits).try_acquire_owned() else {
                // The rest waits for the next tick.
                break;
            };
            if let MapEntry::Vacant(slot) = this.inflight.entry(key) {
                let flight = Self::start_flight(this, request, Some(permit));
                slot.insert(flight);
            }
        }
    }
}
