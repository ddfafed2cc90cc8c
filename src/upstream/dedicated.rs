//! The upstream connection an HTTP/1.1 partner connection owns and drives on its own task.
//!
//! HTTP/1.1 serves one request at a time per connection, so a partner connection never needs more
//! than one upstream connection at once. Keeping that one in the partner connection's own state,
//! instead of checking it out of the shared pool per request, removes from every request the pool
//! lock, the checkout and return bookkeeping, and the task the pooled client spawns to hand the
//! connection back. The exchange itself runs on the partner connection's task
//! ([`super::h1`]): the upstream's answer wakes the task that writes it to the partner.
//!
//! A partner connection's first request still goes through the pool: a partner that connects for
//! one request and leaves should not cost an upstream connection of its own (nor the upstream a
//! connect and close per partner connection). From the second request on it keeps its own, and
//! gives it up again when it has been idle for half the idle timeout ([`Dedicated::release`]).
//!
//! The upstream connection sticks to the endpoint it was opened to while that endpoint takes
//! traffic; passive health applies as with the pool (a failure drops the connection and counts
//! against the endpoint; an ejected endpoint is left for the next one in the rotation). HTTP/2
//! partner connections, upgrades and TLS or HTTP/2 upstreams use the pooled client.

// The one mutex here belongs to one partner connection and is only ever locked from that
// connection's task, so it is never contended; the data-path lint against locks targets shared
// state, which this is not.
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

/// A response body read from the partner connection's own upstream connection.
pub type DedicatedBody = ResponseBody<Return>;

/// The partner connection's own upstream connection, while no exchange is using it.
///
/// The mutex is never contended: only the partner connection's task touches it (its request
/// handler, the response body hyper's server polls, and its serve loop all run on that one task);
/// it is there because the handler's future and the body must be `Send`.
#[derive(Debug, Default)]
pub struct Dedicated {
    idle: Arc<Mutex<Option<Kept>>>,
    /// Set by the connection's first request.
    engaged: AtomicBool,
}

#[derive(Debug)]
struct Kept {
    upstream: UpstreamId,
    endpoint: EndpointId,
    conn: Conn,
}

/// Where a response body hands its connection back to once read to the end.
#[derive(Debug)]
pub struct Return {
    idle: Arc<Mutex<Option<Kept>>>,
    upstream: UpstreamId,
    endpoint: EndpointId,
}

impl Home for Return {
    fn put_back(self, conn: Conn) {
        *lock(&self.idle) = Some(Kept {
            upstream: self.upstream,
            endpoint: self.endpoint,
            conn,
        });
    }
}

fn lock(idle: &Mutex<Option<Kept>>) -> MutexGuard<'_, Option<Kept>> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Dedicated {
    /// Whether this request should use the connection's own upstream connection: false for the
    /// connection's first request, which the pool serves, true from the second on.
    pub fn engage(&self) -> bool {
        self.engaged.swap(true, Ordering::Relaxed)
    }

    /// Closes the kept upstream connection of an idle partner connection, so idle partners do not
    /// hold upstream connections; the next request opens a new one.
    pub fn release(&self) {
        *lock(&self.idle) = None;
    }

    /// Watches the idle upstream connection; never completes. A connection the upstream closed
    /// (or sent something unasked on) is dropped, and the next request opens a new one.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut idle = lock(&self.idle);
        if idle.as_mut().is_some_and(|kept| kept.conn.poll_closed(cx)) {
            tracing::debug!("dedicated upstream connection closed while idle");
            *idle = None;
        }
        Poll::Pending
    }

    /// Sends one request (origin-form URI) to `upstream`, over the kept connection when it is
    /// still usable, else over a new one, bounding connect and response head by the upstream's
    /// request timeout, and feeds the outcome to passive health.
    ///
    /// # Errors
    /// Connect failures, timeouts and broken exchanges, classified.
    pub async fn send(
        &self,
        upstream: &Upstream,
        id: UpstreamId,
        req: Request<UpstreamBody>,
    ) -> Result<Response<DedicatedBody>, UpstreamFailure> {
        let kept = self.take_for(id, upstream);
        let endpoint = kept
            .as_ref()
            .map_or_else(|| upstream.pick(), |k| k.endpoint);
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
        let exchange = self.exchange(upstream, id, endpoint, kept.map(|k| k.conn), &parts, body);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            // Dropping the exchange closes its connection; the next request opens a new one.
            Err(_) => Err(UpstreamFailure::Timeout(timeout)),
        };
        upstream.record(endpoint, result.as_ref().map(|_| ()));
        result
    }

    /// The kept connection, if it goes to `id` at an endpoint that still takes traffic.
    fn take_for(&self, id: UpstreamId, upstream: &Upstream) -> Option<Kept> {
        // Another upstream, or an ejected endpoint: this connection will not be used again.
        lock(&self.idle)
            .take()
            .filter(|k| k.upstream == id && upstream.available(k.endpoint))
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        id: UpstreamId,
        endpoint: EndpointId,
        kept: Option<Conn>,
        parts: &Parts,
        body: UpstreamBody,
    ) -> Result<Response<DedicatedBody>, UpstreamFailure> {
        let home = || Return {
            idle: self.idle.clone(),
            upstream: id,
            endpoint,
        };
        let body = (!body.is_end_stream()).then_some(body);
        if let Some(mut conn) = kept {
            // The upstream may have closed it since the serve loop last looked.
            if !poll_fn(|cx| Poll::Ready(conn.poll_closed(cx))).await {
                if body.is_some() {
                    return conn.exchange(parts, body, home()).await.map_err(classify);
                }
                match conn.exchange(parts, None, home()).await {
                    Ok(response) => return Ok(response),
                    // Closed under the request before any answer (an upstream's idle timeout
                    // racing it): an idempotent request is safe to send again (RFC 9110 §9.2.2).
                    Err(ExchangeError::Upstream(error))
                        if !error.answered() && idempotent(&parts.method) =>
                    {
                        tracing::debug!(%error, "kept upstream connection failed; sending again");
                    }
                    Err(e) => return Err(classify(e)),
                }
            }
        }
        let conn = self.open(upstream, endpoint).await?;
        conn.exchange(parts, body, home()).await.map_err(classify)
    }

    /// Opens a connection to `endpoint`.
    async fn open(
        &self,
        upstream: &Upstream,
        endpoint: EndpointId,
    ) -> Result<Conn, UpstreamFailure> {
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
            match tokio::time::timeout(upstream.connect_timeout(), TcpStream::connect(address))
                .await
            {
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

    /// The log line for a failed connect says where and why; the partner's answer says neither.
    #[tokio::test]
    async fn a_refused_connect_names_the_endpoint_and_the_os_error() {
        // A port nothing listens on any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let upstream = Upstream::build(&model::Upstream {
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
        .unwrap();
        let endpoint = upstream.pick();
        let Err(failure) = Dedicated::default().open(&upstream, endpoint).await else {
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
