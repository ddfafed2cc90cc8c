//! What one request audit line costs: the line `src/proxy/service.rs` writes, with realistic
//! values, through
//!
//! * `old`: tracing-subscriber's JSON formatter as a plain tracing setup configures it
//!   (`.json().flatten_event(true).with_current_span(false)`), as a tracing event;
//! * `new`: certgate's JSON event formatter ([`certgate::audit::subscriber`] with
//!   `LogFormat::Json`) on the same fields as a tracing event: what every other audit event costs;
//! * `direct`: what the gateway does for the request line under its JSON log: the line written
//!   straight to the writer, without tracing's event dispatch.
//!
//! All behind the same `EnvFilter` and writing into `io::sink`, so the difference is the
//! formatting alone: no `write(2)`, no hand-off to the log thread. The client address and the
//! certificate fingerprint are rendered once up front, as the gateway does once per connection.
//!
//! Run: `cargo bench --bench audit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use certgate::audit::request::{certificate_json, Connection, RequestLine};
use certgate::audit::{install, subscriber, LogFormat};
use criterion::{criterion_group, criterion_main, Criterion};
use tracing_subscriber::EnvFilter;

/// What an answered request's line is made of, with realistic sizes.
struct Request {
    /// The client's address as the gateway renders it once per connection.
    peer_text: String,
    subject: String,
    serial: String,
    sha256: String,
    /// As a connection's chain holds them (`Presented::certificate_json`).
    certificate_json: Box<str>,
    path: String,
}

impl Request {
    fn new() -> Self {
        let subject = "CN=acme-billing, O=Acme Corp, C=DE";
        let serial = "5D0A3C1F9E2B7744";
        let sha256 = "f1f156676f3ef6a233f23411c6ac2f5a4467711254ae041a57c5827e30373cc7";
        Self {
            peer_text: SocketAddr::from(([10, 20, 30, 40], 51_234)).to_string(),
            subject: subject.into(),
            serial: serial.into(),
            sha256: sha256.into(),
            certificate_json: certificate_json(subject, serial, sha256),
            path: "/v1/orders/42/items?page=2".into(),
        }
    }

    /// What `impl OnFinish for Exchange` in `src/proxy/service.rs` hands to the audit log.
    fn line(&self) -> RequestLine<'_> {
        RequestLine {
            conn: Connection {
                id: 184_467,
                client_addr: &self.peer_text,
                sni: "api.partners.example.com",
                partner: "acme",
                subject: &self.subject,
                serial: &self.serial,
                sha256: &self.sha256,
                certificate_json: Some(&self.certificate_json),
            },
            denied: false,
            reason: "ok",
            route: "orders-read",
            upstream: "orders",
            method: http::Method::GET.as_str(),
            path: &self.path,
            status: 200,
            bytes_in: 0,
            bytes_out: 371,
            complete: true,
            upstream_ms: 0.92957,
            duration_ms: 0.9786930000000001,
        }
    }
}

fn audit_line(c: &mut Criterion) {
    let request = black_box(Request::new());
    let mut group = c.benchmark_group("audit_line");
    let old = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .finish();
    tracing::subscriber::with_default(old, || {
        group.bench_function("old", |b| b.iter(|| black_box(&request).line().event()));
    });
    let new = subscriber(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false,
    );
    tracing::subscriber::with_default(new, || {
        group.bench_function("new", |b| b.iter(|| black_box(&request).line().event()));
    });
    // As the gateway writes it: straight to the writer.
    assert!(install(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false
    ));
    group.bench_function("direct", |b| b.iter(|| black_box(&request).line().emit()));
    group.finish();
}

criterion_group!(benches, audit_line);
criterion_main!(benches);
