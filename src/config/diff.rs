//! What a reload changed: partners, routes and trust bundles added, removed or changed, by name.
//! Logged with "configuration reloaded" and returned by `POST /reload`, so an operator sees what
//! a reload did without diffing YAML.
//!
//! Items are compared by what they mean, not by index: scope, bundle and upstream references are
//! resolved to names first, so adding a scope elsewhere does not make every partner "changed".

use std::collections::HashMap;

use serde::Serialize;

use crate::config::model::{Config, Partner, Route, TrustBundle};

/// Names added, removed and changed in one list of the configuration, each in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// The difference between two configuration generations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigChanges {
    pub partners: Changes,
    pub routes: Changes,
    pub bundles: Changes,
}

impl ConfigChanges {
    pub fn between(old: &Config, new: &Config) -> Self {
        Self {
            partners: changes(
                &old.partners,
                &new.partners,
                |p| &p.id,
                |a, b| same_partner(old, a, new, b),
            ),
            routes: changes(
                &old.routes,
                &new.routes,
                |r| &r.name,
                |a, b| same_route(old, a, new, b),
            ),
            bundles: changes(
                &old.trust_bundles,
                &new.trust_bundles,
                |b| &b.name,
                same_bundle,
            ),
        }
    }
}

impl Changes {
    /// `+added,-removed,~changed`, or `none`: one field of the log line.
    pub fn summary(&self) -> String {
        let marked = self
            .added
            .iter()
            .map(|n| format!("+{n}"))
            .chain(self.removed.iter().map(|n| format!("-{n}")))
            .chain(self.changed.iter().map(|n| format!("~{n}")))
            .collect::<Vec<_>>();
        if marked.is_empty() {
            "none".to_owned()
        } else {
            marked.join(",")
        }
    }
}

/// Matches items by name through a hash index of each side: a registry publishes tens of
/// thousands of partners, and a linear search per item would make every reload quadratic.
fn changes<T>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    same: impl Fn(&T, &T) -> bool,
) -> Changes {
    let (old_index, new_index) = (by_name(old, &name), by_name(new, &name));
    let mut out = Changes::default();
    for item in new {
        match old_index.get(name(item).as_str()).and_then(|&i| old.get(i)) {
            None => out.added.push(name(item).clone()),
            Some(before) if !same(before, item) => out.changed.push(name(item).clone()),
            Some(_) => {}
        }
    }
    out.removed = old
        .iter()
        .filter(|item| !new_index.contains_key(name(item).as_str()))
        .map(|item| name(item).clone())
        .collect();
    out
}

/// Each name's position in `list`; the first of two items with one name wins, as a search in file
/// order would find.
fn by_name<'a, T>(list: &'a [T], name: &impl Fn(&T) -> &String) -> HashMap<&'a str, usize> {
    let mut index = HashMap::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        index.entry(name(item).as_str()).or_insert(i);
    }
    index
}

fn scope_names<'c>(config: &'c Config, scopes: &[crate::config::model::ScopeId]) -> Vec<&'c str> {
    let mut names: Vec<&str> = scopes
        .iter()
        .filter_map(|s| config.scopes.get(s.0))
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

fn same_partner(old: &Config, a: &Partner, new: &Config, b: &Partner) -> bool {
    let bundle = |c: &Config, p: &Partner| {
        c.trust_bundles
            .get(p.trust_bundle.0)
            .map(|b| b.name.clone())
    };
    a.owner == b.owner
        && a.identities == b.identities
        && bundle(old, a) == bundle(new, b)
        && scope_names(old, &a.scopes) == scope_names(new, &b.scopes)
}

fn same_route(old: &Config, a: &Route, new: &Config, b: &Route) -> bool {
    let upstream = |c: &Config, r: &Route| c.upstreams.get(r.upstream.0).map(|u| u.name.clone());
    a.host == b.host
        && a.path == b.path
        && a.methods == b.methods
        && a.max_body_bytes == b.max_body_bytes
        && scope_names(old, &[a.scope]) == scope_names(new, &[b.scope])
        && upstream(old, a) == upstream(new, b)
}

fn same_bundle(a: &TrustBundle, b: &TrustBundle) -> bool {
    let ocsp = |t: &TrustBundle| {
        t.ocsp
            .as_ref()
            .map(|o| (o.mode, o.responder.clone(), o.timeout, o.max_cache_age))
    };
    a.ca == b.ca && a.crls == b.crls && a.crl_expired == b.crl_expired && ocsp(a) == ocsp(b)
}
