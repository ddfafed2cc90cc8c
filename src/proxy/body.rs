//! Body adapters that count streamed bytes without buffering, and run a completion hook when the
//! response body is finished (or dropped, when the client goes away first).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};

/// A request body that adds the size of every data frame to a shared counter.
#[derive(Debug)]
pub struct CountIn<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> CountIn<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl<B: Body + Unpin> Body for CountIn<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                self.bytes
                    .fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
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
