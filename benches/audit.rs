//! What one request audit line costs: the event from `src/proxy/service.rs` (same fields in the
//! same order, the same `&str` and number values), dispatched through
//!
//! * `old`: tracing-subscriber's JSON formatter as certgate configured it before issue 5
//!   (`.json().flatten_event(true).with_current_span(false)`), and
//! * `new`: [`certgate::audit::subscriber`] with `LogFormat::Json`,
//!
//! both behind the same `EnvFilter` and writing into `io::sink`, so the difference is the
//! formatting alone: no `write(2)`, no hand-off to the log thread. The client address and the
//! certificate fingerprint are rendered once up front, as the gateway does once per connection.
//!
//! Run: `cargo bench --bench audit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use certgate::audit::{subscriber, LogFormat};
use criterion::{criterion_group, criterion_main, Criterion};
use tracing_subscriber::EnvFilter;

/// What an answered request's line is made of, with realistic sizes.
struct Request {
    conn_id: u64,
    /// The client's address as the gateway renders it once per connection.
    peer_text: String,
    sni: Option<Box<str>>,
    partner: &'static str,
    subject: String,
    serial: String,
    sha256: String,
    route: &'static str,
    upstream: &'static str,
    method: http::Method,
    path: String,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
    upstream_ms: f64,
    duration_ms: f64,
    denied: bool,
}

impl Request {
    fn new() -> Self {
        Self {
            conn_id: 184_467,
            peer_text: SocketAddr::from(([10, 20, 30, 40], 51_234)).to_string(),
            sni: Some("api.partners.example.com".into()),
            partner: "acme",
            subject: "CN=acme-billing, O=Acme Corp, C=DE".into(),
            serial: "5D0A3C1F9E2B7744".into(),
            sha256: "f1f156676f3ef6a233f23411c6ac2f5a4467711254ae041a57c5827e30373cc7".into(),
            route: "orders-read",
            upstream: "orders",
            method: http::Method::GET,
            path: "/v1/orders/42/items?page=2".into(),
            status: 200,
            bytes_in: 0,
            bytes_out: 371,
            complete: true,
            upstream_ms: 0.92957,
            duration_ms: 0.9786930000000001,
            denied: false,
        }
    }

    /// The `tracing::info!` call of `impl OnFinish for Exchange`, field for field.
    fn audit(&self) {
        let denied = self.denied;
        tracing::info!(
            target: "certgate::audit",
            message = if denied { "request refused" } else { "request answered" },
            event = "request",
            decision = if denied { "deny" } else { "allow" },
            reason = "ok",
            conn.id = self.conn_id,
            client.addr = self.peer_text.as_str(),
            sni = self.sni.as_deref().unwrap_or(""),
            partner = self.partner,
            cert.subject = self.subject.as_str(),
            cert.serial = self.serial.as_str(),
            cert.sha256 = self.sha256.as_str(),
            route = self.route,
            upstream = self.upstream,
            http.method = self.method.as_str(),
            http.path = self.path.as_str(),
            http.status = self.status,
            bytes.in = self.bytes_in,
            bytes.out = self.bytes_out,
            body.complete = self.complete,
            upstream_ms = self.upstream_ms,
            duration_ms = self.duration_ms,
        );
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
        group.bench_function("old", |b| b.iter(|| black_box(&request).audit()));
    });
    let new = subscriber(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false,
    );
    tracing::subscriber::with_default(new, || {
        group.bench_function("new", |b| b.iter(|| black_box(&request).audit()));
    });
    group.finish();
}

criterion_group!(benches, audit_line);
criterion_main!(benches);
