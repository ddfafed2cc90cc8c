//! `certgate health`: one GET to the admin API, for a container's `HEALTHCHECK` where no HTTP
//! client is installed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Connect, request and read the answer within this; a health check must not hang.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum HealthError {
    #[error("no answer from {addr} within {}s", TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid request path {path:?}")]
    Request {
        path: String,
        #[source]
        source: http::Error,
    },
    #[error("HTTP exchange with {addr} failed")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// Prints the admin API's answer; exit 0 on 200, 1 on anything else.
pub(super) async fn run(admin: SocketAddr, path: &str) -> ExitCode {
    let answer = tokio::time::timeout(TIMEOUT, get(admin, path))
        .await
        .unwrap_or(Err(HealthError::Timeout { addr: admin }));
    match answer {
        Ok((status, body)) => {
            println!(
                "{} {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            );
            if status == StatusCode::OK {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), HealthError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| HealthError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|source| HealthError::Http { addr, source })?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|source| HealthError::Request {
            path: path.to_owned(),
            source,
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| HealthError::Http { addr, source })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| HealthError::Http { addr, source })?
        .to_bytes();
    Ok((status, body))
}
