//! Path normalisation and route matching, differentially against a deliberately simple reference
//! written from the documented rules only (no code shared with `certgate::policy`).
//!
//! Input: first byte picks the method, the rest is the request path.
#![no_main]

use std::sync::OnceLock;

use certgate::config::model::{PathMatch, Route, ScopeId, UpstreamId};
use certgate::policy::{path, Denial, RequestFacts, RouteId, RouteTable};
use http::Method;
use libfuzzer_sys::fuzz_target;

/// (path match, methods) in config order.
const ROUTES: &[(bool, &str, Option<&[&str]>)] = &[
    (true, "/v1/orders", Some(&["GET"])),
    (false, "/v1/orders", Some(&["POST"])),
    (false, "/v1/", None),
    (true, "/v1/orders/", Some(&["PUT"])),
    (false, "/v1/orders/%2F", Some(&["DELETE"])),
    (false, "/a/b", Some(&["GET", "HEAD"])),
    (false, "/a", Some(&["PATCH"])),
    (true, "/", Some(&["OPTIONS"])),
    (false, "/~x", None),
];

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let routes: Vec<Route> = ROUTES
            .iter()
            .enumerate()
            .map(|(i, (exact, p, methods))| Route {
                name: format!("r{i}"),
                host: None,
                path: if *exact {
                    PathMatch::Exact((*p).to_owned())
                } else {
                    PathMatch::Prefix((*p).to_owned())
                },
                methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
                scope: ScopeId(0),
                upstream: UpstreamId(0),
                max_body_bytes: None,
            })
            .collect();
        RouteTable::build(&routes)
    })
}

// === reference ===

fn raw_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Decode escapes of unreserved bytes, upper-case the others, refuse anything not allowed raw.
fn ref_escape_pass(p: &str) -> Option<String> {
    let b = p.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = p.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else if raw_ok(b[i]) {
            out.push(b[i] as char);
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

fn ref_normalize(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let decoded = ref_escape_pass(p)?;
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "" => trailing = last,
            "." => trailing = last,
            ".." => {
                stack.pop()?;
                trailing = last;
            }
            s => {
                stack.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::from("/");
    out.push_str(&stack.join("/"));
    if trailing && !stack.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn ref_prefix_covers(prefix: &str, p: &str) -> bool {
    if prefix.ends_with('/') {
        return p.starts_with(prefix);
    }
    p == prefix || p.starts_with(&format!("{prefix}/"))
}

fn ref_decide(method: &str, p: &str) -> Result<usize, Denial> {
    let Some(p) = ref_normalize(p) else {
        return Err(Denial::BadPath);
    };
    let mut candidates: Vec<usize> = (0..ROUTES.len())
        .filter(|&i| ROUTES[i].0 && ROUTES[i].1 == p)
        .collect();
    let mut prefixes: Vec<usize> = (0..ROUTES.len())
        .filter(|&i| !ROUTES[i].0 && ref_prefix_covers(ROUTES[i].1, &p))
        .collect();
    // Longest prefix first; equal lengths by path, then config order (stable sort).
    prefixes.sort_by(|&a, &b| {
        ROUTES[b]
            .1
            .len()
            .cmp(&ROUTES[a].1.len())
            .then(ROUTES[a].1.cmp(ROUTES[b].1))
    });
    candidates.extend(prefixes);
    if candidates.is_empty() {
        return Err(Denial::NoRoute);
    }
    candidates
        .into_iter()
        // A route without a method list allows every method but CONNECT.
        .find(|&i| match ROUTES[i].2 {
            None => method != "CONNECT",
            Some(ms) => ms.contains(&method),
        })
        .ok_or(Denial::MethodNotAllowed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(p) = std::str::from_utf8(rest) else {
        return;
    };
    let method_name = METHODS[usize::from(m) % METHODS.len()];
    let method: Method = method_name.parse().unwrap();

    let ours = path::normalize(p).map(|c| c.into_owned()).ok();
    let reference = ref_normalize(p);
    assert_eq!(ours, reference, "normalize({p:?})");
    if let Some(n) = &ours {
        // Idempotent: a normalised path is already normal.
        assert_eq!(path::normalize(n).ok().as_deref(), Some(n.as_str()));
    }

    let facts = RequestFacts {
        method: &method,
        host: None,
        sni: None,
        path: p,
    };
    let got = table().decide(facts, &[ScopeId(0)]).map(|a| {
        assert_eq!(Some(a.path.as_ref()), ours.as_deref());
        let RouteId(i) = a.route;
        i
    });
    assert_eq!(got, ref_decide(method_name, p), "{method_name} {p:?}");
});
