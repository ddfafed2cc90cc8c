//! Body adapters that count streamed bytes without buffering, cut a request body at its route's
//! size limit, and run a completion hook when the response body is finished (or dropped, when the
//! client goes away first).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::dedicated::DedicatedBody;

/// Why a request body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client's body failed: broken framing, a reset stream, a connection gone.
    #[error(transparent)]
    Client(Box<dyn StdError + Send + Sync>),
    /// The body grew past its route's `max_body_bytes`; the frame that crossed the limit was not
    /// passed on.
    #[error("the request body is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

impl BodyError {
    /// Whether `error` or one of its sources is a body cut at its size limit: how the forwarding
    /// path tells a 413 from a client's broken body once the upstream client reports either.
    pub fn is_too_large(error: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(Self::TooLarge { .. }) = e.downcast_ref::<Self>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// How many bytes of a request's body went upstream, shared between the body as it streams and
/// the request's audit line. A request that came without a body (most GETs) gets none: it
/// allocates nothing and reads as 0.
#[derive(Debug, Clone)]
pub struct BytesIn(Option<Arc<AtomicU64>>);

impl BytesIn {
    /// A counter for a body that may bring data; none for one that has ended already.
    pub fn for_body(ended: bool) -> Self {
        Self((!ended).then(|| Arc::new(AtomicU64::new(0))))
    }

    fn add(&self, n: u64) {
        if let Some(count) = &self.0 {
            count.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// A request body that adds the size of every data frame it passes on to a shared counter, and
/// fails with [`BodyError::TooLarge`] instead of passing on a frame that would take it past
/// `limit`.
#[derive(Debug)]
pub struct CountIn<B> {
    inner: B,
    bytes: BytesIn,
    limit: Option<u64>,
    seen: u64,
}

impl<B> CountIn<B> {
    pub fn new(inner: B, bytes: BytesIn, limit: Option<u64>) -> Self {
        Self {
            inner,
            bytes,
            limit,
            seen: 0,
        }
    }
}

impl<B> Body for CountIn<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(limit) = self.limit.filter(|l| self.seen > *l) {
            // Once cut, always cut: ending the stream instead would pass for a complete body.
            return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Client(e.into())))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.remaining() as u64;
            self.seen = self.seen.saturating_add(len);
            if let Some(limit) = self.limit.filter(|l| self.seen > *l) {
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
            }
            self.bytes.add(len);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body streamed from the upstream: through hyper's pooled client, or read from the
/// partner connection's own upstream connection.
#[derive(Debug)]
pub enum FromUpstream {
    Pooled(Incoming),
    Dedicated(DedicatedBody),
}

impl Body for FromUpstream {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Dedicated(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pooled(b) => b.is_end_stream(),
            Self::Dedicated(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Pooled(b) => b.size_hint(),
            Self::Dedicated(b) => b.size_hint(),
        }
    }
}

/// Called once with the response bytes sent, when the body ends or is dropped.
pub trait OnFinish: Send + 'static {
    /// `complete` is false when the body was dropped before its end (client gone, error).
    fn finish(self, bytes_out: u64, complete: bool);
}

/// A response body that counts what it yields and reports once at its end.
pub struct CountOut<B: Body, F: OnFinish> {
    inner: B,
    bytes: u64,
    on_finish: Option<F>,
}

impl<B: Body, F: OnFinish> CountOut<B, F> {
    pub fn new(inner: B, on_finish: F) -> Self {
        Self {
            inner,
            bytes: 0,
            on_finish: Some(on_finish),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_finish.take() {
            f.finish(self.bytes, complete);
        }
    }
}

impl<B: Body + Unpin, F: OnFinish + Unpin> Body for CountOut<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes += data.remaining() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => self.finish(false),
            None => self.finish(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: OnFinish> Drop for CountOut<B, F> {
    fn drop(&mut self) {
        // Reached when the body was never polled to its end: complete only if nothing was left
        // (an empty body, a HEAD answer), otherwise the client went away mid-stream.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<B: Body, F: OnFinish> std::fmt::Debug for CountOut<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountOut")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn a_body_counts_what_it_passes_on_and_an_ended_one_has_no_counter() {
        let bytes = BytesIn::for_body(false);
        let body = CountIn::new(Full::new(Bytes::from_static(b"hello")), bytes.clone(), None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(bytes.get(), 5);
        let ended = BytesIn::for_body(true);
        assert!(
            ended.0.is_none(),
            "a request without a body allocated a counter"
        );
        assert_eq!(ended.get(), 0);
    }
}
