//! A gateway's copy of the control plane's publication (`lifecycle.source`).
//!
//! The mirror long-polls `/generation`; when the generation differs from the copy's, it fetches
//! the CA certificate, the partner table and the CRL with `If-None-Match`, and only when all
//! three answers name the same generation (behind a load balancer they may come from replicas
//! a moment apart) writes each changed file into the gateway's state folder (temporary name,
//! then rename, in the publisher's order: CA, partners, CRL). From there the configuration watcher reloads the partner table and the CRL
//! poller swaps the CRL and cuts revoked connections, as for a local registry.
//!
//! When the control plane cannot be reached, the files stay as they are: the gateway keeps
//! serving the last good copy, retries every [`RETRY`] (with jitter, so replicas do not come back
//! in step), and reports it in `/status` (`lifecycle_source`) and the
//! `certgate_lifecycle_source_up` gauge.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::{crl_path, etag, CA_PATH, GENERATION_PATH, LONG_POLL, PARTNERS_PATH};
use crate::config::model::Endpoint;
use crate::config::published::{PublishedPartners, StateDir};
use crate::lifecycle::publish::{write_atomically, PublishError};

/// The pause after a failed exchange (± [`JITTER`]), and the feed's polling interval when it
/// answers at once.
pub const RETRY: Duration = Duration::from_secs(1);
/// Up to this much is added to or taken from every pause.
const JITTER: Duration = Duration::from_millis(250);
/// Deadline for one file fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest file accepted (a partner table of some 100 000 partners fits).
const MAX_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("GET {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url}: not a generation answer")]
    BadGeneration { url: String },
    #[error("{url}: not a partner table")]
    BadPartners {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url}: generation {served} is older than the copy's {held}; keeping the copy")]
    Older { url: String, served: i64, held: i64 },
    #[error("{url}: generation {served}, but {first} for the files before it (replicas a moment apart); fetching again")]
    Torn {
        url: String,
        served: i64,
        first: i64,
    },
    #[error(transparent)]
    Write(#[from] PublishError),
}

/// The mirror's state, for `/status` and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// `http://host:port` of the control plane.
    pub source: String,
    /// The last exchange with the control plane succeeded.
    pub up: bool,
    /// The generation (CRL number) of the copy in service; `None` before the first copy.
    pub generation: Option<i64>,
    /// When the control plane last answered (Unix seconds).
    #[serde(serialize_with = "crate::rfc3339::serialize_option")]
    pub last_success: Option<u64>,
    /// Why the last exchange failed, while it is down.
    pub last_error: Option<String>,
}

/// Shared view of a [`Mirror`]'s state; the mirror task is its only writer.
#[derive(Debug)]
pub struct SourceState(ArcSwap<SourceStatus>);

impl SourceState {
    pub fn get(&self) -> Arc<SourceStatus> {
        self.0.load_full()
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Copies a control plane's publication into a state folder.
#[derive(Debug)]
pub struct Mirror {
    base: String,
    crl_path: String,
    state: StateDir,
    client: HttpClient,
    /// ETags of the local files: CA, partners, CRL.
    etags: [Option<String>; 3],
    generation: Option<i64>,
    status: Arc<SourceState>,
}

// === impl Mirror ===

impl Mirror {
    /// A mirror of `source` into `state`, taking the files already there as its copy.
    pub fn new(source: &Endpoint, bundle: &str, state: StateDir) -> Self {
        let base = format!("http://{}", source.authority);
        let local = |p: std::path::PathBuf| std::fs::read(p).ok();
        let etags =
            [state.ca_cert(), state.partners(), state.crl()].map(|p| local(p).map(|b| etag(&b)));
        let generation = local(state.partners())
            .and_then(|b| serde_json::from_slice::<PublishedPartners>(&b).ok())
            .map(|t| t.crl_number);
        let status = Arc::new(SourceState(ArcSwap::from_pointee(SourceStatus {
            source: base.clone(),
            up: false,
            generation,
            last_success: None,
            last_error: None,
        })));
        let mut connector = HttpConnector::new();
        connector.enforce_http(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            base,
            crl_path: crl_path(bundle),
            state,
            client: Client::builder(TokioExecutor::new()).build(connector),
            etags,
            generation,
            status,
        }
    }

    pub fn status(&self) -> Arc<SourceState> {
        self.status.clone()
    }

    /// Whether the state folder holds a complete copy (CA, partner table, CRL) to serve from.
    pub fn has_copy(&self) -> bool {
        self.etags.iter().all(Option::is_some)
    }

    /// Fetches the three files, writing those that changed. Returns the copy's generation.
    ///
    /// # Errors
    /// The control plane did not answer well, or a file cannot be written; the files written
    /// before that stay (each is whole, and each is at least as new as the one it replaced).
    pub async fn sync(&mut self) -> Result<i64, MirrorError> {
        let result = self.sync_inner().await;
        self.record(&result);
        result
    }

    async fn sync_inner(&mut self) -> Result<i64, MirrorError> {
        let targets = [
            (CA_PATH.to_owned(), self.state.ca_cert()),
            (PARTNERS_PATH.to_owned(), self.state.partners()),
            (self.crl_path.clone(), self.state.crl()),
        ];
        // Fetch all three before writing any: a CRL older than the partner table it came with
        // could lack a revocation, and the copy would then claim a generation it does not hold.
        let mut first: Option<i64> = None;
        let mut fetched = Vec::with_capacity(targets.len());
        for (i, (path, file)) in targets.into_iter().enumerate() {
            let url = format!("{}{path}", self.base);
            let (generation, bytes) = self.fetch(&url, self.etags[i].as_deref()).await?;
            match (first, generation) {
                (Some(first), Some(served)) if served != first => {
                    return Err(MirrorError::Torn { url, served, first })
                }
                (None, Some(_)) => first = generation,
                _ => {}
            }
            fetched.push((i, url, file, bytes));
        }
        let mut generation = self.generation;
        for (i, url, _, bytes) in &fetched {
            let (1, Some(bytes)) = (i, bytes) else {
                continue;
            };
            let table: PublishedPartners =
                serde_json::from_slice(bytes).map_err(|source| MirrorError::BadPartners {
                    url: url.clone(),
                    source,
                })?;
            // Never replace a copy by an older one (another replica, not yet caught up):
            // the older CRL could lack a revocation the copy has.
            if let Some(held) = self.generation.filter(|held| table.crl_number < *held) {
                return Err(MirrorError::Older {
                    url: url.clone(),
                    served: table.crl_number,
                    held,
                });
            }
            generation = Some(table.crl_number);
        }
        for (i, _, file, bytes) in fetched {
            let Some(bytes) = bytes else {
                continue;
            };
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|source| PublishError::Write {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            write_atomically(&file, &bytes)?;
            self.etags[i] = Some(etag(&bytes));
        }
        self.generation = generation;
        Ok(self.generation.unwrap_or(0))
    }

    /// Until a copy is in place: sync, retrying every [`RETRY`]. With a copy already in the
    /// state folder (a restarted gateway), one attempt, then the copy serves.
    pub async fn first_sync(&mut self) {
        loop {
            match self.sync().await {
                Ok(generation) => {
                    tracing::info!(source = %self.base, generation, "lifecycle copy is current");
                    return;
                }
                Err(e) if self.has_copy() => {
                    tracing::warn!(source = %self.base, error = %crate::error_chain(&e), "control plane unreachable: serving the last copy");
                    return;
                }
                Err(e) => {
                    tracing::warn!(source = %self.base, error = %crate::error_chain(&e), "control plane unreachable and no copy yet: retrying");
                    tokio::time::sleep(jittered(RETRY)).await;
                }
            }
        }
    }

    /// Follows the feed until the task is dropped.
    pub async fn run(mut self) {
        loop {
            // After a failure, ask without waiting: the status says "up" as soon as the control
            // plane answers again, not when the next change or long-poll timeout comes.
            let url = match self.generation {
                Some(g) if self.status.get().up => {
                    format!("{}{GENERATION_PATH}?after={g}", self.base)
                }
                _ => format!("{}{GENERATION_PATH}", self.base),
            };
            let answered = match self.poll_generation(&url).await {
                Ok(g) if self.generation.is_none_or(|n| g > n) || !self.has_copy() => {
                    self.sync().await.is_ok()
                }
                Ok(g) => {
                    self.record(&Ok(g));
                    true
                }
                Err(e) => {
                    self.record(&Err(e));
                    false
                }
            };
            let pause = if answered { Duration::ZERO } else { RETRY };
            tokio::time::sleep(jittered(pause)).await;
        }
    }

    async fn poll_generation(&self, url: &str) -> Result<i64, MirrorError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            generation: i64,
        }
        let body = self
            .get(url, None, LONG_POLL + FETCH_TIMEOUT)
            .await?
            .ok_or_else(|| MirrorError::BadGeneration {
                url: url.to_owned(),
            })?;
        serde_json::from_slice::<Answer>(&body)
            .map(|a| a.generation)
            .map_err(|_| MirrorError::BadGeneration {
                url: url.to_owned(),
            })
    }

    /// The generation the answer names (`x-certgate-generation`), and the body; `None` for a
    /// 304: the local copy is current.
    async fn fetch(
        &self,
        url: &str,
        etag: Option<&str>,
    ) -> Result<(Option<i64>, Option<Bytes>), MirrorError> {
        self.exchange(url, etag, FETCH_TIMEOUT).await
    }

    async fn get(
        &self,
        url: &str,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Bytes>, MirrorError> {
        Ok(self.exchange(url, etag, timeout).await?.1)
    }

    async fn exchange(
        &self,
        url: &str,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<(Option<i64>, Option<Bytes>), MirrorError> {
        let request_error = |detail: String| MirrorError::Request {
            url: url.to_owned(),
            detail,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| request_error(e.to_string()))?;
        let mut request = Request::get(uri);
        if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| request_error(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| request_error(crate::error_chain(&e)))?;
            let generation = response
                .headers()
                .get(super::GENERATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            match response.status() {
                StatusCode::NOT_MODIFIED => return Ok((generation, None)),
                StatusCode::OK => {}
                status => {
                    return Err(MirrorError::Status {
                        url: url.to_owned(),
                        status,
                    })
                }
            }
            let body = Limited::new(response.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| request_error(e.to_string()))?;
            Ok((generation, Some(body.to_bytes())))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| MirrorError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }

    fn record(&self, result: &Result<i64, MirrorError>) {
        let previous = self.status.get();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let next = match result {
            Ok(_) => SourceStatus {
                up: true,
                generation: self.generation,
                last_success: Some(now),
                last_error: None,
                ..(*previous).clone()
            },
            Err(e) => {
                let text = crate::error_chain(e);
                if previous.up || previous.last_error.is_none() {
                    tracing::warn!(source = %self.base, error = %text, "control plane unreachable: keeping the last copy");
                }
                SourceStatus {
                    up: false,
                    generation: self.generation,
                    last_error: Some(text),
                    ..(*previous).clone()
                }
            }
        };
        if next.up && !previous.up && previous.last_error.is_some() {
            tracing::info!(source = %self.base, "control plane reachable again");
        }
        self.status.0.store(Arc::new(next));
    }
}

/// `base` ± [`JITTER`] (never below zero), from the clock's nanoseconds: spreading replicas needs
/// no cryptographic randomness.
fn jittered(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let span = u32::try_from(JITTER.as_millis()).unwrap_or(250) * 2;
    let offset = Duration::from_millis(u64::from(nanos % span.max(1)));
    (base + offset).saturating_sub(JITTER)
}
