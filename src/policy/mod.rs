//! Route policy: which upstream a request may reach, decided from precompiled tables.
//!
//! Default deny: a request is forwarded only when its Host agrees with the SNI, its path normalises,
//! a route matches host, path and method, and the partner holds that route's scope. The proxy
//! forwards [`Allowed::path`], the normalised path, so the upstream sees exactly what was checked.
//!
//! - [`path`]: path normalisation.
//! - [`RouteTable`]: built once per config generation; [`RouteTable::decide`] per request, and
//!   [`RouteTable::allowed_methods`] for the `Allow` header of a 405.

use http::Method;

mod host;
pub mod path;
mod table;

pub use table::RouteTable;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// What the proxy knows about a request when it asks for a decision.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Host header (or :authority), as received; may carry a port.
    pub host: Option<&'a str>,
    /// The TLS SNI of the connection, if the client sent one.
    pub sni: Option<&'a str>,
    /// The request path as received, without the query string.
    pub path: &'a str,
}

/// Index of a route in the configuration's route list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// Why a request is refused. Each variant maps to exactly one status and reason code in
/// `crate::refusal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("no route matches the request")]
    NoRoute,
    #[error("the partner does not hold the route's scope")]
    ScopeDenied,
    #[error("the route does not allow this method")]
    MethodNotAllowed,
    #[error("the Host header does not agree with the TLS server name")]
    HostMismatch,
    #[error("the request path is malformed or escapes the root")]
    BadPath,
}

/// A decision to forward: the route and the normalised path that policy matched, which is also the
/// path the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<'a> {
    pub route: RouteId,
    pub path: std::borrow::Cow<'a, str>,
}
