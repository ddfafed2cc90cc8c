//! One request: policy decision, then either a refusal or the forwarded exchange.
//!
//! Every answer is counted and audited once, when its response body has been sent to the end
//! (or dropped because the client left): the audit line then carries the bytes streamed each way
//! and the full duration, and `certgate_request_duration_seconds` measures the same span.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;

use super::connection::ConnContext;
use super::headers;
use super::tunnel::{PendingTunnel, TunnelMeta};
use crate::audit::request::RequestLine;
use crate::config::model::{PartnerId, ScopeId, UpstreamId};
use crate::policy::{Allowed, Denial, RequestFacts, RouteId};
use crate::refusal::Refusal;
use crate::snapshot::Snapshot;
use crate::upstream::body::{BodyError, BytesIn, CountIn, CountOut, FromUpstream, OnFinish};
use crate::upstream::{UpstreamBody, UpstreamFailure};

/// Responses are either streamed from the upstream or a small JSON refusal, counted on the way
/// out.
pub(crate) type ProxyBody = CountOut<Either<FromUpstream, Full<Bytes>>, Exchange>;

/// Handles one request; never fails at the hyper level, so every outcome is an HTTP answer.
pub(crate) async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let active = ctx.activity.enter();
    let started = Instant::now();
    let method = req.method().clone();
    // Shares the request head's buffer: no copy of the path for the audit line.
    let uri = req.uri().clone();
    let bytes_in = BytesIn::for_body(req.body().is_end_stream());
    let mut unanswered = Unanswered {
        ctx: &ctx,
        started,
        method: &method,
        uri: &uri,
        bytes_in: &bytes_in,
        chosen: None,
        armed: true,
    };
    let (response, route, upstream, upstream_ms, refusal) =
        match decide_and_forward(&ctx, req, &bytes_in, &mut unanswered.chosen).await {
            Ok(Forwarded {
                response,
                route,
                upstream,
                upstream_ms,
            }) => (
                response.map(Either::Left),
                Some(route),
                Some(upstream),
                upstream_ms,
                None,
            ),
            Err(Refused {
                refusal,
                allow,
                route,
                upstream,
            }) => {
                let partner = ctx.partner.map(|(p, _)| p);
                ctx.snapshot.metrics.denial(refusal, partner);
                (
                    refusal.response(allow).map(Either::Right),
                    route,
                    upstream,
                    0.0,
                    Some(refusal),
                )
            }
        };
    unanswered.disarm();
    drop(active);
    ctx.activity.response_started();
    let exchange = Exchange {
        status: response.status().as_u16(),
        ctx,
        started,
        method,
        uri,
        route,
        upstream,
        upstream_ms,
        refusal,
        bytes_in,
    };
    Ok(response.map(|body| CountOut::new(body, exchange)))
}

/// One request's facts, reported when its response body finishes.
#[derive(Debug)]
pub(crate) struct Exchange {
    ctx: Arc<ConnContext>,
    started: Instant,
    method: Method,
    uri: Uri,
    status: u16,
    route: Option<RouteId>,
    upstream: Option<UpstreamId>,
    upstream_ms: f64,
    refusal: Option<Refusal>,
    bytes_in: BytesIn,
}

impl OnFinish for Exchange {
    fn finish(self, bytes_out: u64, complete: bool) {
        let ctx = &self.ctx;
        ctx.activity.response_ended();
        let took = self.started.elapsed();
        ctx.snapshot
            .metrics
            .request(self.route, ctx.partner.map(|(p, _)| p), self.status, took);
        let (route, upstream) = names(ctx, self.route, self.upstream);
        // Upstream failures happen after policy allowed the request: they are not denials.
        let denied = self.refusal.is_some_and(|r| !r.is_upstream_failure());
        ctx.snapshot
            .metrics
            .call(self.route, ctx.partner.map(|(p, _)| p), denied, self.status);
        RequestLine {
            conn: ctx.audit_fields(),
            denied,
            reason: self.refusal.map_or("ok", Refusal::as_str),
            route,
            upstream,
            method: self.method.as_str(),
            path: self.uri.path(),
            status: self.status,
            bytes_in: self.bytes_in.get(),
            bytes_out,
            complete,
            upstream_ms: self.upstream_ms,
            duration_ms: took.as_secs_f64() * 1e3,
        }
        .emit();
    }
}

/// The route and upstream names an audit line shows (`none` for either when there is none).
fn names(ctx: &ConnContext, route: Option<RouteId>, upstream: Option<UpstreamId>) -> (&str, &str) {
    let config = &ctx.snapshot.config;
    let route = route
        .and_then(|r| config.routes.get(r.0))
        .map_or(crate::metrics::NO_ROUTE, |r| r.name.as_str());
    let upstream = upstream
        .and_then(|u| config.upstreams.get(u.0))
        .map_or("none", |u| u.name.as_str());
    (route, upstream)
}

/// A request whose handler has not answered yet. Dropped still armed, it means the handler was
/// dropped with its connection (cut at `drain_timeout`, after a revocation's grace period, or
/// the client gone): that request gets its audit line here, with status 0 (no response was sent)
/// and the reason the connection ended. Lives on the handler's stack; it allocates nothing.
struct Unanswered<'a> {
    ctx: &'a ConnContext,
    started: Instant,
    method: &'a Method,
    uri: &'a Uri,
    bytes_in: &'a BytesIn,
    /// The route policy chose and its upstream, once it has.
    chosen: Option<(RouteId, UpstreamId)>,
    armed: bool,
}

impl Unanswered<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ctx = self.ctx;
        let (route, upstream) = names(ctx, self.chosen.map(|c| c.0), self.chosen.map(|c| c.1));
        RequestLine {
            conn: ctx.audit_fields(),
            denied: false,
            reason: ctx.unanswered_reason(),
            route,
            upstream,
            method: self.method.as_str(),
            path: self.uri.path(),
            status: 0,
            bytes_in: self.bytes_in.get(),
            bytes_out: 0,
            complete: false,
            upstream_ms: 0.0,
            duration_ms: self.started.elapsed().as_secs_f64() * 1e3,
        }
        .emit();
    }
}

struct Forwarded {
    response: Response<FromUpstream>,
    route: RouteId,
    upstream: UpstreamId,
    upstream_ms: f64,
}

struct Refused {
    refusal: Refusal,
    allow: Option<HeaderValue>,
    /// The route policy chose or, for a scope or method refusal, the one the request matched.
    route: Option<RouteId>,
    upstream: Option<UpstreamId>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self {
            refusal,
            allow: None,
            route: None,
            upstream: None,
        }
    }
}

async fn decide_and_forward(
    ctx: &ConnContext,
    req: Request<Incoming>,
    bytes_in: &BytesIn,
    chosen: &mut Option<(RouteId, UpstreamId)>,
) -> Result<Forwarded, Refused> {
    let admitted = admit(ctx, &req)?;
    let snapshot = &ctx.snapshot;
    let config = &snapshot.config;
    let route_id = admitted.route;
    let route = &config.routes[route_id.0];
    *chosen = Some((route_id, route.upstream));
    // Policy accepted it: the partner used the route's scope now.
    snapshot.metrics.accepted(admitted.partner, route.scope);
    if let Some(limit) = route.max_body_bytes {
        // A declared Content-Length over the limit is refused before the upstream is contacted.
        if http_body::Body::size_hint(req.body()).lower() > limit {
            return Err(Refused {
                route: Some(route_id),
                ..Refusal::BodyTooLarge.into()
            });
        }
    }

    let path_and_query = upstream_target(req.uri(), admitted.new_path)?;
    let upgrade = admitted.upgrade;
    let mut req = req.map(|body| CountIn::new(body, bytes_in.clone(), route.max_body_bytes));
    // The upstream gets the host policy checked, as its only `Host`: from :authority for an
    // HTTP/2 request, from the target of an absolute-form HTTP/1.1 one.
    if let Some(host) = admitted.host {
        req.headers_mut().insert(header::HOST, host);
    }
    ctx.headers
        .rewrite_request(req.headers_mut(), &config.forward, upgrade);

    let sent = Instant::now();
    let (mut response, client_upgrade) =
        exchange(ctx, route_id, route.upstream, req, path_and_query, upgrade).await?;
    // The HTTP version is hop-by-hop (RFC 9110 §6.2): an HTTP/1.0 upstream's answer goes to the
    // partner as certgate's own HTTP/1.1, so the partner's connection stays usable.
    if response.version() == Version::HTTP_10 {
        *response.version_mut() = Version::HTTP_11;
    }
    let upstream_took = sent.elapsed();
    snapshot.metrics.upstream(route.upstream, upstream_took);
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::rewrite_response(response.headers_mut(), switching && upgrade);
    if let Some(client) = client_upgrade.filter(|_| switching) {
        ctx.hand_over(PendingTunnel {
            client,
            upstream: hyper::upgrade::on(&mut response),
            meta: TunnelMeta {
                route: route_id,
                upstream_id: route.upstream,
                started: sent,
            },
        });
    }
    Ok(Forwarded {
        response,
        route: route_id,
        upstream: route.upstream,
        upstream_ms: upstream_took.as_secs_f64() * 1e3,
    })
}

/// What admission decided for a request the connection may forward.
struct Admitted {
    partner: PartnerId,
    route: RouteId,
    /// The path the route rewrote, if it did.
    new_path: Option<String>,
    /// The `Host` the upstream gets in place of the partner's, when it must change.
    host: Option<HeaderValue>,
    upgrade: bool,
}

/// The connection's standing, the request's framing and the route policy, in that order: the
/// first that refuses names the refusal.
fn admit(ctx: &ConnContext, req: &Request<Incoming>) -> Result<Admitted, Refused> {
    if let Some(refusal) = ctx.refuse {
        return Err(refusal.into());
    }
    if ctx.revoked.is_revoked() {
        return Err(Refusal::CertificateRevoked.into());
    }
    let Some((partner, _)) = ctx.partner else {
        return Err(Refusal::UnknownPartner.into());
    };
    let upgrade = upgrade_requested(req)?;
    check_transfer_encoding(req)?;
    // A tunnel to an authority (`CONNECT host:port`) has no path a route could match.
    if req.method() == Method::CONNECT && req.uri().path_and_query().is_none() {
        return Err(Refusal::Policy(Denial::MethodNotAllowed).into());
    }
    let (host, replace_host) = request_host(req)?;
    let facts = RequestFacts {
        method: req.method(),
        host: host.as_ref().and_then(|h| h.to_str().ok()),
        sni: ctx.sni.as_deref(),
        path: req.uri().path(),
    };
    let scopes = &ctx.snapshot.config.partners[partner.0].scopes;
    let (route, new_path) = decide_route(&ctx.snapshot, facts, scopes)?;
    Ok(Admitted {
        partner,
        route,
        new_path,
        host: host.filter(|_| replace_host),
        upgrade,
    })
}

/// Sends the request upstream: over the connection's own upstream connection when it has one
/// free for this upstream, else through the shared pool. A request that upgrades always goes
/// through the pool, whose connection hyper can hand over as a tunnel. A failure is logged and
/// counted against the upstream here, and answered as the refusal the partner gets.
async fn exchange(
    ctx: &ConnContext,
    route: RouteId,
    id: UpstreamId,
    mut req: Request<UpstreamBody>,
    path_and_query: PathAndQuery,
    upgrade: bool,
) -> Result<(Response<FromUpstream>, Option<OnUpgrade>), Refused> {
    let upstream = &ctx.snapshot.upstreams[id.0];
    let claim = ctx
        .dedicated
        .as_ref()
        .filter(|_| !upgrade && upstream.dedicable())
        .and_then(|d| Some((d, d.claim(id, upstream)?)));
    let result = if let Some((dedicated, claim)) = claim {
        *req.uri_mut() = Uri::from(path_and_query);
        dedicated
            .send(claim, upstream, req)
            .await
            .map(|response| (response.map(FromUpstream::Dedicated), None))
    } else {
        let (uri, endpoint) = upstream
            .uri(path_and_query)
            .map_err(|_| Refused::from(Refusal::BadRequest))?;
        *req.uri_mut() = uri;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        upstream
            .send(req, endpoint)
            .await
            .map(|response| (response.map(FromUpstream::Pooled), client_upgrade))
    };
    result.map_err(|e| {
        tracing::warn!(upstream = %upstream.name, kind = e.kind().as_str(), error = %crate::error_chain(&e), "upstream request failed");
        ctx.snapshot.metrics.upstream_error(id, e.kind());
        Refused {
            route: Some(route),
            upstream: Some(id),
            ..upstream_refusal(&e).into()
        }
    })
}

/// The route policy picks for the request, and the path it rewrote, if it did. A refusal names
/// the route the request matched when that is known, and for a method refusal the methods the
/// path allows (`Allow`).
fn decide_route(
    snapshot: &Snapshot,
    facts: RequestFacts<'_>,
    scopes: &[ScopeId],
) -> Result<(RouteId, Option<String>), Refused> {
    match snapshot.routes.decide(facts, scopes) {
        Ok(Allowed { route, path }) => Ok((
            route,
            match path {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(p) => Some(p),
            },
        )),
        Err(denial @ Denial::MethodNotAllowed) => {
            let allow = snapshot
                .routes
                .allowed_methods(facts)
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            Err(Refused {
                // Routes without a method list contribute nothing: they allow all but `CONNECT`.
                allow: HeaderValue::from_str(&allow).ok().filter(|a| !a.is_empty()),
                route: snapshot.routes.refused_route(facts),
                ..Refusal::Policy(denial).into()
            })
        }
        Err(denial @ Denial::ScopeDenied) => Err(Refused {
            route: snapshot.routes.refused_route(facts),
            ..Refusal::Policy(denial).into()
        }),
        Err(denial) => Err(Refusal::Policy(denial).into()),
    }
}

/// The path and query sent upstream: the partner's own, or the route's rewrite of the path with
/// the partner's query kept.
fn upstream_target(uri: &Uri, rewritten: Option<String>) -> Result<PathAndQuery, Refused> {
    match rewritten {
        None => Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))),
        Some(path) => {
            let full = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(full).map_err(|_| Refused::from(Refusal::BadRequest))
        }
    }
}

/// What the partner is told when the upstream exchange failed. A body the partner sent that broke
/// or overran its limit is the partner's error, not the upstream's.
fn upstream_refusal(e: &UpstreamFailure) -> Refusal {
    match e {
        UpstreamFailure::Connect(_) => Refusal::UpstreamUnavailable,
        UpstreamFailure::Timeout(_) => Refusal::UpstreamTimeout,
        UpstreamFailure::Exchange(_) => Refusal::UpstreamError,
        UpstreamFailure::ClientBody(e) if BodyError::is_too_large(&**e) => Refusal::BodyTooLarge,
        UpstreamFailure::ClientBody(_) => Refusal::BadRequest,
    }
}

/// Whether the client asks to switch protocols. Only WebSocket-style upgrades pass; `h2c` never
/// does, since an upstream that accepts it would let the client smuggle requests past policy.
fn upgrade_requested<B>(req: &Request<B>) -> Result<bool, Refused> {
    let Some(upgrade) = req.headers().get(header::UPGRADE) else {
        return Ok(false);
    };
    let connection_upgrade = req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if upgrade.to_str().map_or(true, |u| {
        u.split(',')
            .any(|p| p.trim().to_ascii_lowercase().starts_with("h2c"))
    }) {
        return Err(Refusal::UpgradeNotAllowed.into());
    }
    Ok(connection_upgrade)
}

/// The one host the client addressed, and whether the request's `Host` must be set to it.
///
/// The target's authority (HTTP/2 `:authority`, an absolute-form HTTP/1.1 target) is the host when
/// present: an absolute-form target overrides `Host` (RFC 9112 §3.2.2), and an HTTP/2 `Host` must
/// agree with `:authority`. Otherwise `Host` is (a shared view of the request head, no copy). A
/// request that names no host where HTTP/1.1 requires one, or names two, is refused: an upstream
/// could read the one policy did not check.
///
/// # Errors
/// [`Refusal::BadHost`].
fn request_host<B>(req: &Request<B>) -> Result<(Option<HeaderValue>, bool), Refused> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    let missing = host.is_none() && req.version() == Version::HTTP_11;
    if missing || hosts.next().is_some() || host.is_some_and(|h| h.to_str().is_err()) {
        return Err(Refusal::BadHost.into());
    }
    if let Some(authority) = req.uri().authority() {
        // User information is no part of a host, and a parser that skips it differently from
        // `http`'s would see another host.
        if authority.as_str().contains('@') {
            return Err(Refusal::BadHost.into());
        }
        let target = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Refused::from(Refusal::BadHost))?;
        let disagrees = host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(target.as_bytes()));
        if disagrees && req.version() == Version::HTTP_2 {
            return Err(Refusal::BadHost.into());
        }
        return Ok((Some(target), true));
    }
    Ok((host.cloned(), false))
}

/// Refuses a `Transfer-Encoding` other than one `chunked`. hyper accepts any coding list that ends
/// in `chunked` (`identity, chunked`, `gzip, chunked`, or `chunked` on two lines) and decodes only
/// the chunked framing; a parser in front of or behind certgate may read such a list otherwise,
/// and no client certgate serves needs one.
///
/// # Errors
/// [`Refusal::BadTransferEncoding`].
fn check_transfer_encoding<B>(req: &Request<B>) -> Result<(), Refused> {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(());
    };
    if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Err(Refusal::BadTransferEncoding.into());
    }
    Ok(())
}
