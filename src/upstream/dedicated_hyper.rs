//! The upstream connection an HTTP/1.1 partner connection owns and drives on its own task, spoken
//! through `hyper::client::conn::http1` (cargo feature `hyper-dedicated`).
//!
//! The same contract as the default [`super::dedicated`] (first request pooled, kept connection
//! from the second on, released when idle, passive health), with hyper's connection instead of the
//! hand-written [`super::h1`] client: so both can be measured side by side from the same
//! supervisor. hyper's `Connection` future is not spawned: the partner connection's task polls it,
//! from the exchange while a response head is awaited and from the serve loop
//! ([`Dedicated::poll_drive`]) while the body streams and while the connection is idle.

// The one mutex here belongs to one partner connection and is only ever locked from that
// connection's task, so it is never contended; the data-path lint against locks targets shared
// state, which this is not.
#![allow(clippy::disallowed_types)]

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{EndpointId, Upstream, UpstreamBody, UpstreamFailure};
use crate::config::model::UpstreamId;

/// A response body read from the partner connection's own upstream connection.
pub type DedicatedBody = Incoming;

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, UpstreamBody>>>;

/// The partner connection's own upstream connection.
///
/// The mutex is never contended: only the partner connection's task touches it.
#[derive(Debug, Default)]
pub struct Dedicated {
    kept: Mutex<Option<Kept>>,
    /// Set by the connection's first request.
    engaged: AtomicBool,
}

#[derive(Debug)]
struct Kept {
    upstream: UpstreamId,
    endpoint: EndpointId,
    sender: SendRequest<UpstreamBody>,
    driver: Driver,
}

impl Kept {
    /// Drives the connection; true once it has ended (closed, failed, or unusable).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.as_mut().poll(cx).is_ready()
    }
}

fn lock(kept: &Mutex<Option<Kept>>) -> MutexGuard<'_, Option<Kept>> {
    kept.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's right to the partner connection's own upstream connection.
#[derive(Debug)]
pub struct Claim {
    upstream: UpstreamId,
}

impl Dedicated {
    /// An upstream connection of its own for an HTTP/1.1 partner connection; HTTP/2 partner
    /// connections use the pool.
    pub fn for_connection(h2: bool) -> Option<Self> {
        (!h2).then(Self::default)
    }

    /// Whether this request should use the connection's own upstream connection: not the
    /// connection's first request, which the pool serves, every one from the second on.
    pub fn claim(&self, id: UpstreamId, _upstream: &Upstream) -> Option<Claim> {
        self.engaged
            .swap(true, Ordering::Relaxed)
            .then_some(Claim { upstream: id })
    }

    /// Closes the kept upstream connection of an idle partner connection.
    pub fn release(&self) {
        *lock(&self.kept) = None;
    }

    /// Drives the kept connection (response bodies, idle close); never completes. A connection
    /// that ended is dropped, and the next request opens a new one.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut kept = lock(&self.kept);
        if kept.as_mut().is_some_and(|k| k.poll_ended(cx)) {
            tracing::debug!("dedicated upstream connection ended");
            *kept = None;
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
        claim: Claim,
        upstream: &Upstream,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<DedicatedBody>, UpstreamFailure> {
        let id = claim.upstream;
        let kept_endpoint = self.ready_for(id, upstream).await;
        let endpoint = kept_endpoint.unwrap_or_else(|| upstream.pick());
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = upstream
                .authority(endpoint)
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        *req.version_mut() = Version::HTTP_11;
        let timeout = upstream.request_timeout();
        let exchange = self.exchange(upstream, id, endpoint, kept_endpoint.is_some(), req);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // The connection's state is unknown mid-exchange: give it up.
                self.release();
                Err(UpstreamFailure::Timeout(timeout))
            }
        };
        upstream.record(endpoint, result.as_ref().map(|_| ()));
        result
    }

    /// Waits until the kept connection can take a request, if it goes to `id` at an endpoint that
    /// still takes traffic; its endpoint then, else `None` (and it is dropped).
    async fn ready_for(&self, id: UpstreamId, upstream: &Upstream) -> Option<EndpointId> {
        poll_fn(|cx| {
            let mut guard = lock(&self.kept);
            let Some(kept) = guard.as_mut() else {
                return Poll::Ready(None);
            };
            if kept.upstream != id || !upstream.available(kept.endpoint) || kept.poll_ended(cx) {
                *guard = None;
                return Poll::Ready(None);
            }
            match kept.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Some(kept.endpoint)),
                Poll::Ready(Err(_)) => {
                    *guard = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        id: UpstreamId,
        endpoint: EndpointId,
        kept: bool,
        req: Request<UpstreamBody>,
    ) -> Result<Response<DedicatedBody>, UpstreamFailure> {
        let req = if kept {
            match self.send_on_kept(req).await {
                Ok(response) => return Ok(response),
                // Not written at all: safe to send on a new connection whatever the method.
                Err(Retry::Unsent(req)) => *req,
                // hyper gives the request back only when none of it was written; once written,
                // its body is consumed and it cannot be sent again from here.
                Err(Retry::Failed(error)) => return Err(classify(error)),
            }
        } else {
            req
        };
        let (sender, driver) = open(upstream, endpoint).await?;
        *lock(&self.kept) = Some(Kept {
            upstream: id,
            endpoint,
            sender,
            driver,
        });
        match self.send_on_kept(req).await {
            Ok(response) => Ok(response),
            Err(Retry::Unsent(_)) => Err(UpstreamFailure::Exchange(
                "the new upstream connection closed before the request was sent".into(),
            )),
            Err(Retry::Failed(error)) => Err(classify(error)),
        }
    }

    /// Sends `req` on the kept connection, driving it until the response head arrives.
    async fn send_on_kept(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, Retry> {
        let Some(mut response) = lock(&self.kept)
            .as_mut()
            .map(|k| Box::pin(k.sender.try_send_request(req)))
        else {
            return Err(Retry::Failed(None));
        };
        let result = poll_fn(|cx| {
            let mut guard = lock(&self.kept);
            if guard.as_mut().is_some_and(|k| k.poll_ended(cx)) {
                // Ended: the response future now holds the outcome.
                *guard = None;
            }
            drop(guard);
            response.as_mut().poll(cx)
        })
        .await;
        result.map_err(|mut e| match e.take_message() {
            Some(req) => Retry::Unsent(Box::new(req)),
            None => {
                *lock(&self.kept) = None;
                Retry::Failed(Some(e.into_error()))
            }
        })
    }
}

enum Retry {
    Unsent(Box<Request<UpstreamBody>>),
    Failed(Option<hyper::Error>),
}

async fn open(
    upstream: &Upstream,
    endpoint: EndpointId,
) -> Result<(SendRequest<UpstreamBody>, Driver), UpstreamFailure> {
    let authority = upstream
        .authority(endpoint)
        .ok_or_else(|| UpstreamFailure::Connect("the upstream has no endpoint".into()))?;
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
    let (sender, driver) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| UpstreamFailure::connect(authority, e))?;
    Ok((sender, Box::pin(driver)))
}

fn classify(error: Option<hyper::Error>) -> UpstreamFailure {
    match error {
        // hyper reports a failure of the body it was sending as a "user body" error.
        Some(e) if e.is_user() => UpstreamFailure::ClientBody(e.into()),
        Some(e) => UpstreamFailure::Exchange(e.into()),
        None => UpstreamFailure::Exchange("the upstream connection ended".into()),
    }
}
