//! `certgate control-plane`: serves the lifecycle's publications and the change feed to gateways.
//!
//! Where a publication comes from is the [`Source`]:
//!
//! - a state folder ([`Source::Folder`], the embedded SQLite registry, one replica): a poller
//!   reads the folder every [`POLL`]; whenever the files change and the partner table and the CRL
//!   name the same CRL number, it takes them as the next publication. A half-written pair (the
//!   publisher renames the partner table first, then the CRL) is skipped until the second file
//!   lands.
//! - the registry's database ([`Source::Registry`], PostgreSQL shared by several replicas): every
//!   publication is stored in the transaction that allocates its CRL number, so a poller asks for
//!   that number every [`REGISTRY_POLL`] and loads the row when it moved. Whichever replica (or
//!   CLI in whichever pod) made a change, every replica serves the same bytes under the same
//!   generation, and a gateway that fails over from one replica to another gets 304s.
//!
//! Either way the publication is held in memory and served from there (a request never reads a
//! file or the database). When the source fails, the last publication stays in service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{crl_path, etag, CA_PATH, GENERATION_PATH, LONG_POLL, PARTNERS_PATH};
use crate::config::published::{PublishedPartners, StateDir};
use crate::fswatch::FileStamp;
use crate::lifecycle::store::{Store, StoreError, StoredPublication};

/// How often the state folder is looked at. A revocation reaches the feed at most this late.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the registry's database is asked for the last publication's number: one row by
/// its key, five times a second per replica. A revocation reaches the feed at most this late.
pub const REGISTRY_POLL: Duration = Duration::from_millis(200);
/// Connections served at once: one long poll per gateway, plus file fetches.
const MAX_CONNECTIONS: usize = 1024;
/// Deadline for a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a state folder's files are not (yet) a publication.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: cannot read", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `place`: a file's path, or the registry's publication row.
    #[error("{place}: not a partner table")]
    Partners {
        place: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{place}: not a DER CRL with a CRL number")]
    Crl { place: String },
    #[error("the registry cannot be read")]
    Registry(#[from] StoreError),
    #[error("the registry holds no publication yet: run `certgate registry publish`")]
    NotPublished,
    #[error("the partner table names CRL number {partners}, the CRL is number {crl}: publication in progress")]
    Mismatch { partners: i64, crl: i64 },
}

/// Where the control plane reads the publications it serves.
#[derive(Debug)]
pub enum Source {
    /// The published files of a state folder.
    Folder(StateDir),
    /// The publication stored in the registry's database (opened by the caller: opening it is a
    /// future that cannot move to the spawned poller).
    Registry(Store),
}

/// One publication, as served.
#[derive(Debug)]
pub struct Publication {
    pub generation: i64,
    ca: Served,
    partners: Served,
    crl: Served,
}

#[derive(Debug)]
struct Served {
    bytes: Bytes,
    etag: HeaderValue,
}

/// What the handlers read.
#[derive(Debug)]
struct State {
    /// The lifecycle bundle's name: the CRL is served as `/crl/<bundle>.crl`.
    crl_path: String,
    current: watch::Receiver<Option<Arc<Publication>>>,
    last_error: watch::Receiver<Option<String>>,
    /// Not ready while the source fails, even with a publication in service. For the registry:
    /// a replica that lost the database would hold gateways on a generation the others have
    /// passed, so it leaves the Service until it reads again. (A folder's failure is a
    /// publication in progress, over in a moment.)
    unready_on_error: bool,
}

/// A running control-plane feed.
#[derive(Debug)]
pub struct ControlPlane {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    poll: JoinHandle<()>,
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Binds `listen` and serves the publications of `source`, the CRL under
    /// `/crl/<bundle>.crl`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(
        listen: SocketAddr,
        source: Source,
        bundle: &str,
    ) -> Result<Self, ServeError> {
        let bind = |source| ServeError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let (publish, current) = watch::channel(None);
        let (error_tx, last_error) = watch::channel(None);
        let unready_on_error = matches!(source, Source::Registry(_));
        let poll = match source {
            Source::Folder(state) => tokio::spawn(poll_loop(state, publish, error_tx)),
            Source::Registry(store) => tokio::spawn(registry_loop(store, publish, error_tx)),
        };
        let state = Arc::new(State {
            crl_path: crl_path(bundle),
            current,
            last_error,
            unready_on_error,
        });
        let accept = tokio::spawn(accept_loop(listener, state));
        tracing::info!(listen = %local_addr, "control plane feed is serving");
        Ok(Self {
            local_addr,
            accept,
            poll,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and stops reading the state folder.
    pub async fn stop(self) {
        self.accept.abort();
        self.poll.abort();
        let _ = self.accept.await;
        let _ = self.poll.await;
    }
}

/// Reads the published files of `state` into a [`Publication`].
///
/// # Errors
/// A file is missing or malformed, or the pair is mid-publication.
pub fn read(state: &StateDir) -> Result<Publication, ReadError> {
    let load = |path: std::path::PathBuf| {
        std::fs::read(&path).map_err(|source| ReadError::Io { path, source })
    };
    let ca = load(state.ca_cert())?;
    let partners = load(state.partners())?;
    let crl = load(state.crl())?;
    let place = |p: std::path::PathBuf| p.display().to_string();
    assemble(
        ca,
        partners,
        crl,
        || place(state.partners()),
        || place(state.crl()),
    )
}

/// A publication stored in the registry, checked as the files are.
///
/// # Errors
/// The row's partner table or CRL is malformed, or they name different CRL numbers.
pub fn from_registry(stored: StoredPublication) -> Result<Publication, ReadError> {
    let place = || format!("the registry's publication #{}", stored.crl_number);
    assemble(stored.ca_pem, stored.partners, stored.crl, place, place)
}

/// The three files as one publication, when the partner table and the CRL name one CRL number.
fn assemble(
    ca: Vec<u8>,
    partners: Vec<u8>,
    crl: Vec<u8>,
    partners_place: impl FnOnce() -> String,
    crl_place: impl FnOnce() -> String,
) -> Result<Publication, ReadError> {
    let table: PublishedPartners =
        serde_json::from_slice(&partners).map_err(|source| ReadError::Partners {
            place: partners_place(),
            source,
        })?;
    let crl_number = crl_number(&crl).ok_or_else(|| ReadError::Crl { place: crl_place() })?;
    if crl_number != table.crl_number {
        return Err(ReadError::Mismatch {
            partners: table.crl_number,
            crl: crl_number,
        });
    }
    let served = |bytes: Vec<u8>| Served {
        etag: HeaderValue::from_str(&etag(&bytes)).unwrap_or(HeaderValue::from_static("\"\"")),
        bytes: Bytes::from(bytes),
    };
    Ok(Publication {
        generation: crl_number,
        ca: served(ca),
        partners: served(partners),
        crl: served(crl),
    })
}

/// The CRL number of a DER CRL, when it has one that fits an `i64` (the registry's type).
fn crl_number(der: &[u8]) -> Option<i64> {
    let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
    let bytes = crl.crl_number()?.to_bytes_be();
    if bytes.len() > 8 {
        return None;
    }
    let n = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    i64::try_from(n).ok()
}

async fn poll_loop(
    state: StateDir,
    publish: watch::Sender<Option<Arc<Publication>>>,
    last_error: watch::Sender<Option<String>>,
) {
    let files = [state.ca_cert(), state.partners(), state.crl()];
    let mut seen: Option<Vec<Option<FileStamp>>> = None;
    loop {
        let mut stamps = Vec::with_capacity(files.len());
        for f in &files {
            stamps.push(FileStamp::of(f).await.ok());
        }
        if seen.as_ref() != Some(&stamps) {
            let dir = state.clone();
            let read = tokio::task::spawn_blocking(move || read(&dir)).await;
            match read {
                Ok(Ok(publication)) => {
                    let moved = publish
                        .borrow()
                        .as_ref()
                        .is_none_or(|p| p.generation != publication.generation);
                    if moved {
                        tracing::info!(
                            generation = publication.generation,
                            "control plane publishes a new generation"
                        );
                    }
                    // Same generation, other bytes (a re-signed CRL): still served anew.
                    publish.send_replace(Some(Arc::new(publication)));
                    last_error.send_replace(None);
                    seen = Some(stamps);
                }
                Ok(Err(e)) => {
                    // Read again on the next tick: a publication in progress completes shortly.
                    let text = crate::error_chain(&e);
                    if last_error.borrow().as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "control plane cannot read the published files");
                    }
                    last_error.send_replace(Some(text));
                }
                Err(e) => tracing::error!(error = %e, "reading the published files panicked"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows the registry's stored publication. The pool replaces a lost connection on the next
/// query, so a database that comes back is read again without reopening the store.
async fn registry_loop(
    mut store: Store,
    publish: watch::Sender<Option<Arc<Publication>>>,
    last_error: watch::Sender<Option<String>>,
) {
    loop {
        match registry_tick(&mut store, &publish).await {
            Ok(()) => {
                if last_error.borrow().is_some() {
                    tracing::info!("control plane reads the registry again");
                    last_error.send_replace(None);
                }
            }
            Err(e) => {
                let text = crate::error_chain(&e);
                if last_error.borrow().as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "control plane cannot read the registry: serving the last publication");
                }
                last_error.send_replace(Some(text));
            }
        }
        tokio::time::sleep(REGISTRY_POLL).await;
    }
}

async fn registry_tick(
    store: &mut Store,
    publish: &watch::Sender<Option<Arc<Publication>>>,
) -> Result<(), ReadError> {
    let served = publish.borrow().as_ref().map(|p| p.generation);
    let Some(number) = store.publication_number().await? else {
        return Err(ReadError::NotPublished);
    };
    if served == Some(number) {
        return Ok(());
    }
    let stored = store.publication().await?.ok_or(ReadError::NotPublished)?;
    let publication = from_registry(stored)?;
    tracing::info!(
        generation = publication.generation,
        "control plane publishes a new generation"
    );
    publish.send_replace(Some(Arc::new(publication)));
    Ok(())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let limits = crate::plain_http::Limits {
        name: "feed",
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
    };
    crate::plain_http::serve(listener, limits, move |req| handle(state.clone(), req)).await;
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let known = [
        "/healthz",
        "/readyz",
        GENERATION_PATH,
        CA_PATH,
        PARTNERS_PATH,
        state.crl_path.as_str(),
    ]
    .contains(&path);
    if !known {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found"}),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method_not_allowed"}),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let current = state.current.borrow().clone();
    let response = match (path, current) {
        ("/healthz", _) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        ("/readyz", Some(p))
            if !(state.unready_on_error && state.last_error.borrow().is_some()) =>
        {
            json(
                StatusCode::OK,
                &serde_json::json!({"ready": true, "generation": p.generation}),
            )
        }
        ("/readyz", _) => {
            let reason = state
                .last_error
                .borrow()
                .clone()
                .unwrap_or_else(|| "the published files have not been read yet".to_owned());
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"ready": false, "reasons": [reason]}),
            )
        }
        (GENERATION_PATH, _) => generation(&state, req.uri().query()).await,
        (_, None) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "not_published"}),
        ),
        (CA_PATH, Some(p)) => file(&p, &p.ca, "application/x-pem-file", &req),
        (PARTNERS_PATH, Some(p)) => file(&p, &p.partners, "application/json", &req),
        (_, Some(p)) => file(&p, &p.crl, "application/pkix-crl", &req),
    };
    Ok(response)
}

/// `after=N`: wait until the generation is past N, at most [`LONG_POLL`]; without `after`,
/// answer at once. Never an older generation as news: a gateway that reached this replica after
/// a newer one must not step back to an older CRL.
async fn generation(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let after = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("after="));
    let after = match after.map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "bad_request", "detail": "after= takes an integer"}),
            )
        }
    };
    let mut rx = state.current.clone();
    if let Some(after) = after {
        let moved =
            |p: &Option<Arc<Publication>>| p.as_ref().is_some_and(|p| p.generation != after);
        // A timeout or a closed channel both end in answering what is current.
        let _ = tokio::time::timeout(LONG_POLL, rx.wait_for(moved)).await;
    }
    let current = rx.borrow().as_ref().map(|p| p.generation);
    match current {
        Some(g) => json(StatusCode::OK, &serde_json::json!({"generation": g})),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "not_published"}),
        ),
    }
}

fn file(
    publication: &Publication,
    served: &Served,
    content_type: &'static str,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().as_bytes() == served.etag.as_bytes())
        });
    let mut r = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(served.bytes.clone()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let headers = r.headers_mut();
    headers.insert(header::ETAG, served.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        super::GENERATION_HEADER,
        HeaderValue::from(publication.generation),
    );
    r
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
