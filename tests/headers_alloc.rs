//! Header rewriting allocates nothing for a request that carries nothing to strip.
//!
//! `rewrite_request` runs on every request and checks every header name against the compiled
//! strip list (other front ends' identity headers plus `forward.strip_headers`). That check must
//! cost byte compares only: a list of names to remove is built only when one matches.
//!
//! `allocation_counter` counts allocations of the calling thread only, so tests running in parallel
//! do not disturb each other.

use certgate::config::model::{ClientCertHeader, Forward, StripHeaders};
use certgate::proxy::headers::ConnectionHeaders;
use http::header::{HeaderMap, HeaderName, HeaderValue};

fn forward() -> Forward {
    Forward {
        client_cert_header: ClientCertHeader::None,
        partner_header: HeaderName::from_static("x-partner-id"),
        strip_headers: StripHeaders::with_defaults(["X-Acme-*", "X-Debug-User"]),
    }
}

fn request(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(32);
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "partner-sdk/2.1"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("x-request-id", "r-1"),
        ("x-client-version", "2.1"),
        ("authorization", "Bearer abc"),
    ]
    .iter()
    .chain(extra)
    {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

#[test]
fn a_request_without_headers_to_strip_allocates_nothing() {
    let forward = forward();
    let conn = ConnectionHeaders::default();
    for extra in [
        &[][..],
        // `Connection` sends the rewrite down its slower path, which still has nothing to strip.
        &[("connection", "keep-alive")][..],
        &[("connection", "keep-alive, host")][..],
    ] {
        let mut headers = request(extra);
        let info = allocation_counter::measure(|| {
            conn.rewrite_request(&mut headers, &forward, false);
        });
        assert_eq!(info.count_total, 0, "{extra:?}");
        assert!(headers.contains_key("x-request-id") && headers.contains_key("host"));
    }
}

#[test]
fn a_request_with_headers_to_strip_loses_them() {
    let forward = forward();
    let conn = ConnectionHeaders::default();
    let mut headers = request(&[
        ("x-ssl-client-verify", "SUCCESS"),
        ("x-acme-role", "admin"),
        ("x-real-ip", "10.0.0.1"),
    ]);
    conn.rewrite_request(&mut headers, &forward, false);
    for name in ["x-ssl-client-verify", "x-acme-role", "x-real-ip"] {
        assert!(!headers.contains_key(name), "{name}");
    }
    assert_eq!(headers.len(), 8);
}
