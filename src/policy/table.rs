//! The precompiled route table and the per-request decision.
//!
//! Everything that can be worked out from the configuration alone is worked out in
//! [`RouteTable::build`], so that [`RouteTable::decide`] only looks things up: one hash lookup for
//! the host, one for an exact path, and a scan of the prefixes longest-first. It allocates nothing
//! unless the request path needs normalising.

use std::collections::HashMap;
use std::ops::ControlFlow;

use http::Method;

use super::host::{self, MAX_HOST_LEN};
use super::{path, Allowed, Denial, RequestFacts, RouteId};
use crate::config::model::{PathMatch, Route, ScopeId};

/// The precompiled route table.
///
/// Candidates for a request are walked from the most specific to the least:
/// 1. routes for the request's host, then host-less routes;
/// 2. within each, the exact path first, then prefixes longest-first;
/// 3. routes that share a host and path in configuration order.
///
/// The first candidate whose method set allows the request's method is chosen, and only then is the
/// partner's scope checked, so a partner without the scope is refused rather than sent to a less
/// specific route that it might hold.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Keyed by the lower-case host without a trailing dot or IPv6 brackets.
    by_host: HashMap<Box<[u8]>, Bucket>,
    any_host: Bucket,
}

/// The routes of one host (or of no host).
#[derive(Debug, Default)]
struct Bucket {
    exact: HashMap<Box<str>, Box<[Entry]>>,
    /// Longest first. No two have the same path, so at most one of a given length can match.
    prefixes: Vec<Prefix>,
}

#[derive(Debug)]
struct Prefix {
    path: Box<str>,
    entries: Box<[Entry]>,
}

/// What the decision needs of a route, copied out of the config so no lookup is indexed.
#[derive(Debug, Clone)]
struct Entry {
    id: RouteId,
    /// `None` allows every method but `CONNECT`.
    methods: Option<Box<[Method]>>,
    scope: ScopeId,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles the routes, keeping their indices as [`RouteId`]s.
    ///
    /// Route paths are normalised like request paths, so `/v1/%7Eorders` in the config matches a
    /// request for `/v1/~orders`. A route whose path cannot be normalised (no leading `/`, a `..`
    /// above the root, a malformed escape) could never match a normalised request path; it is left
    /// out with a warning, and config validation is expected to have refused it already.
    pub fn build(routes: &[Route]) -> Self {
        #[derive(Default)]
        struct Draft {
            exact: HashMap<Box<str>, Vec<Entry>>,
            prefixes: HashMap<Box<str>, Vec<Entry>>,
        }

        let mut by_host: HashMap<Box<[u8]>, Draft> = HashMap::new();
        let mut any_host = Draft::default();
        for (index, route) in routes.iter().enumerate() {
            let (raw, is_prefix) = match &route.path {
                PathMatch::Exact(p) => (p.as_str(), false),
                PathMatch::Prefix(p) => (p.as_str(), true),
            };
            let Ok(path) = path::normalize(raw) else {
                tracing::warn!(
                    route.name = %route.name,
                    route.path = %raw,
                    "route path cannot be normalised; the route is left out"
                );
                continue;
            };
            let entry = Entry {
                id: RouteId(index),
                methods: route.methods.as_deref().map(Box::from),
                scope: route.scope,
            };
            let draft = match &route.host {
                Some(h) => by_host.entry(host::route_host_key(h)).or_default(),
                None => &mut any_host,
            };
            let map = if is_prefix {
                &mut draft.prefixes
            } else {
                &mut draft.exact
            };
            map.entry(Box::from(path.as_ref())).or_default().push(entry);
        }

        let finish = |draft: Draft| {
            let mut prefixes: Vec<Prefix> = draft
                .prefixes
                .into_iter()
                .map(|(path, entries)| Prefix {
                    path,
                    entries: entries.into_boxed_slice(),
                })
                .collect();
            prefixes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));
            Bucket {
                exact: draft
                    .exact
                    .into_iter()
                    .map(|(path, entries)| (path, entries.into_boxed_slice()))
                    .collect(),
                prefixes,
            }
        };
        Self {
            by_host: by_host
                .into_iter()
                .map(|(host, draft)| (host, finish(draft)))
                .collect(),
            any_host: finish(any_host),
        }
    }

    /// Decides whether a request may be forwarded, and on which route and path.
    ///
    /// The checks run in this order, and the first failure is the answer: Host against SNI,
    /// path normalisation, path match, method, scope. `partner_scopes` must be sorted (as
    /// `config::model::Partner::scopes` is).
    ///
    /// `HEAD` is matched exactly as written: a route that lists `GET` but not `HEAD` refuses `HEAD`.
    /// `CONNECT` needs a route that lists it; a route without a method list refuses it.
    /// Deriving `HEAD` from `GET` would let a partner probe a route with a method the operator did
    /// not list, and the config can always list both.
    ///
    /// Allocates only when the path needs normalising (one `String`, returned in
    /// [`Allowed::path`]).
    ///
    /// # Errors
    /// - [`Denial::HostMismatch`]: the Host header is malformed or names another host than the SNI.
    /// - [`Denial::BadPath`]: see [`path::normalize`].
    /// - [`Denial::NoRoute`]: no route's host and path match.
    /// - [`Denial::MethodNotAllowed`]: some route's path matched, none allows the method; get the
    ///   `Allow` header's methods from [`RouteTable::allowed_methods`].
    /// - [`Denial::ScopeDenied`]: the chosen route's scope is not among `partner_scopes`.
    pub fn decide<'a>(
        &self,
        req: RequestFacts<'a>,
        partner_scopes: &[ScopeId],
    ) -> Result<Allowed<'a>, Denial> {
        let host = host::effective_host(req.host, req.sni)?;
        let path = path::normalize(req.path)?;
        let mut path_matched = false;
        let chosen = self.walk(host, &path, |entry| {
            path_matched = true;
            if entry.allows(req.method) {
                ControlFlow::Break(entry)
            } else {
                ControlFlow::Continue(())
            }
        });
        match chosen {
            Some(entry) if partner_scopes.binary_search(&entry.scope).is_ok() => Ok(Allowed {
                route: entry.id,
                path,
            }),
            Some(_) => Err(Denial::ScopeDenied),
            None if path_matched => Err(Denial::MethodNotAllowed),
            None => Err(Denial::NoRoute),
        }
    }

    /// The methods that the routes matching this request's host and path allow, for the `Allow`
    /// header of a 405: each once, in the order the routes are tried (most specific first).
    ///
    /// Meant for the error path after [`RouteTable::decide`] returned
    /// [`Denial::MethodNotAllowed`]; it repeats the host and path work and allocates. It ignores the
    /// request's method and the partner's scopes. It is empty when the request would have been
    /// refused for another reason than its method; a route allowing every method contributes
    /// nothing (a request matching one is never refused for its method).
    pub fn allowed_methods(&self, req: RequestFacts<'_>) -> Vec<Method> {
        let Ok(host) = host::effective_host(req.host, req.sni) else {
            return Vec::new();
        };
        let Ok(path) = path::normalize(req.path) else {
            return Vec::new();
        };
        let mut methods: Vec<Method> = Vec::new();
        self.walk::<()>(host, &path, |entry| {
            for m in entry.methods.iter().flat_map(|ms| ms.iter()) {
                if !methods.contains(m) {
                    methods.push(m.clone());
                }
            }
            ControlFlow::Continue(())
        });
        methods
    }

    /// Calls `visit` on each route whose host and path match, most specific first, until it breaks.
    fn walk<'t, B>(
        &'t self,
        host: Option<&str>,
        path: &str,
        mut visit: impl FnMut(&'t Entry) -> ControlFlow<B>,
    ) -> Option<B> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host_bucket = host
            .and_then(|h| host::lower_into(h, &mut buf))
            .and_then(|key| self.by_host.get(key));
        for bucket in host_bucket.into_iter().chain([&self.any_host]) {
            if let ControlFlow::Break(b) = bucket.walk(path, &mut visit) {
                return Some(b);
            }
        }
        None
    }
}

// === impl Bucket ===

impl Bucket {
    fn walk<'t, B>(
        &'t self,
        path: &str,
        visit: &mut impl FnMut(&'t Entry) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let exact = self.exact.get(path).map(|entries| &entries[..]);
        let prefixes = self
            .prefixes
            .iter()
            .filter(|p| prefix_matches(&p.path, path))
            .map(|p| &p.entries[..]);
        for entries in exact.into_iter().chain(prefixes) {
            for entry in entries {
                visit(entry)?;
            }
        }
        ControlFlow::Continue(())
    }
}

// === impl Entry ===

impl Entry {
    /// A route without a method list allows every method that asks for the resource at its path.
    /// `CONNECT` asks for a tunnel to an authority instead, which is never what a route's path
    /// describes: only a route that lists it allows it.
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => method != Method::CONNECT,
            Some(ms) => ms.contains(method),
        }
    }
}

/// Whether `prefix` covers `path` at a segment boundary: `/v1/orders` covers `/v1/orders`,
/// `/v1/orders/` and `/v1/orders/7` but not `/v1/ordersX`; a prefix ending in `/` covers everything
/// below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}
