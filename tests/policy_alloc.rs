//! The steady-state policy decision allocates nothing.
//!
//! `decide` runs on every request, so it must not build strings, lower-case hosts into new buffers or
//! collect candidates. The only allocation allowed is the one `String` for a path that needed
//! normalising, which is returned to the caller as the path to forward.
//!
//! `allocation_counter` counts allocations of the calling thread only, so tests running in parallel
//! do not disturb each other.

use std::borrow::Cow;

use certgate::config::model::{PathMatch, Route, ScopeId, UpstreamId};
use certgate::policy::{Denial, RequestFacts, RouteTable};
use http::Method;

fn route(host: Option<&str>, path: PathMatch, methods: Option<Vec<Method>>, scope: usize) -> Route {
    Route {
        name: "r".to_owned(),
        host: host.map(str::to_owned),
        path,
        methods,
        scope: ScopeId(scope),
        upstream: UpstreamId(0),
        max_body_bytes: None,
    }
}

/// A table shaped like a real one: several hosts, exact routes, nested prefixes, method sets.
fn table() -> RouteTable {
    let mut routes = vec![
        route(
            Some("api.example"),
            PathMatch::Exact("/v1/orders".to_owned()),
            Some(vec![Method::GET, Method::POST]),
            0,
        ),
        route(
            Some("api.example"),
            PathMatch::Prefix("/v1/orders".to_owned()),
            Some(vec![Method::GET]),
            0,
        ),
        route(
            Some("api.example"),
            PathMatch::Prefix("/admin".to_owned()),
            None,
            1,
        ),
        route(
            None,
            PathMatch::Prefix("/v1/".to_owned()),
            Some(vec![Method::GET]),
            2,
        ),
        route(None, PathMatch::Exact("/healthz".to_owned()), None, 2),
    ];
    for i in 0..50 {
        routes.push(route(
            Some(&format!("tenant{i}.example")),
            PathMatch::Prefix(format!("/t/{i}")),
            None,
            0,
        ));
    }
    RouteTable::build(&routes)
}

fn facts<'a>(method: &'a Method, host: &'a str, path: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        method,
        host: Some(host),
        sni: Some("api.example"),
        path,
    }
}

const SCOPES: &[ScopeId] = &[ScopeId(0), ScopeId(2)];

#[test]
fn deciding_on_a_normal_path_allocates_nothing() {
    let table = table();
    let cases = [
        (Method::GET, "api.example", "/v1/orders"),
        (Method::POST, "API.Example:8443", "/v1/orders"),
        (Method::GET, "api.example.", "/v1/orders/7/items"),
        (Method::GET, "api.example", "/v1/other/"),
        (Method::GET, "api.example", "/healthz"),
    ];
    for (method, host, path) in &cases {
        let mut decision = None;
        let info = allocation_counter::measure(|| {
            decision = Some(table.decide(facts(method, host, path), SCOPES));
        });
        assert!(
            matches!(decision, Some(Ok(ref a)) if matches!(a.path, Cow::Borrowed(_))),
            "{method} {host} {path}: {decision:?}"
        );
        assert_eq!(info.count_total, 0, "{method} {host} {path} allocated");
    }
}

#[test]
fn refusing_allocates_nothing() {
    let table = table();
    let cases = [
        (Method::GET, "api.example", "/nothing/here", Denial::NoRoute),
        (
            Method::DELETE,
            "api.example",
            "/v1/orders",
            Denial::MethodNotAllowed,
        ),
        (
            Method::GET,
            "api.example",
            "/admin/users",
            Denial::ScopeDenied,
        ),
        (
            Method::GET,
            "evil.example",
            "/v1/orders",
            Denial::HostMismatch,
        ),
        (Method::GET, "api.example", "/v1/../../etc", Denial::BadPath),
        (Method::GET, "api.example", "/a%G1", Denial::BadPath),
    ];
    for (method, host, path, want) in &cases {
        let mut decision = None;
        let info = allocation_counter::measure(|| {
            decision = Some(table.decide(facts(method, host, path), SCOPES));
        });
        assert_eq!(decision, Some(Err(*want)), "{method} {host} {path}");
        assert_eq!(info.count_total, 0, "{method} {host} {path} allocated");
    }
}

#[test]
fn a_path_that_needs_normalising_allocates_once() {
    let table = table();
    for path in [
        "/v1//orders",
        "/%761/orders",
        "/v1/x/../orders/7",
        "/v1/orders/%2f",
    ] {
        let mut decision = None;
        let info = allocation_counter::measure(|| {
            decision = Some(table.decide(facts(&Method::GET, "api.example", path), SCOPES));
        });
        assert!(
            matches!(decision, Some(Ok(ref a)) if matches!(a.path, Cow::Owned(_))),
            "{path}: {decision:?}"
        );
        assert_eq!(info.count_total, 1, "{path}");
    }
}
proptest::proptest! {
    /// Borrowed or refused: nothing; rewritten: exactly the one `String` returned.
    #[test]
    fn normalize_allocates_at_most_once_and_only_for_a_rewritten_path(
        path in "/?([a-zA-Z0-9./~_ -]|%[0-9a-fA-FgG]{0,2}){0,24}",
    ) {
        let mut result = None;
        let info = allocation_counter::measure(|| {
            result = Some(certgate::policy::path::normalize(&path));
        });
        let want = match result {
            Some(Ok(Cow::Owned(_))) => 1,
            _ => 0,
        };
        proptest::prop_assert_eq!(info.count_total, want, "{:?} -> {:?}", path, result);
    }
}
