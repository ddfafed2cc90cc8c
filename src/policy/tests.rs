//! Decisions on small, hand-written route tables: each test is one rule or one trick.

use std::borrow::Cow;

use http::Method;

use super::{Allowed, Denial, RequestFacts, RouteId, RouteTable};
use crate::config::model::{PathMatch, Route, ScopeId, UpstreamId};

const ORDERS: ScopeId = ScopeId(0);
const ADMIN: ScopeId = ScopeId(1);
const OTHER: ScopeId = ScopeId(2);

fn route(host: Option<&str>, path: PathMatch, methods: Option<&[Method]>, scope: ScopeId) -> Route {
    Route {
        name: "r".to_owned(),
        host: host.map(str::to_owned),
        path,
        methods: methods.map(<[Method]>::to_vec),
        scope,
        upstream: UpstreamId(0),
        max_body_bytes: None,
    }
}

fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.to_owned())
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.to_owned())
}

fn req<'a>(method: &'a Method, host: Option<&'a str>, path: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        method,
        host,
        sni: host,
        path,
    }
}

fn get(path: &str) -> RequestFacts<'_> {
    req(&Method::GET, Some("api.example"), path)
}

fn allowed(route: usize, path: &str) -> Result<Allowed<'static>, Denial> {
    Ok(Allowed {
        route: RouteId(route),
        path: Cow::Owned(path.to_owned()),
    })
}

const ALL: &[ScopeId] = &[ORDERS, ADMIN, OTHER];

/// One exact `/v1/orders` route (0) for scope ORDERS, and a prefix `/admin` (1) for scope ADMIN.
fn orders_and_admin() -> RouteTable {
    RouteTable::build(&[
        route(None, exact("/v1/orders"), None, ORDERS),
        route(None, prefix("/admin"), None, ADMIN),
    ])
}

#[test]
fn path_tricks_are_normalised_before_matching_and_the_normal_path_is_forwarded() {
    let table = orders_and_admin();
    for p in [
        "/v1//orders",
        "/v1/./orders",
        "/v1/x/../orders",
        "/%761/orders",
        "/v1/%6F%72ders",
        "//v1/orders",
    ] {
        assert_eq!(table.decide(get(p), ALL), allowed(0, "/v1/orders"), "{p:?}");
    }
}

#[test]
fn an_already_normal_path_is_forwarded_borrowed() {
    let table = orders_and_admin();
    let decision = table.decide(get("/v1/orders"), ALL);
    assert!(matches!(
        decision,
        Ok(Allowed {
            path: Cow::Borrowed("/v1/orders"),
            ..
        })
    ));
}

#[test]
fn an_encoded_dot_dot_cannot_climb_out_of_a_route_the_partner_holds() {
    let table = RouteTable::build(&[
        route(None, prefix("/v1/"), None, ORDERS),
        route(None, prefix("/admin"), None, ADMIN),
    ]);
    assert_eq!(
        table.decide(get("/v1/%2e%2e/admin"), &[ORDERS]),
        Err(Denial::ScopeDenied)
    );
    assert_eq!(
        table.decide(get("/v1/%2E%2e/admin/users"), &[ADMIN]),
        allowed(1, "/admin/users")
    );
}

#[test]
fn climbing_above_the_root_is_a_bad_path() {
    let table = RouteTable::build(&[route(None, prefix("/"), None, ORDERS)]);
    for p in [
        "/..",
        "/v1/../../etc",
        "/%2e%2e/etc",
        "/v1/%2E%2E/%2e%2e/etc",
    ] {
        assert_eq!(table.decide(get(p), ALL), Err(Denial::BadPath), "{p:?}");
    }
}

#[test]
fn malformed_paths_are_bad_paths_even_under_a_catch_all_route() {
    let table = RouteTable::build(&[route(None, prefix("/"), None, ORDERS)]);
    for p in [
        "", "v1", "/%", "/%G1", "/%4", "/a b", "/a\\b", "/a#b", "/\u{e9}",
    ] {
        assert_eq!(table.decide(get(p), ALL), Err(Denial::BadPath), "{p:?}");
    }
}

#[test]
fn an_encoded_slash_stays_encoded_and_is_not_a_segment_boundary() {
    let table = RouteTable::build(&[route(None, prefix("/v1/orders"), None, ORDERS)]);
    assert_eq!(table.decide(get("/v1%2Forders"), ALL), Err(Denial::NoRoute));
    assert_eq!(table.decide(get("/v1%2forders"), ALL), Err(Denial::NoRoute));
    assert_eq!(
        table.decide(get("/v1/orders/a%2fb"), ALL),
        allowed(0, "/v1/orders/a%2Fb")
    );
}

#[test]
fn mixed_case_escapes_forward_one_spelling() {
    let table = RouteTable::build(&[route(None, prefix("/v1/orders"), None, ORDERS)]);
    for p in [
        "/v1/orders/%c3%A9",
        "/v1/orders/%C3%a9",
        "/v1/orders/%c3%a9",
    ] {
        assert_eq!(
            table.decide(get(p), ALL),
            allowed(0, "/v1/orders/%C3%A9"),
            "{p:?}"
        );
    }
}

#[test]
fn prefixes_match_at_segment_boundaries_only() {
    let table = RouteTable::build(&[route(None, prefix("/v1/orders"), None, ORDERS)]);
    for p in [
        "/v1/orders",
        "/v1/orders/",
        "/v1/orders/7",
        "/v1/orders/7/items",
    ] {
        assert!(table.decide(get(p), ALL).is_ok(), "{p:?}");
    }
    for p in ["/v1/ordersX", "/v1/order", "/v1", "/v1/", "/v2/orders"] {
        assert_eq!(table.decide(get(p), ALL), Err(Denial::NoRoute), "{p:?}");
    }
}

#[test]
fn a_prefix_ending_in_a_slash_matches_everything_below_it() {
    let table = RouteTable::build(&[
        route(None, prefix("/"), None, ORDERS),
        route(None, prefix("/v1/"), None, ADMIN),
    ]);
    assert_eq!(table.decide(get("/"), ALL), allowed(0, "/"));
    assert_eq!(
        table.decide(get("/anything/at/all"), ALL),
        allowed(0, "/anything/at/all")
    );
    assert_eq!(table.decide(get("/v1/x"), ALL), allowed(1, "/v1/x"));
    // `/v1/` does not cover `/v1` itself: the prefix asks for the slash.
    assert_eq!(table.decide(get("/v1"), ALL), allowed(0, "/v1"));
}

#[test]
fn trailing_slashes_are_kept_and_an_exact_route_does_not_ignore_them() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/orders"), None, ORDERS),
        route(None, exact("/v1/orders/"), None, ADMIN),
    ]);
    assert_eq!(
        table.decide(get("/v1/orders"), ALL),
        allowed(0, "/v1/orders")
    );
    assert_eq!(
        table.decide(get("/v1/orders/"), ALL),
        allowed(1, "/v1/orders/")
    );
    assert_eq!(
        table.decide(get("/v1/orders/."), ALL),
        allowed(1, "/v1/orders/")
    );
    assert_eq!(
        table.decide(get("/v1/orders//"), ALL),
        allowed(1, "/v1/orders/")
    );
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let table = RouteTable::build(&[
        route(None, prefix("/"), None, OTHER),
        route(None, prefix("/v1"), None, OTHER),
        route(None, prefix("/v1/orders"), None, OTHER),
        route(None, exact("/v1/orders"), None, OTHER),
    ]);
    assert_eq!(
        table.decide(get("/v1/orders"), ALL),
        allowed(3, "/v1/orders")
    );
    assert_eq!(
        table.decide(get("/v1/orders/7"), ALL),
        allowed(2, "/v1/orders/7")
    );
    assert_eq!(table.decide(get("/v1/other"), ALL), allowed(1, "/v1/other"));
    assert_eq!(table.decide(get("/v2"), ALL), allowed(0, "/v2"));
}

#[test]
fn host_specific_routes_take_precedence_over_host_less_ones_for_that_host() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/orders"), None, ORDERS),
        route(Some("api.example"), prefix("/"), None, ADMIN),
    ]);
    assert_eq!(
        table.decide(get("/v1/orders"), ALL),
        allowed(1, "/v1/orders")
    );
    let other = req(&Method::GET, Some("other.example"), "/v1/orders");
    assert_eq!(table.decide(other, ALL), allowed(0, "/v1/orders"));
    let other = req(&Method::GET, Some("other.example"), "/v2");
    assert_eq!(table.decide(other, ALL), Err(Denial::NoRoute));
}

#[test]
fn host_matching_ignores_case_port_and_one_trailing_dot() {
    let table = RouteTable::build(&[route(Some("api.example"), prefix("/"), None, ORDERS)]);
    for host in [
        "api.example",
        "API.Example",
        "api.example:8443",
        "Api.Example.:443",
    ] {
        let facts = RequestFacts {
            method: &Method::GET,
            host: Some(host),
            sni: Some("api.example"),
            path: "/",
        };
        assert_eq!(table.decide(facts, ALL), allowed(0, "/"), "{host:?}");
    }
}

#[test]
fn a_host_that_disagrees_with_the_sni_is_misdirected() {
    let table = RouteTable::build(&[route(None, prefix("/"), None, ORDERS)]);
    for host in [
        "other.example",
        "other.example:443",
        "[::1]:443",
        "api.example:x",
    ] {
        let facts = RequestFacts {
            method: &Method::GET,
            host: Some(host),
            sni: Some("api.example"),
            path: "/",
        };
        assert_eq!(
            table.decide(facts, ALL),
            Err(Denial::HostMismatch),
            "{host:?}"
        );
    }
}

#[test]
fn without_a_host_header_the_sni_selects_host_routes() {
    let table = RouteTable::build(&[route(Some("api.example"), prefix("/"), None, ORDERS)]);
    let facts = RequestFacts {
        method: &Method::GET,
        host: None,
        sni: Some("API.example"),
        path: "/x",
    };
    assert_eq!(table.decide(facts, ALL), allowed(0, "/x"));
    let nothing = RequestFacts { sni: None, ..facts };
    assert_eq!(table.decide(nothing, ALL), Err(Denial::NoRoute));
}

#[test]
fn an_ipv6_host_without_sni_matches_a_route_for_that_address() {
    let table = RouteTable::build(&[
        route(Some("[2001:db8::1]"), prefix("/"), None, ORDERS),
        route(Some("::1"), prefix("/"), None, ADMIN),
    ]);
    let facts = |host| RequestFacts {
        method: &Method::GET,
        host: Some(host),
        sni: None,
        path: "/",
    };
    assert_eq!(
        table.decide(facts("[2001:DB8::1]:8443"), ALL),
        allowed(0, "/")
    );
    assert_eq!(table.decide(facts("[::1]"), ALL), allowed(1, "/"));
    assert_eq!(table.decide(facts("[::2]"), ALL), Err(Denial::NoRoute));
}

#[test]
fn methods_are_part_of_the_match_and_fall_through_to_less_specific_routes() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/orders"), Some(&[Method::GET]), ORDERS),
        route(
            None,
            prefix("/v1"),
            Some(&[Method::POST, Method::GET]),
            ADMIN,
        ),
    ]);
    let post = req(&Method::POST, Some("api.example"), "/v1/orders");
    assert_eq!(table.decide(post, ALL), allowed(1, "/v1/orders"));
    assert_eq!(
        table.decide(get("/v1/orders"), ALL),
        allowed(0, "/v1/orders")
    );
}

#[test]
fn method_not_allowed_when_the_path_matched_and_no_route_when_it_did_not() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/orders"), Some(&[Method::GET]), ORDERS),
        route(
            None,
            prefix("/v1"),
            Some(&[Method::POST, Method::GET]),
            ADMIN,
        ),
        route(None, prefix("/v2"), Some(&[Method::PUT]), ADMIN),
    ]);
    let delete = req(&Method::DELETE, Some("api.example"), "/v1/orders");
    assert_eq!(table.decide(delete, ALL), Err(Denial::MethodNotAllowed));
    assert_eq!(
        table.allowed_methods(delete),
        vec![Method::GET, Method::POST]
    );
    let delete_v3 = req(&Method::DELETE, Some("api.example"), "/v3");
    assert_eq!(table.decide(delete_v3, ALL), Err(Denial::NoRoute));
    assert!(table.allowed_methods(delete_v3).is_empty());
}

#[test]
fn head_is_not_implied_by_get() {
    let table = RouteTable::build(&[route(None, prefix("/"), Some(&[Method::GET]), ORDERS)]);
    let head = req(&Method::HEAD, Some("api.example"), "/x");
    assert_eq!(table.decide(head, ALL), Err(Denial::MethodNotAllowed));
    assert_eq!(table.allowed_methods(head), vec![Method::GET]);
}

#[test]
fn a_missing_scope_is_denied_without_falling_through_to_a_route_the_partner_holds() {
    let table = RouteTable::build(&[
        route(None, prefix("/"), None, ORDERS),
        route(None, exact("/admin"), None, ADMIN),
    ]);
    assert_eq!(
        table.decide(get("/admin"), &[ORDERS]),
        Err(Denial::ScopeDenied)
    );
    assert_eq!(table.decide(get("/admin"), &[ADMIN]), allowed(1, "/admin"));
    assert_eq!(table.decide(get("/x"), &[]), Err(Denial::ScopeDenied));
    assert_eq!(table.decide(get("/x"), &[ORDERS, OTHER]), allowed(0, "/x"));
}

#[test]
fn routes_sharing_a_host_and_path_are_tried_in_config_order() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/orders"), Some(&[Method::GET]), ORDERS),
        route(None, exact("/v1/orders"), None, ADMIN),
        route(None, exact("/v1/orders"), None, OTHER),
    ]);
    assert_eq!(
        table.decide(get("/v1/orders"), ALL),
        allowed(0, "/v1/orders")
    );
    let put = req(&Method::PUT, Some("api.example"), "/v1/orders");
    assert_eq!(table.decide(put, ALL), allowed(1, "/v1/orders"));
}

#[test]
fn route_paths_are_normalised_at_build_and_unusable_ones_left_out() {
    let table = RouteTable::build(&[
        route(None, exact("/v1/%7eorders"), None, ORDERS),
        route(None, prefix("/../x"), None, ORDERS),
        route(None, prefix("x"), None, ORDERS),
        route(None, prefix("/v2//a/"), None, ORDERS),
    ]);
    assert_eq!(
        table.decide(get("/v1/~orders"), ALL),
        allowed(0, "/v1/~orders")
    );
    assert_eq!(
        table.decide(get("/v1/%7Eorders"), ALL),
        allowed(0, "/v1/~orders")
    );
    assert_eq!(table.decide(get("/x"), ALL), Err(Denial::NoRoute));
    assert_eq!(table.decide(get("/v2/a/b"), ALL), allowed(3, "/v2/a/b"));
}

#[test]
fn an_empty_table_denies_everything() {
    let table = RouteTable::build(&[]);
    assert_eq!(table.decide(get("/"), ALL), Err(Denial::NoRoute));
    assert_eq!(
        RouteTable::default().decide(get("/"), ALL),
        Err(Denial::NoRoute)
    );
}

#[test]
fn the_host_is_checked_before_the_path() {
    let table = RouteTable::build(&[route(None, prefix("/"), None, ORDERS)]);
    let facts = RequestFacts {
        method: &Method::GET,
        host: Some("other.example"),
        sni: Some("api.example"),
        path: "/..",
    };
    assert_eq!(table.decide(facts, ALL), Err(Denial::HostMismatch));
}
