//! `decide` and `normalize` against reference models written to be obviously right rather than
//! fast: a split-and-stack normaliser, a table of host spellings with their known meaning, and a
//! matcher that ranks every route by a sort key and takes the first. None of them shares code with
//! the implementation.

use std::cmp::Reverse;

use http::Method;
use proptest::prelude::*;
use proptest::sample::select;

use super::path::normalize;
use super::{Denial, RequestFacts, RouteTable};
use crate::config::model::{PathMatch, Route, ScopeId, UpstreamId};

// === reference path normaliser ===

const UNRESERVED: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
const RAW_OK: &str =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%";
const HEX: &str = "0123456789ABCDEF";

/// Decodes one raw segment (it holds no `/`), or `None` when it holds a broken escape or a byte not
/// allowed raw.
fn ref_decode_segment(seg: &str) -> Option<String> {
    let chars: Vec<char> = seg.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if !RAW_OK.contains(c) {
            return None;
        }
        if c != '%' {
            out.push(c);
            i += 1;
            continue;
        }
        let hi = chars.get(i + 1)?.to_ascii_uppercase();
        let lo = chars.get(i + 2)?.to_ascii_uppercase();
        let value = HEX.find(hi)? * 16 + HEX.find(lo)?;
        let decoded = char::from(u8::try_from(value).ok()?);
        if UNRESERVED.contains(decoded) {
            out.push(decoded);
        } else {
            out.push('%');
            out.push(hi);
            out.push(lo);
        }
        i += 3;
    }
    Some(out)
}

fn ref_normalize(path: &str) -> Result<String, Denial> {
    let rest = path.strip_prefix('/').ok_or(Denial::BadPath)?;
    let segments: Vec<String> = rest
        .split('/')
        .map(ref_decode_segment)
        .collect::<Option<_>>()
        .ok_or(Denial::BadPath)?;
    let mut stack: Vec<&str> = Vec::new();
    for seg in &segments {
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                stack.pop().ok_or(Denial::BadPath)?;
            }
            s => stack.push(s),
        }
    }
    let ends_with_dir = matches!(segments.last().map(String::as_str), Some("" | "." | ".."));
    let mut out = format!("/{}", stack.join("/"));
    if ends_with_dir && !stack.is_empty() {
        out.push('/');
    }
    Ok(out)
}

// === reference host handling ===

/// Host header spellings with what they mean: `Some(canonical)` or `None` for malformed.
const HOST_HEADERS: &[(&str, Option<&str>)] = &[
    ("a.example", Some("a.example")),
    ("A.Example:8443", Some("a.example")),
    ("a.example.", Some("a.example")),
    ("a.example.:443", Some("a.example")),
    ("b.example", Some("b.example")),
    ("B.EXAMPLE:1", Some("b.example")),
    ("c.example", Some("c.example")),
    ("[::1]:8443", Some("::1")),
    ("[::1]", Some("::1")),
    ("10.0.0.1:443", Some("10.0.0.1")),
    ("a.example:x", None),
    ("", None),
    ("[::1", None),
    ("a example", None),
];

/// A Host header as sent, with its canonical meaning (`None`: malformed).
type HostHeader = (&'static str, Option<&'static str>);

/// An SNI as sent, with its canonical form.
type Sni = (&'static str, &'static str);

/// How many of [`HOST_HEADERS`] come first with a meaning.
const WELL_FORMED_HOST_HEADERS: usize = 10;

/// SNI spellings with their canonical form.
const SNIS: &[(&str, &str)] = &[
    ("a.example", "a.example"),
    ("A.EXAMPLE.", "a.example"),
    ("b.example", "b.example"),
];

/// Route hosts with their canonical form.
const ROUTE_HOSTS: &[(&str, &str)] = &[
    ("a.example", "a.example"),
    ("b.example", "b.example"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("10.0.0.1", "10.0.0.1"),
];

fn ref_host(
    host: Option<(&str, Option<&str>)>,
    sni: Option<(&str, &str)>,
) -> Result<Option<String>, Denial> {
    let host = match host {
        None | Some(("", _)) => None,
        Some((_, None)) => return Err(Denial::HostMismatch),
        Some((_, Some(canonical))) => Some(canonical),
    };
    let sni = sni.map(|(_, canonical)| canonical);
    match (host, sni) {
        (Some(h), Some(s)) if h != s => Err(Denial::HostMismatch),
        (h, s) => Ok(h.or(s).map(str::to_owned)),
    }
}

// === reference matcher ===

/// A route as the test generates it, keeping the canonical host beside the configured one.
#[derive(Debug, Clone)]
struct GenRoute {
    host: Option<(&'static str, &'static str)>,
    path: PathMatch,
    methods: Option<Vec<Method>>,
    scope: ScopeId,
}

fn ref_prefix_covers(prefix: &str, path: &str) -> bool {
    let dir = format!("{}/", prefix.trim_end_matches('/'));
    path == prefix || path.starts_with(&dir)
}

/// The expected decision, and the expected `Allow` methods when it is `MethodNotAllowed`.
fn ref_decide(
    routes: &[GenRoute],
    method: &Method,
    host: Option<(&str, Option<&str>)>,
    sni: Option<(&str, &str)>,
    path: &str,
    scopes: &[ScopeId],
) -> (Result<(usize, String), Denial>, Vec<Method>) {
    let result = (|| {
        let host = ref_host(host, sni)?;
        let path = ref_normalize(path)?;
        Ok((host, path))
    })();
    let (host, path) = match result {
        Ok(hp) => hp,
        Err(e) => return (Err(e), Vec::new()),
    };
    let mut matching: Vec<(usize, &GenRoute)> = routes
        .iter()
        .enumerate()
        .filter(|(_, r)| match r.host {
            None => true,
            Some((_, canonical)) => host.as_deref() == Some(canonical),
        })
        .filter(|(_, r)| match &r.path {
            PathMatch::Exact(p) => *p == path,
            PathMatch::Prefix(p) => ref_prefix_covers(p, &path),
        })
        .collect();
    matching.sort_by_key(|(i, r)| {
        let (exact, len) = match &r.path {
            PathMatch::Exact(p) => (true, p.len()),
            PathMatch::Prefix(p) => (false, p.len()),
        };
        (r.host.is_none(), !exact, Reverse(len), *i)
    });
    if matching.is_empty() {
        return (Err(Denial::NoRoute), Vec::new());
    }
    let chosen = matching.iter().find(|(_, r)| match &r.methods {
        None => *method != Method::CONNECT,
        Some(ms) => ms.contains(method),
    });
    match chosen {
        Some((i, r)) if scopes.contains(&r.scope) => (Ok((*i, path)), Vec::new()),
        Some(_) => (Err(Denial::ScopeDenied), Vec::new()),
        None => {
            let mut allow: Vec<Method> = matching
                .iter()
                .flat_map(|(_, r)| r.methods.clone().unwrap_or_default())
                .collect();
            allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            allow.dedup();
            (Err(Denial::MethodNotAllowed), allow)
        }
    }
}

// === strategies ===

const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::HEAD,
    Method::DELETE,
    Method::CONNECT,
];

const ROUTE_PATHS: &[&str] = &[
    "/",
    "/v1",
    "/v1/",
    "/v1/orders",
    "/v1/orders/",
    "/v1/ordersX",
    "/v1/orders/7",
    "/admin",
    "/v1%2Forders",
];

const PATH_TOKENS: &[&str] = &[
    "v1",
    "orders",
    "ordersX",
    "7",
    "admin",
    ".",
    "..",
    "%2e%2E",
    "%2E",
    "%76%31",
    "%76%311",
    "%2f",
    "%2F",
    "",
    "%6Frders",
    "ord%65rs",
    "x",
    "%7e",
    "v1%2forders",
];

/// Tokens that make a path malformed wherever they appear.
const BAD_PATH_TOKENS: &[&str] = &["%", "%4", "%G1", "a b", "a\\b", "\u{e9}"];

fn method() -> impl Strategy<Value = Method> {
    select(METHODS)
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (
        prop::option::weighted(0.4, select(ROUTE_HOSTS)),
        select(ROUTE_PATHS),
        any::<bool>(),
        prop::option::weighted(0.6, prop::sample::subsequence(METHODS, 0..=3)),
        0..3usize,
    )
        .prop_map(|(host, path, exact, methods, scope)| GenRoute {
            host,
            path: if exact {
                PathMatch::Exact(path.to_owned())
            } else {
                PathMatch::Prefix(path.to_owned())
            },
            methods,
            scope: ScopeId(scope),
        })
}

/// Paths built from tokens, or from a route's path with a few tokens after it (so that routes
/// match often enough to test the ranking).
fn request_path() -> impl Strategy<Value = String> {
    let near_route = (
        select(ROUTE_PATHS),
        prop::collection::vec(select(PATH_TOKENS), 0..3),
    )
        .prop_map(|(base, tail)| {
            if tail.is_empty() {
                base.to_owned()
            } else {
                format!("{base}/{}", tail.join("/"))
            }
        });
    prop_oneof![token_path(), near_route]
}

fn token_path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.97),
        prop::collection::vec(
            prop_oneof![20 => select(PATH_TOKENS), 1 => select(BAD_PATH_TOKENS)],
            0..6,
        ),
    )
        .prop_map(|(rooted, tokens)| {
            let joined = tokens.join("/");
            if rooted {
                format!("/{joined}")
            } else {
                joined
            }
        })
}

/// A Host header and an SNI, mostly for the same name (in any spelling) so that most cases get
/// past the Host check and exercise the matcher.
fn host_and_sni() -> impl Strategy<Value = (Option<HostHeader>, Option<Sni>)> {
    let independent = (
        prop::option::weighted(0.8, select(HOST_HEADERS)),
        prop::option::weighted(0.7, select(SNIS)),
    );
    let agreeing = (
        prop::option::weighted(
            0.8,
            prop_oneof![
                8 => select(&HOST_HEADERS[..WELL_FORMED_HOST_HEADERS]),
                1 => select(&HOST_HEADERS[WELL_FORMED_HOST_HEADERS..]),
            ],
        ),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(host, pick, with_sni)| {
            let canonical = host.and_then(|(_, c)| c);
            let same: Vec<_> = SNIS
                .iter()
                .filter(|(_, c)| canonical.is_none_or(|h| h == *c))
                .copied()
                .collect();
            let sni = (with_sni && !same.is_empty()).then(|| *pick.get(&same));
            (host, sni)
        });
    prop_oneof![1 => independent, 3 => agreeing]
}

fn to_route(r: &GenRoute) -> Route {
    Route {
        name: "generated".to_owned(),
        host: r.host.map(|(configured, _)| configured.to_owned()),
        path: r.path.clone(),
        methods: r.methods.clone(),
        scope: r.scope,
        upstream: UpstreamId(0),
        max_body_bytes: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decide_agrees_with_the_reference_matcher(
        routes in prop::collection::vec(gen_route(), 0..8),
        method in method(),
        (host, sni) in host_and_sni(),
        path in request_path(),
        scopes in prop::sample::subsequence(vec![ScopeId(0), ScopeId(1), ScopeId(2)], 0..=3),
    ) {
        let table = RouteTable::build(&routes.iter().map(to_route).collect::<Vec<_>>());
        let facts = RequestFacts {
            method: &method,
            host: host.map(|(raw, _)| raw),
            sni: sni.map(|(raw, _)| raw),
            path: &path,
        };
        let got = table
            .decide(facts, &scopes)
            .map(|allowed| (allowed.route.0, allowed.path.into_owned()));
        let (want, want_allow) = ref_decide(&routes, &method, host, sni, &path, &scopes);
        prop_assert_eq!(&got, &want);
        if want == Err(Denial::MethodNotAllowed) {
            let mut allow = table.allowed_methods(facts);
            let len = allow.len();
            allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            allow.dedup();
            prop_assert_eq!(len, allow.len(), "allowed_methods repeats a method");
            prop_assert_eq!(allow, want_allow);
        }
    }

    #[test]
    fn normalize_agrees_with_the_reference_normaliser(path in request_path()) {
        let got = normalize(&path).map(std::borrow::Cow::into_owned);
        prop_assert_eq!(got, ref_normalize(&path));
    }

    #[test]
    fn normalize_borrows_exactly_when_nothing_changes_and_is_idempotent(
        path in request_path(),
    ) {
        if let Ok(normal) = normalize(&path) {
            let borrowed = matches!(normal, std::borrow::Cow::Borrowed(_));
            prop_assert_eq!(borrowed, *normal == *path);
            prop_assert!(
                matches!(normalize(&normal), Ok(std::borrow::Cow::Borrowed(_))),
                "{:?} normalised to {:?}, which is not normal", path, normal
            );
        }
    }

    #[test]
    fn normalize_handles_arbitrary_input_like_the_reference(path in "/?[a-zA-Z0-9%./~_ -]{0,24}") {
        let got = normalize(&path).map(std::borrow::Cow::into_owned);
        prop_assert_eq!(got, ref_normalize(&path));
    }
}
