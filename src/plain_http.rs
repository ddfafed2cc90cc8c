//! The accept loop of certgate's plain-HTTP/1.1 listeners: the admin API and the control plane's
//! feed. Both answer small requests from monitoring or from other certgate processes, so both get
//! the same bounds: a fixed number of connections (excess ones wait in the kernel's backlog) and a
//! header read timeout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The bounds of one listener, and its name in log lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) name: &'static str,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
}

/// Serves `handle` on every connection `listener` accepts, until the task running this is
/// aborted: the connections are in a set this future owns, so aborting it aborts them all.
pub(crate) async fn serve<H, F>(listener: TcpListener, limits: Limits, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "{} accept failed", limits.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let handle = handle.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(handle);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(client.addr = %peer, error = %e, "{} connection ended with an error", limits.name);
            }
            drop(permit);
        });
    }
}
