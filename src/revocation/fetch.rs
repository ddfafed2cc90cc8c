//! Keeping CRLs fresh: the initial load, then one background task per source.
//!
//! Files are polled (one `stat` and one `canonicalize` every 200 ms) rather than watched with
//! inotify: a poll sees editors' rename-and-replace, Kubernetes' symlink-swapped `..data` Secret
//! mounts and network filesystems alike, with no watcher crate and no lost-event corner cases, and
//! a few stats a second are nothing. URLs (plain `http`, as CRL distribution points are) are
//! fetched with hyper-util's client under a timeout, every `refresh` or sooner when the CRL's
//! nextUpdate comes first. Any failure keeps the last good CRL: see [`Checker::load_bytes`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{lock, BundleState, Checker, CrlLoadError, LoadFailure, LoadReport};
use crate::config::model::CrlSource;

/// Knobs for loading and refreshing. `Default` documents each default.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Whole-request deadline for one URL fetch, body included (default 10s).
    pub http_timeout: Duration,
    /// How often files are stat'ed for changes (default 200ms): a revocation written to a CRL
    /// file, such as the one `certgate partner revoke` publishes, must cut the certificate's
    /// connections within a second, and a stat is cheap enough to do five times a second.
    pub file_poll_interval: Duration,
    /// Shortest wait between two fetches of one URL, even when its CRL's nextUpdate has passed and
    /// the server keeps serving it (default 10s): stops a tight loop against a late CA. It does
    /// not lengthen a source's configured `refresh`.
    pub min_refresh: Duration,
    /// First wait after a failed fetch; doubles per consecutive failure up to the source's
    /// `refresh` (default 30s).
    pub retry_after_failure: Duration,
    /// Largest CRL accepted from a URL (default 128 MiB: a million entries is about 40 MB).
    pub max_crl_bytes: usize,
}

/// The background refresh tasks. They end when the shutdown signal fires; [`Self::join`] waits.
#[derive(Debug)]
pub struct RefreshTasks {
    handles: Vec<JoinHandle<()>>,
}

/// Why a URL fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL")]
    InvalidUrl(#[source] http::uri::InvalidUri),
    #[error("only http:// CRL URLs are supported")]
    UnsupportedScheme,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("server answered {0}")]
    Status(http::StatusCode),
    #[error("reading the body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

// === impl FetchOptions ===

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(10),
            file_poll_interval: Duration::from_millis(200),
            min_refresh: Duration::from_secs(10),
            retry_after_failure: Duration::from_secs(30),
            max_crl_bytes: 128 * 1024 * 1024,
        }
    }
}

// === impl Checker (loading) ===

impl Checker {
    /// Loads every CRL source once, concurrently, and returns every problem with its source.
    /// Sources that fail answer `Unknown` for their bundle until a refresh succeeds.
    pub async fn load_initial(self: &Arc<Self>, opts: &FetchOptions) -> Vec<CrlLoadError> {
        let client = http_client();
        let loads = self.bundles().iter().map(|b| b.load_all(&client, opts));
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Starts one refresh task per source. They stop when `shutdown` becomes `true` (or its sender
    /// is dropped). Call after [`Self::load_initial`]; a task for a source that never loaded
    /// retries on its own schedule.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        opts: FetchOptions,
        shutdown: watch::Receiver<bool>,
    ) -> RefreshTasks {
        let client = http_client();
        let handles = self
            .bundles()
            .iter()
            .flat_map(|b| b.spawn_refresh(&client, &opts, &shutdown))
            .collect();
        RefreshTasks { handles }
    }
}

// === impl BundleState (loading) ===

impl BundleState {
    /// Loads every source of this bundle once, concurrently; returns every problem.
    pub(crate) async fn load_all(
        self: &Arc<Self>,
        client: &HttpClient,
        opts: &FetchOptions,
    ) -> Vec<CrlLoadError> {
        let loads = (0..self.sources().len()).map(|source| load_once(self, client, opts, source));
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// One refresh task per source: files are polled, URLs re-fetched. The tasks hold the state,
    /// not the handle that owns them, and end when `shutdown` flips or its sender is dropped.
    pub(crate) fn spawn_refresh(
        self: &Arc<Self>,
        client: &HttpClient,
        opts: &FetchOptions,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        self.sources()
            .iter()
            .enumerate()
            .map(|(source, state)| {
                let bundle = Arc::clone(self);
                let opts = opts.clone();
                let shutdown = shutdown.clone();
                match &state.source {
                    CrlSource::File(path) => tokio::spawn(poll_file(
                        bundle,
                        client.clone(),
                        opts,
                        shutdown,
                        source,
                        path.clone(),
                    )),
                    CrlSource::Url { refresh, .. } => tokio::spawn(refresh_url(
                        bundle,
                        client.clone(),
                        opts,
                        shutdown,
                        source,
                        *refresh,
                    )),
                }
            })
            .collect()
    }
}

// === impl RefreshTasks ===

impl RefreshTasks {
    /// Waits for every task to end (after the shutdown signal).
    pub async fn join(self) {
        for handle in self.handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "CRL refresh task failed");
            }
        }
    }

    /// Number of tasks (one per configured source).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are no tasks (no CRL sources configured).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// Loads one source once: read or fetch, then parse and publish off the async threads.
async fn load_once(
    bundle: &Arc<BundleState>,
    client: &HttpClient,
    opts: &FetchOptions,
    source: usize,
) -> Result<LoadReport, CrlLoadError> {
    let Some(state) = bundle.source(source) else {
        return Ok(LoadReport::default());
    };
    let bytes = match &state.source {
        CrlSource::File(path) => {
            // Stamp before reading: a change that races the read is seen by the next poll.
            let stamp = crate::fswatch::FileStamp::of(path).await.ok();
            *lock(&state.file_stamp) = stamp;
            tokio::fs::read(path).await.map(Bytes::from).map_err(|e| {
                *lock(&state.file_stamp) = None;
                LoadFailure::Read(e)
            })
        }
        CrlSource::Url { url, .. } => fetch(client, url, opts).await.map_err(LoadFailure::Fetch),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(cause) => return Err(bundle.record_failure(state, cause)),
    };
    let parser = Arc::clone(bundle);
    match tokio::task::spawn_blocking(move || parser.load_bytes(source, &bytes)).await {
        Ok(result) => result,
        Err(e) => Err(bundle.record_failure(state, LoadFailure::Task(e))),
    }
}

/// Polls one file and reloads it whenever its stamp changes.
async fn poll_file(
    bundle: Arc<BundleState>,
    client: HttpClient,
    opts: FetchOptions,
    mut shutdown: watch::Receiver<bool>,
    source: usize,
    path: PathBuf,
) {
    let mut ticker = tokio::time::interval(opts.file_poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped(&mut shutdown) => return,
        }
        let Some(state) = bundle.source(source) else {
            return;
        };
        let stamp = match crate::fswatch::FileStamp::of(&path).await {
            Ok(stamp) => {
                unreadable = false;
                stamp
            }
            Err(e) => {
                if !unreadable {
                    unreadable = true;
                    bundle.record_failure(state, LoadFailure::Read(e));
                }
                continue;
            }
        };
        if lock(&state.file_stamp).as_ref() == Some(&stamp) {
            continue;
        }
        tracing::debug!("CRL file {} changed, reloading", path.display());
        // Errors are logged and recorded by the load itself; the next change retries.
        let _ = load_once(&bundle, &client, &opts, source).await;
    }
}

/// Re-fetches one URL every `refresh`, sooner when the CRL's nextUpdate comes first.
async fn refresh_url(
    bundle: Arc<BundleState>,
    client: HttpClient,
    opts: FetchOptions,
    mut shutdown: watch::Receiver<bool>,
    source: usize,
    refresh: Duration,
) {
    let mut failures: u32 = match bundle.source(source) {
        Some(s) if s.has_failed() => 1,
        _ => 0,
    };
    loop {
        let delay = if failures > 0 {
            let backoff = opts
                .retry_after_failure
                .saturating_mul(1 << (failures - 1).min(10));
            backoff.min(refresh)
        } else {
            next_delay(
                refresh,
                opts.min_refresh,
                bundle.earliest_next_update(source),
                UnixTime::now(),
            )
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut shutdown) => return,
        }
        let result = tokio::select! {
            r = load_once(&bundle, &client, &opts, source) => r,
            () = stopped(&mut shutdown) => return,
        };
        failures = match result {
            Ok(_) => 0,
            Err(_) => failures.saturating_add(1),
        };
    }
}

/// When to fetch next: after `refresh`, or at nextUpdate if that is sooner. `min_refresh` bounds
/// only the nextUpdate shortcut (a CRL past its nextUpdate must not cause a tight loop); a
/// configured `refresh` shorter than it is honoured as written.
fn next_delay(
    refresh: Duration,
    min_refresh: Duration,
    next_update: Option<UnixTime>,
    now: UnixTime,
) -> Duration {
    let until_next = next_update
        .map(|t| Duration::from_secs(t.as_secs().saturating_sub(now.as_secs())))
        .unwrap_or(refresh);
    refresh.min(until_next.max(min_refresh))
}

/// Resolves when shutdown is requested or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `url` under the timeout, requiring 200 and a body no larger than the limit.
async fn fetch(client: &HttpClient, url: &str, opts: &FetchOptions) -> Result<Bytes, FetchError> {
    let uri: http::Uri = url.parse().map_err(FetchError::InvalidUrl)?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        return Err(FetchError::UnsupportedScheme);
    }
    let request = async {
        let response = client.get(uri).await.map_err(FetchError::Request)?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), opts.max_crl_bytes);
        let collected = body.collect().await.map_err(FetchError::Body)?;
        Ok(collected.to_bytes())
    };
    tokio::time::timeout(opts.http_timeout, request)
        .await
        .map_err(|_| FetchError::Timeout(opts.http_timeout))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn refresh_comes_sooner_when_next_update_is_near_but_not_in_a_tight_loop() {
        let hour = Duration::from_secs(3600);
        let min = Duration::from_secs(10);
        assert_eq!(next_delay(hour, min, None, at(1000)), hour);
        assert_eq!(
            next_delay(hour, min, Some(at(1100)), at(1000)),
            Duration::from_secs(100)
        );
        assert_eq!(next_delay(hour, min, Some(at(900)), at(1000)), min);
        assert_eq!(next_delay(hour, min, Some(at(100_000)), at(1000)), hour);
        // A configured refresh below `min_refresh` is what the operator asked for.
        let second = Duration::from_secs(1);
        assert_eq!(next_delay(second, min, None, at(1000)), second);
        assert_eq!(next_delay(second, min, Some(at(900)), at(1000)), second);
    }
}
