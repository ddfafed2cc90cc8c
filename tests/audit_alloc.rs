//! Writing a request's audit line allocates nothing once the thread's line buffer has grown.
//!
//! The line is written on every request, on the request's own task; only the hand-off to the log
//! writer thread (one `Vec` per line, in tracing-appender) is left, and that is not measured here:
//! the writer is `io::sink`. Both ways of writing it are measured: as a tracing event through
//! certgate's JSON formatter (the fallback), and straight to the installed writer (what the
//! gateway does). tracing-subscriber's own JSON formatter, which certgate used before, is
//! measured alongside for the record.
//!
//! `allocation_counter` counts allocations of the calling thread only, so tests running in parallel
//! do not disturb each other.

use certgate::audit::request::{certificate_json, Connection, RequestLine};
use certgate::audit::{install, subscriber, LogFormat};
use tracing_subscriber::EnvFilter;

const SERIAL: &str = "5D0A3C1F9E2B7744";
const SHA256: &str = "f1f156676f3ef6a233f23411c6ac2f5a4467711254ae041a57c5827e30373cc7";

/// A request line with the values a request has by then; `certificate_json` as the connection's
/// chain holds it, or `None`.
fn request<'a>(
    subject: &'a str,
    path: &'a str,
    certificate_json: Option<&'a str>,
) -> RequestLine<'a> {
    RequestLine {
        conn: Connection {
            id: 184_467,
            client_addr: "10.20.30.40:51234",
            sni: "api.partners.example.com",
            partner: "acme",
            subject,
            serial: SERIAL,
            sha256: SHA256,
            certificate_json,
        },
        denied: false,
        reason: "ok",
        route: "orders-read",
        upstream: "orders",
        method: "GET",
        path,
        status: 200,
        bytes_in: 0,
        bytes_out: 371,
        complete: true,
        upstream_ms: 0.92957,
        duration_ms: 0.9786930000000001,
    }
}

const SUBJECT: &str = "CN=acme-billing, O=Acme Corp, C=DE \"quoted\"\n";

/// Allocations (count, bytes) for one line as a tracing event through `subscriber`, after one
/// warm-up line.
fn per_event(subscriber: impl tracing::Subscriber + Send + Sync) -> (u64, u64) {
    let line = request(SUBJECT, "/v1/orders/42", None);
    tracing::subscriber::with_default(subscriber, || {
        line.event();
        let info = allocation_counter::measure(|| line.event());
        (info.count_total, info.bytes_total)
    })
}

#[test]
fn a_request_audit_line_allocates_nothing_once_warm() {
    let new = per_event(subscriber(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false,
    ));
    let old = per_event(
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
    assert_eq!(new, (0, 0), "the audit event allocated");

    // The way the gateway writes it: straight to the installed writer. (The only global
    // subscriber of this test binary.)
    assert!(install(
        LogFormat::Json,
        EnvFilter::new("info"),
        std::io::sink,
        false
    ));
    let rendered = certificate_json(SUBJECT, SERIAL, SHA256);
    let line = request(SUBJECT, "/v1/orders/42", Some(&rendered));
    line.emit();
    let direct = allocation_counter::measure(|| line.emit());
    eprintln!(
        "allocations per direct request line: {} ({} bytes)",
        direct.count_total, direct.bytes_total
    );
    assert_eq!(direct.count_total, 0, "the direct audit line allocated");
    // Still allocation-free for a line longer than the first: the buffer only grows.
    let long_path = format!("/v1/orders/{}", "9".repeat(900));
    let longer = request(SUBJECT, &long_path, Some(&rendered));
    longer.emit();
    assert_eq!(allocation_counter::measure(|| longer.emit()).count_total, 0);
    // And written from the fields, as a line without the rendered part is.
    let unrendered = request(SUBJECT, "/v1/orders/42", None);
    assert_eq!(
        allocation_counter::measure(|| unrendered.emit()).count_total,
        0
    );
    // A zero above means something only if the counter counts in this binary.
    let control = allocation_counter::measure(|| drop(std::hint::black_box(vec![0u8; 8])));
    assert_eq!(control.count_total, 1);
}
