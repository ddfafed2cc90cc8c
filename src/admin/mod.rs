//! The admin API: plain HTTP/1.1 on its own listener (`admin.listen`, loopback unless
//! `admin.allow_remote`), never on the partner port and never asking for a client certificate.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves HTTP at all |
//! | `GET /readyz` | 200, or 503 with the reasons (a CRL source never loaded, shutting down) |
//! | `GET /status` | JSON: config version and source, generation load time, CRL and OCSP state, counts, and with `lifecycle.source` the control plane's reachability |
//! | `POST /reload` | 200 `{"result":"applied","version":…}` or 422 `{"result":"rejected","problems":[…]}` |
//! | `GET /crl/<bundle>.crl` | the bundle's CRL file (DER) with an `ETag`; 304 on a matching `If-None-Match`; 404 for a bundle without exactly one CRL file |
//!
//! A known path with another method gets 405 with `Allow`; anything else 404. The API reads the
//! published snapshot and asks the reload task for reloads; it never mutates a snapshot itself.
//!
//! Started by `runtime::Gateway::start_with`, bound before the gateway reports itself
//! started, and kept up while the gateway drains so `/readyz` can say so.

mod status;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::control::{ReloadOutcome, Reloader};
use crate::feed::mirror::SourceState;
use crate::metrics::{CrlSourceScrape, LifecycleSourceScrape, Metrics, ScrapeState};
use crate::snapshot::Snapshot;
use rustls_pki_types::UnixTime;

/// Admin connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 32;
/// Deadline for an admin request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin handlers read.
pub(crate) struct State {
    current: Arc<ArcSwap<Snapshot>>,
    reloader: Reloader,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Scrapes reset and refill the scrape-time gauges: one at a time.
    scrape: tokio::sync::Mutex<()>,
    /// The mirror of the control plane's publication, when `lifecycle.source` is set.
    lifecycle_source: Option<Arc<SourceState>>,
}

impl State {
    pub(crate) fn new(
        current: Arc<ArcSwap<Snapshot>>,
        reloader: Reloader,
        metrics: Arc<Metrics>,
        lifecycle_source: Option<Arc<SourceState>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            current,
            reloader,
            metrics,
            draining: AtomicBool::new(false),
            scrape: tokio::sync::Mutex::new(()),
            lifecycle_source,
        })
    }
}

/// The running admin listener.
#[derive(Debug)]
pub(crate) struct Server {
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves the admin API on `listener` until [`Server::stop`].
    pub(crate) fn spawn(listener: TcpListener, state: Arc<State>) -> Self {
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Self { state, task }
    }

    /// From now on `/readyz` answers 503 (the gateway is draining).
    pub(crate) fn draining(&self) {
        self.state.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting and closes every admin connection.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let limits = crate::plain_http::Limits {
        name: "admin",
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
    };
    crate::plain_http::serve(listener, limits, move |req| handle(state.clone(), req)).await;
}

/// The endpoints and the methods each allows.
const ENDPOINTS: [(&str, &str); 5] = [
    ("/metrics", "GET, HEAD"),
    ("/healthz", "GET, HEAD"),
    ("/readyz", "GET, HEAD"),
    ("/status", "GET, HEAD"),
    ("/reload", "POST"),
];

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let method = req.method();
    let read = method == Method::GET || method == Method::HEAD;
    let response = match path {
        "/metrics" if read => metrics(&state).await,
        "/healthz" if read => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" if read => ready(&state),
        "/status" if read => json(StatusCode::OK, &status::of(&state)),
        "/reload" if method == Method::POST => reload(&state).await,
        _ if read && path.starts_with("/crl/") && path.ends_with(".crl") => {
            let bundle = &path["/crl/".len()..path.len() - ".crl".len()];
            crl(&state, bundle, req.headers().get(header::IF_NONE_MATCH)).await
        }
        _ => match ENDPOINTS.iter().find(|(p, _)| *p == path) {
            Some((_, allow)) => {
                let mut r = json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "method_not_allowed"}),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found"}),
            ),
        },
    };
    Ok(response)
}

async fn metrics(state: &State) -> Response<Full<Bytes>> {
    let snapshot = state.current.load_full();
    let scrape = ScrapeState {
        crls: snapshot
            .revocation
            .crl()
            .status()
            .into_iter()
            .map(|s| CrlSourceScrape {
                next_update: s.crls.iter().filter_map(|c| c.next_update).min(),
                entries: s.crls.iter().map(|c| c.entries).sum(),
                last_success: s.last_success,
                bundle: s.bundle,
                source: s.source,
            })
            .collect(),
        ocsp_cache_entries: snapshot.revocation.ocsp_cache_entries(),
        lifecycle_source: state.lifecycle_source.as_ref().map(|s| {
            let s = s.get();
            LifecycleSourceScrape {
                source: s.source.clone(),
                up: s.up,
                last_success: s.last_success,
                generation: s.generation,
            }
        }),
    };
    let text = {
        let _one_at_a_time = state.scrape.lock().await;
        state.metrics.encode(&scrape)
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Ready when the gateway is not draining, every CRL source of every bundle has loaded at least
/// once (until then its bundle refuses every certificate), and no bundle's CRLs have all expired
/// under `crl_expired: reject`. Configuration loaded and
/// listeners bound hold by construction: the admin API starts after both.
fn ready(state: &State) -> Response<Full<Bytes>> {
    let snapshot = state.current.load_full();
    let mut reasons = Vec::new();
    if state.draining.load(Ordering::Relaxed) {
        reasons.push("shutting down: draining connections".to_owned());
    }
    reasons.extend(snapshot.revocation.unready_reasons(UnixTime::now()));
    for s in snapshot.revocation.crl().status() {
        if !s.loaded {
            reasons.push(format!(
                "trust bundle {}: CRL source {} has not loaded{}",
                s.bundle,
                s.source,
                s.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if reasons.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"ready": true}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "reasons": reasons}),
        )
    }
}

/// Serves a bundle's CRL file so other gateways can poll it with `crl: url:`. The file is read
/// per request: this is the admin listener, and the file changes under it at any time.
async fn crl(
    state: &State,
    bundle: &str,
    if_none_match: Option<&HeaderValue>,
) -> Response<Full<Bytes>> {
    use sha2::{Digest, Sha256};
    let snapshot = state.current.load_full();
    let file = snapshot
        .config
        .trust_bundles
        .iter()
        .find(|b| b.name == bundle)
        .and_then(|b| match b.crls.as_slice() {
            [crate::config::model::CrlSource::File(path)] => Some(path.clone()),
            _ => None,
        });
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "detail": "no trust bundle of that name with exactly one CRL file"}),
        )
    };
    let Some(file) = file else {
        return not_found();
    };
    let bytes = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read a CRL file for GET /crl");
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "crl_unavailable"}),
            );
        }
    };
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let matches = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from(bytes)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pkix-crl"),
        );
        r
    };
    r.headers_mut().insert(header::ETAG, etag_value);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn reload(state: &State) -> Response<Full<Bytes>> {
    match state.reloader.reload().await {
        ReloadOutcome::Applied { version, changes } => json(
            StatusCode::OK,
            &serde_json::json!({"result": "applied", "version": version, "changes": changes}),
        ),
        ReloadOutcome::Rejected { problems } => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({"result": "rejected", "problems": problems}),
        ),
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
