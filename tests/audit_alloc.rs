//! Formatting a request's audit line allocates nothing once the thread's line buffer has grown.
//!
//! The line is written on every request, on the request's own task; only the hand-off to the log
//! writer thread (one `Vec` per line, in tracing-appender) is left, and that is not measured here:
//! the subscriber writes into `io::sink`. tracing-subscriber's own JSON formatter, which certgate
//! used before, is measured alongside for the record.
//!
//! `allocation_counter` counts allocations of the calling thread only, so tests running in parallel
//! do not disturb each other.

use std::net::SocketAddr;

use certgate::audit::{subscriber, LogFormat};
use tracing_subscriber::EnvFilter;

/// The `tracing::info!` call of `impl OnFinish for Exchange` in `src/proxy/service.rs`, field for
/// field, with the values a request has by then.
fn request_line(peer: SocketAddr, subject: &str, serial: &str, sha256: &str, path: &str) {
    let denied = false;
    tracing::info!(
        target: "certgate::audit",
        event = "request",
        decision = if denied { "deny" } else { "allow" },
        reason = "ok",
        conn.id = 184_467u64,
        client.addr = %peer,
        sni = "api.partners.example.com",
        partner = "acme",
        cert.subject = %subject,
        cert.serial = %serial,
        cert.sha256 = %sha256,
        route = "orders-read",
        upstream = "orders",
        http.method = %http::Method::GET,
        http.path = %path,
        http.status = 200u16,
        bytes.in = 0u64,
        bytes.out = 371u64,
        body.complete = true,
        upstream_ms = 0.92957,
        duration_ms = 0.9786930000000001,
        "{}",
        if denied { "request refused" } else { "request answered" }
    );
}

/// Allocations (count, bytes) for one line through `subscriber`, after one warm-up line.
fn per_line(subscriber: impl tracing::Subscriber + Send + Sync) -> (u64, u64) {
    let peer = SocketAddr::from(([10, 20, 30, 40], 51_234));
    let subject = "CN=acme-billing, O=Acme Corp, C=DE \"quoted\"\n".to_owned();
    let sha256 = "f1f156676f3ef6a233f23411c6ac2f5a4467711254ae041a57c5827e30373cc7";
    let line = || request_line(peer, &subject, "5D0A3C1F9E2B7744", sha256, "/v1/orders/42");
    tracing::subscriber::with_default(subscriber, || {
        line();
        let info = allocation_counter::measure(line);
        (info.count_total, info.bytes_total)
    })
}

#[test]
fn a_request_audit_line_allocates_nothing_once_warm() {
    let new = per_line(subscriber(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false,
    ));
    let old = per_line(
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish(),
    );
    eprintln!(
        "allocations per request line: tracing-subscriber JSON {} ({} bytes), certgate {} ({} bytes)",
        old.0, old.1, new.0, new.1
    );
    assert_eq!(new, (0, 0), "the audit line allocated");
    // A zero above means something only if the counter counts in this binary.
    let control = allocation_counter::measure(|| drop(std::hint::black_box(vec![0u8; 8])));
    assert_eq!(control.count_total, 1);
}
