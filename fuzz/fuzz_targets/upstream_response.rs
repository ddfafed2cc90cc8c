//! certgate's own HTTP/1.1 client on arbitrary upstream bytes: the response head parser and the
//! body decoders (Content-Length, chunked with extensions and trailers, close-delimited) driven
//! through `Conn::exchange` over a real loopback socket, the bytes arriving in arbitrary pieces.
//!
//! Input: byte 0 = flags (bit 0: the request is `HEAD`, else `GET`; bits 1-7: how the rest is cut
//! into writes, 0 = one write); the rest is what the upstream sends before it closes.
//!
//! Oracle: no panic and no hang; a final answer is never 1xx; the body of a `HEAD`, 204 or 304 is
//! empty; a body that ends cleanly under a single `Content-Length` and no `Transfer-Encoding` has
//! exactly that many bytes; a body never has more bytes than the upstream sent; a connection is
//! handed back for reuse only after a body that ended cleanly.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use certgate::upstream::h1::{Conn, Home};
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fixture {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("loopback listener");
        let addr = listener.local_addr().expect("address");
        Fixture { rt, listener, addr }
    })
}

/// Records whether the exchange handed its connection back for reuse.
struct Back(Arc<AtomicBool>);

impl Home for Back {
    fn put_back(self, conn: Conn) {
        self.0.store(true, Ordering::SeqCst);
        drop(conn);
    }
}

/// Writes `bytes` in pieces whose sizes follow `seed`, closes the sending side, then reads what
/// the client sends until it closes (so the client sees the end of the response, not a reset).
async fn upstream(mut tcp: TcpStream, bytes: Vec<u8>, mut seed: u32) {
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = if seed == 0 {
            rest.len()
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed % 97) as usize
        }
        .min(rest.len());
        if tcp.write_all(&rest[..n]).await.is_err() {
            return;
        }
        rest = &rest[n..];
        tokio::task::yield_now().await;
    }
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The single `Content-Length` that frames the body, when the head has exactly one plain one and
/// no `Transfer-Encoding`.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, response)) = data.split_first() else {
        return;
    };
    let method = if flags & 1 == 1 { Method::HEAD } else { Method::GET };
    let seed = u32::from(flags >> 1);
    let f = fixture();
    let (mut parts, ()) = Request::builder()
        .method(method.clone())
        .uri("/fuzz")
        .header(header::HOST, "upstream.test")
        .body(())
        .expect("request")
        .into_parts();
    f.rt.block_on(async {
        let (client, server) = tokio::join!(TcpStream::connect(f.addr), f.listener.accept());
        let client = client.expect("connect");
        let (server, _) = server.expect("accept");
        let writer = tokio::spawn(upstream(server, response.to_vec(), seed));
        let back = Arc::new(AtomicBool::new(false));
        let exchange = async {
            let Ok(answer) = Conn::new(client)
                .exchange(&mut parts, None, Back(back.clone()))
                .await
            else {
                return;
            };
            let status = answer.status();
            assert!(!status.is_informational(), "final answer {status}");
            let declared = declared_length(answer.headers());
            let mut body = answer.into_body();
            let mut total = 0usize;
            let mut clean = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len()),
                    Err(_) => {
                        clean = false;
                        break;
                    }
                }
            }
            drop(body);
            assert!(total <= response.len(), "{total} body bytes from {}", response.len());
            let bodiless = method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            if bodiless {
                assert_eq!(total, 0, "{status} to {method} with a body");
            } else if let (true, Some(n)) = (clean, declared) {
                assert_eq!(total as u64, n, "Content-Length {n}, body {total}");
            }
            if back.load(Ordering::SeqCst) {
                assert!(clean, "a connection whose body failed was kept");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange hung although the upstream closed");
        writer.await.expect("upstream task");
    });
});
