//! The upstream connection an HTTP/1.1 partner connection owns and drives on its own task.
//!
//! HTTP/1.1 serves one request at a time per connection, so a partner connection never needs more
//! than one upstream connection at once. Keeping that one in the partner connection's own state,
//! instead of checking it out of the shared pool per request, removes from every request the pool
//! lock, the checkout and return bookkeeping, and the task the pooled client spawns to hand the
//! connection back. Polling it from the partner connection's task (the serve loop calls
//! [`Dedicated::poll_drive`]) removes the hop between tasks: the upstream's answer wakes the task
//! that writes it to the partner.
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

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upstream::{EndpointId, Upstream, UpstreamBody, UpstreamFailure};
use crate::config::model::UpstreamId;

type Driver = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// The partner connection's own upstream connection, if it has opened one.
///
/// The mutex is never contended: only the partner connection's task touches it (its request
/// handler and its serve loop run on that one task); it is there because the handler's future
/// must be `Send`.
#[derive(Default)]
pub struct Dedicated {
    inner: Mutex<Inner>,
    /// Set by the connection's first request.
    engaged: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Taken while a request is in flight, put back once its response head has arrived.
    held: Option<Held>,
    /// The connection's I/O, polled by the serve loop.
    driver: Option<Pin<Box<Driver>>>,
    /// The serve loop's waker, to have a newly opened connection polled.
    waker: Option<Waker>,
}

struct Held {
    upstream: UpstreamId,
    endpoint: EndpointId,
    sender: http1::SendRequest<UpstreamBody>,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Dedicated")
            .field("open", &inner.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl Dedicated {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this request should use the connection's own upstream connection: false for the
    /// connection's first request, which the pool serves, true from the second on.
    pub fn engage(&self) -> bool {
        self.engaged.swap(true, Ordering::Relaxed)
    }

    /// Closes the kept upstream connection of an idle partner connection, so idle partners do not
    /// hold upstream connections; the next request opens a new one.
    pub fn release(&self) {
        let mut inner = self.lock();
        inner.held = None;
        inner.driver = None;
    }

    /// Drives the upstream connection's I/O; never completes. A connection that ends (upstream
    /// closed it, or it failed) is dropped, and the next request opens a new one.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        if let Some(driver) = inner.driver.as_mut() {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "dedicated upstream connection ended");
                }
                inner.driver = None;
                inner.held = None;
            }
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
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let kept = self.take_for(id, upstream);
        let endpoint = kept
            .as_ref()
            .map_or_else(|| upstream.pick(), |h| h.endpoint);
        *req.version_mut() = Version::HTTP_11;
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = upstream
                .authority(endpoint)
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let timeout = upstream.request_timeout();
        let exchange = self.exchange(upstream, id, endpoint, kept.map(|h| h.sender), req);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            // Dropping the exchange closes its connection (hyper cannot abort one HTTP/1.1
            // request and keep the connection); the next request opens a new one.
            Err(_) => Err(UpstreamFailure::Timeout(timeout)),
        };
        upstream.record(endpoint, result.as_ref().map(|_| ()));
        result
    }

    /// The kept connection, if it goes to `id` at an endpoint that still takes traffic.
    fn take_for(&self, id: UpstreamId, upstream: &Upstream) -> Option<Held> {
        let mut inner = self.lock();
        let held = inner.held.take()?;
        if held.upstream == id && upstream.available(held.endpoint) {
            Some(held)
        } else {
            // Another upstream, or an ejected endpoint: this connection will not be used again.
            inner.driver = None;
            None
        }
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        id: UpstreamId,
        endpoint: EndpointId,
        kept: Option<http1::SendRequest<UpstreamBody>>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        if let Some(mut sender) = kept {
            // Ready once the previous response body has been read to its end; an error means the
            // upstream closed the connection meanwhile.
            if poll_fn(|cx| sender.poll_ready(cx)).await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(response) => {
                        self.keep(id, endpoint, sender);
                        return Ok(response);
                    }
                    Err(mut e) => match e.take_message() {
                        // Never written: the connection closed under it. Safe to send again.
                        Some(unsent) => req = unsent,
                        None => return Err(classify(e.into_error())),
                    },
                }
            }
        }
        let mut sender = self.open(upstream, endpoint).await?;
        match sender.send_request(req).await {
            Ok(response) => {
                self.keep(id, endpoint, sender);
                Ok(response)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Opens a connection to `endpoint` and hands its I/O to the serve loop.
    async fn open(
        &self,
        upstream: &Upstream,
        endpoint: EndpointId,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamFailure> {
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
                Ok(Err(e)) => return Err(UpstreamFailure::Connect(e.into())),
                Err(_) => {
                    return Err(UpstreamFailure::Connect(
                        format!("no connection within {:?}", upstream.connect_timeout()).into(),
                    ))
                }
            };
        tcp.set_nodelay(true)
            .map_err(|e| UpstreamFailure::Connect(e.into()))?;
        let (sender, driver) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamFailure::Connect(e.into()))?;
        let mut inner = self.lock();
        inner.driver = Some(Box::pin(driver));
        if let Some(waker) = &inner.waker {
            waker.wake_by_ref();
        }
        Ok(sender)
    }

    fn keep(
        &self,
        upstream: UpstreamId,
        endpoint: EndpointId,
        sender: http1::SendRequest<UpstreamBody>,
    ) {
        self.lock().held = Some(Held {
            upstream,
            endpoint,
            sender,
        });
    }
}

fn classify(error: hyper::Error) -> UpstreamFailure {
    // hyper reports a failure of the body it was sending (the partner's) as a user error.
    if error.is_user() {
        UpstreamFailure::ClientBody(error.into())
    } else {
        UpstreamFailure::Exchange(error.into())
    }
}
