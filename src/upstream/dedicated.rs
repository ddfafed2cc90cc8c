//! The upstream connections a partner connection owns and drives from the tasks that serve it.
//!
//! Keeping a partner connection's upstream connections in its own state, instead of checking one
//! out of the shared pool per request, removes from every request the pool lock, the checkout and
//! return bookkeeping, and the task the pooled client spawns to hand the connection back. The
//! exchange itself runs on the task that serves the request ([`super::h1`]): the partner
//! connection's own for HTTP/1.1, the stream's for HTTP/2, so the upstream's answer wakes the task
//! that writes it to the partner.
//!
//! HTTP/1.1 serves one request at a time, so an HTTP/1.1 partner connection owns at most one
//! upstream connection. An HTTP/2 partner connection owns one per stream in flight, kept and
//! reused as its streams come and go, up to [`HTTP2_CONNECTIONS`]; streams beyond that go through
//! the pool, so a partner's burst cannot hold more than that many upstream connections to itself.
//! A connection goes back to its owner only when its response was read to the end: a stream reset
//! or cut mid-response closes the upstream connection it used.
//!
//! A partner connection's first request still goes through the pool: a partner that connects for
//! one request and leaves should not cost an upstream connection of its own (nor the upstream a
//! connect and close per partner connection). From the second request on it keeps its own, and
//! gives them up again when it has been idle for half the idle timeout ([`Dedicated::release`]).
//!
//! An upstream connection sticks to the endpoint it was opened to while that endpoint takes
//! traffic; passive health applies as with the pool (a failure drops the connection and counts
//! against the endpoint; an ejected endpoint is left for the next one in the rotation). Upgrades
//! and TLS or HTTP/2 upstreams use the pooled client.

// The one mutex here belongs to one partner connection: it is locked from the tasks serving that
// connection (twice per request, never across an await), so it is practically never contended;
// the data-path lint against locks targets state shared between connections, which this is not.
#![allow(clippy::disallowed_types)]

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body as _;
use tokio::net::TcpStream;

use super::h1::{Conn, ExchangeError, Home, ResponseBody};
use super::{EndpointId, Upstream, UpstreamBody, UpstreamFailure};
use crate::config::model::UpstreamId;

/// How many upstream connections an HTTP/2 partner connection owns at most, in use and idle
/// together. Its streams beyond that many in flight at once go through the shared pool.
pub const HTTP2_CONNECTIONS: usize = 8;

/// A response body read from one of the partner connection's own upstream connections.
pub type DedicatedBody = ResponseBody<Return>;

/// A partner connection's own upstream connections.
#[derive(Debug)]
pub struct Dedicated {
    slots: Arc<Mutex<Slots>>,
    /// How many connections it may own.
    cap: usize,
    /// Set by the connection's first request.
    engaged: AtomicBool,
}

#[derive(Debug, Default)]
struct Slots {
    /// Connections no exchange is using, the most recently used last.
    idle: Vec<Kept>,
    /// Connections out with an exchange, each held by one [`Return`].
    in_use: usize,
}

#[derive(Debug)]
struct Kept {
    upstream: UpstreamId,
    endpoint: EndpointId,
    conn: Conn,
}

/// A request's right to one of the partner connection's upstream connections: the idle one it
/// took, or room to open one.
#[derive(Debug)]
pub struct Claim {
    kept: Option<Conn>,
    home: Return,
}

/// One upstream connection out with an exchange: where its response body hands it back once read
/// to the end. Dropped without handing it back (the exchange failed, timed out or was dropped,
/// the body broke or was left unread), the connection is gone and its place is free again.
#[derive(Debug)]
pub struct Return {
    /// `None` once handed back.
    slots: Option<Arc<Mutex<Slots>>>,
    upstream: UpstreamId,
    endpoint: EndpointId,
}

impl Home for Return {
    fn put_back(mut self, conn: Conn) {
        if let Some(slots) = self.slots.take() {
            let mut slots = lock(&slots);
            slots.in_use -= 1;
            slots.idle.push(Kept {
                upstream: self.upstream,
                endpoint: self.endpoint,
                conn,
            });
        }
    }
}

impl Drop for Return {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            lock(&slots).in_use -= 1;
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Dedicated {
    /// The upstream connections of a partner connection: one for HTTP/1.1,
    /// [`HTTP2_CONNECTIONS`] for HTTP/2.
    pub fn for_connection(h2: bool) -> Option<Self> {
        Some(Self {
            slots: Arc::default(),
            cap: if h2 { HTTP2_CONNECTIONS } else { 1 },
            engaged: AtomicBool::new(false),
        })
    }

    /// An upstream connection to `id` for this request: an idle one still usable, or room to open
    /// one. `None` for the connection's first request, which the pool serves, and when every
    /// connection it may own is busy.
    pub fn claim(&self, id: UpstreamId, upstream: &Upstream) -> Option<Claim> {
        if !self.engaged.swap(true, Ordering::Relaxed) {
            return None;
        }
        let mut slots = lock(&self.slots);
        let mut kept = None;
        while let Some(i) = slots.idle.iter().rposition(|k| k.upstream == id) {
            let k = slots.idle.swap_remove(i);
            // An ejected endpoint's connection is not used again.
            if upstream.available(k.endpoint) {
                kept = Some(k);
                break;
            }
        }
        if kept.is_none() && slots.idle.len() + slots.in_use >= self.cap {
            if slots.idle.is_empty() {
                return None;
            }
            // Room for this upstream before an idle connection to another one.
            slots.idle.remove(0);
        }
        slots.in_use += 1;
        drop(slots);
        let endpoint = kept
            .as_ref()
            .map_or_else(|| upstream.pick(), |k| k.endpoint);
        Some(Claim {
            kept: kept.map(|k| k.conn),
            home: Return {
                slots: Some(self.slots.clone()),
                upstream: id,
                endpoint,
            },
        })
    }

    /// Closes the idle upstream connections of an idle partner connection, so idle partners do
    /// not hold upstream connections; the next request opens a new one.
    pub fn release(&self) {
        let idle = std::mem::take(&mut lock(&self.slots).idle);
        drop(idle);
    }

    /// Watches the idle upstream connections; never completes. A connection the upstream closed
    /// (or sent something unasked on) is dropped, and the next request opens a new one.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = lock(&self.slots);
        slots.idle.retain_mut(|kept| {
            let closed = kept.conn.poll_closed(cx);
            if closed {
                tracing::debug!("dedicated upstream connection closed while idle");
            }
            !closed
        });
        Poll::Pending
    }

    /// Sends one request (origin-form URI) to `upstream` over the claimed connection when it is
    /// still usable, else over a new one, bounding connect and response head by the upstream's
    /// request timeout, and feeds the outcome to passive health.
    ///
    /// # Errors
    /// Connect failures, timeouts and broken exchanges, classified.
    pub async fn send(
        &self,
        claim: Claim,
        upstream: &Upstream,
        req: Request<UpstreamBody>,
    ) -> Result<Response<DedicatedBody>, UpstreamFailure> {
        let endpoint = claim.home.endpoint;
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = upstream
                .authority(endpoint)
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }
        let timeout = upstream.request_timeout();
        let exchange = exchange(upstream, claim, &mut parts, body);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            // Dropping the exchange closes its connection; the next request opens a new one.
            Err(_) => Err(UpstreamFailure::Timeout(timeout)),
        };
        upstream.record(endpoint, result.as_ref().map(|_| ()));
        result
    }
}

async fn exchange(
    upstream: &Upstream,
    claim: Claim,
    parts: &mut Parts,
    body: UpstreamBody,
) -> Result<Response<DedicatedBody>, UpstreamFailure> {
    let Claim { kept, mut home } = claim;
    let body = (!body.is_end_stream()).then_some(body);
    if let Some(mut conn) = kept {
        // The upstream may have closed it since it was last looked at.
        if !poll_fn(|cx| Poll::Ready(conn.poll_closed(cx))).await {
            if body.is_some() {
                return conn
                    .exchange(parts, body, home)
                    .await
                    .map_err(|(e, _)| classify(e));
            }
            match conn.exchange(parts, None, home).await {
                Ok(response) => return Ok(response),
                // Closed under the request before any answer (an upstream's idle timeout
                // racing it): an idempotent request is safe to send again (RFC 9110 §9.2.2).
                // Its header map is still whole: only a complete final head takes it.
                Err((ExchangeError::Upstream(error), back))
                    if !error.answered() && idempotent(&parts.method) =>
                {
                    tracing::debug!(%error, "kept upstream connection failed; sending again");
                    home = back;
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
    }
    let conn = open(upstream, home.endpoint).await?;
    conn.exchange(parts, body, home)
        .await
        .map_err(|(e, _)| classify(e))
}

/// Opens a connection to `endpoint`.
async fn open(upstream: &Upstream, endpoint: EndpointId) -> Result<Conn, UpstreamFailure> {
    let authority = upstream
        .authority(endpoint)
        .ok_or_else(|| UpstreamFailure::Connect("the upstream has no endpoint".into()))?;
    // An IPv6 literal keeps its brackets in an authority; the resolver wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let address = (host, authority.port_u16().unwrap_or(80));
    let tcp =
        match tokio::time::timeout(upstream.connect_timeout(), TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(UpstreamFailure::connect(authority, e)),
            Err(_) => {
                return Err(UpstreamFailure::connect(
                    authority,
                    format!("no connection within {:?}", upstream.connect_timeout()),
                ))
            }
        };
    tcp.set_nodelay(true)
        .map_err(|e| UpstreamFailure::connect(authority, e))?;
    Ok(Conn::new(tcp))
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn classify(error: ExchangeError) -> UpstreamFailure {
    match error {
        ExchangeError::Upstream(error) => UpstreamFailure::Exchange(error.into()),
        ExchangeError::ClientBody(e) => UpstreamFailure::ClientBody(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::model;

    fn upstream_at(port: u16) -> Upstream {
        Upstream::build(&model::Upstream {
            name: "gone".into(),
            endpoints: vec![model::Endpoint {
                tls: false,
                authority: format!("127.0.0.1:{port}"),
            }],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            protocol: model::UpstreamProtocol::Http1,
            ca: None,
            eject_after_failures: 0,
            eject_for: Duration::from_secs(1),
        })
        .unwrap()
    }

    /// An HTTP/2 partner connection's streams share at most [`HTTP2_CONNECTIONS`] upstream
    /// connections of its own, an HTTP/1.1 one's requests one; past that the pool serves, and a
    /// place is free again as soon as the exchange holding it is gone.
    #[test]
    fn claims_are_capped_per_partner_connection() {
        let upstream = upstream_at(9);
        let id = UpstreamId(0);
        for (h2, cap) in [(true, HTTP2_CONNECTIONS), (false, 1)] {
            let dedicated = Dedicated::for_connection(h2).unwrap();
            assert!(
                dedicated.claim(id, &upstream).is_none(),
                "the first request is pooled"
            );
            let mut claims = (0..cap)
                .map(|i| {
                    dedicated
                        .claim(id, &upstream)
                        .unwrap_or_else(|| panic!("claim {i} of {cap}"))
                })
                .collect::<Vec<_>>();
            assert!(
                dedicated.claim(id, &upstream).is_none(),
                "over the cap of {cap}"
            );
            drop(claims.pop());
            assert!(dedicated.claim(id, &upstream).is_some(), "a freed place");
        }
    }

    /// The log line for a failed connect says where and why; the partner's answer says neither.
    #[tokio::test]
    async fn a_refused_connect_names_the_endpoint_and_the_os_error() {
        // A port nothing listens on any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let upstream = upstream_at(port);
        let endpoint = upstream.pick();
        let Err(failure) = open(&upstream, endpoint).await else {
            panic!("connected to a closed port");
        };
        assert_eq!(failure.kind(), super::super::UpstreamErrorKind::Connect);
        let logged = crate::error_chain(&failure);
        assert!(
            logged.contains(&format!("endpoint 127.0.0.1:{port}")),
            "{logged}"
        );
        assert!(
            logged.contains("os error") && logged.to_lowercase().contains("connection refused"),
            "{logged}"
        );
    }
}
