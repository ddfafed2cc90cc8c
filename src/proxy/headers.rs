//! Header rewriting between partner and upstream.
//!
//! Everything that depends only on the connection (who the partner is, its address) is rendered
//! once per connection into [`ConnectionHeaders`], and what depends only on the certificate chain
//! once per chain ([`CertificateHeaders`]); per request certgate only removes headers and inserts
//! clones of prebuilt values (reference-counted, no re-encoding).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;

use crate::config::model::{ClientCertHeader, Forward};
use crate::identity::PeerIdentity;

static CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
static CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop only (RFC 9110 §7.6.1) and never cross the proxy. `Upgrade` and
/// `Connection` are handled separately so a WebSocket handshake can pass.
fn hop_by_hop() -> [&'static HeaderName; 6] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Headers a partner could use to impersonate someone; certgate alone sets them.
fn identity_names(forward: &Forward) -> [&HeaderName; 7] {
    [
        &CLIENT_CERT,
        &CLIENT_CERT_CHAIN,
        &XFCC,
        &forward.partner_header,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &header::FORWARDED,
    ]
}

/// The headers certgate adds to every request of one connection. The default adds none, leaving
/// only the removals.
#[derive(Debug, Clone, Default)]
pub struct ConnectionHeaders {
    /// `X-Forwarded-For` and `Forwarded`, rendered from the client's address.
    client: Option<[HeaderValue; 2]>,
    partner: Option<HeaderValue>,
    /// Shared by every connection presenting the same chain ([`super::presented`]).
    certificate: Arc<CertificateHeaders>,
}

/// The headers rendered from a client's certificate chain: `Client-Cert` and
/// `Client-Cert-Chain`, or `X-Forwarded-Client-Cert`, as `forward` asks.
#[derive(Debug, Default)]
pub struct CertificateHeaders(Box<[(HeaderName, HeaderValue)]>);

impl CertificateHeaders {
    pub fn render(
        forward: &Forward,
        identity: &PeerIdentity,
        chain: &[CertificateDer<'_>],
    ) -> Self {
        let mut add = Vec::with_capacity(2);
        match forward.client_cert_header {
            ClientCertHeader::Rfc9440 => {
                if let Some((leaf, rest)) = chain.split_first() {
                    add.push((CLIENT_CERT.clone(), header_value(&sf_binary(leaf))));
                    if !rest.is_empty() {
                        let list = rest.iter().map(sf_binary).collect::<Vec<_>>().join(", ");
                        add.push((CLIENT_CERT_CHAIN.clone(), header_value(&list)));
                    }
                }
            }
            ClientCertHeader::Xfcc => {
                add.push((XFCC.clone(), header_value(&xfcc(identity))));
            }
            ClientCertHeader::None => {}
        }
        Self(add.into_boxed_slice())
    }

    /// The names of the headers rendered, in the order they are added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }
}

impl ConnectionHeaders {
    /// The headers of a verified connection from `client`, presenting the chain `certificate`
    /// was rendered from. `partner` is `None` for a connection that will only ever be refused.
    pub fn build(
        partner: Option<&str>,
        certificate: Arc<CertificateHeaders>,
        client: SocketAddr,
    ) -> Self {
        let ip = client.ip();
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=https"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=https"),
        };
        Self {
            client: Some([header_value(&ip.to_string()), header_value(&forwarded)]),
            partner: partner.and_then(|p| HeaderValue::from_str(p).ok()),
            certificate,
        }
    }

    /// Prepares a partner's request for the upstream: drops hop-by-hop and identity headers the
    /// client sent (certgate's own and `forward.strip_headers`, which holds other front ends'),
    /// then adds certgate's own. `upgrade` keeps `Connection: upgrade` and `Upgrade`
    /// for a protocol switch certgate has agreed to pass (WebSocket).
    pub fn rewrite_request(&self, headers: &mut HeaderMap, forward: &Forward, upgrade: bool) {
        // Most requests carry none of these: one pass over the names present is cheaper than
        // hashing every name certgate might remove.
        let stripped = |name: &HeaderName| forward.strip_headers.matches(name.as_str().as_bytes());
        let present = headers
            .keys()
            .any(|name| is_hop_by_hop(name) || is_identity(name, forward) || stripped(name));
        if upgrade || present {
            strip_hop_by_hop(headers, upgrade);
            for name in identity_names(forward) {
                headers.remove(name);
            }
            // Collecting nothing allocates nothing: only a request that carries such a header
            // pays for the list.
            let names: Vec<HeaderName> = headers.keys().filter(|n| stripped(n)).cloned().collect();
            for name in names {
                headers.remove(name);
            }
        }
        let client = if self.client.is_some() { 3 } else { 0 };
        headers.reserve(client + usize::from(self.partner.is_some()) + self.certificate.0.len());
        if let Some([forwarded_for, forwarded]) = &self.client {
            headers.insert(X_FORWARDED_FOR.clone(), forwarded_for.clone());
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
            headers.insert(header::FORWARDED, forwarded.clone());
        }
        if let Some(partner) = &self.partner {
            headers.insert(forward.partner_header.clone(), partner.clone());
        }
        for (name, value) in &self.certificate.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Drops hop-by-hop headers from a response before it goes back to the partner.
pub fn rewrite_response(headers: &mut HeaderMap, upgrade: bool) {
    if upgrade {
        return strip_hop_by_hop(headers, true);
    }
    let mut connection = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name) {
            return strip_hop_by_hop(headers, false);
        }
    }
    // Nearly every upstream response carries `Connection: keep-alive` and nothing else
    // hop-by-hop; such a `Connection` names no other header, so it alone goes.
    if connection {
        let names_nothing = headers.get_all(header::CONNECTION).iter().all(|v| {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        });
        if names_nothing {
            headers.remove(header::CONNECTION);
        } else {
            strip_hop_by_hop(headers, false);
        }
    }
}

/// A name [`strip_hop_by_hop`] may remove (`Connection` can name others, but only when present).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || hop_by_hop().contains(&name)
}

/// Headers that `Connection` cannot make hop-by-hop: the host policy checked and routed on (an
/// upstream that got none would fall back to its own address), and the length that frames the
/// body.
fn never_hop_by_hop(token: &str) -> bool {
    token.eq_ignore_ascii_case(header::HOST.as_str())
        || token.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str())
}

fn is_identity(name: &HeaderName, forward: &Forward) -> bool {
    identity_names(forward).contains(&name)
}

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Headers named by `Connection` are hop-by-hop too (RFC 9110 §7.6.1). What upstreams send is
    // `Connection: keep-alive` or `close`: a token from the fixed set is removed below anyway, and
    // any other is looked up as it stands. Only a token naming a header that is present costs a
    // `HeaderName` of its own.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let fixed = hop_by_hop()
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str()));
            if fixed
                || (upgrade && token.eq_ignore_ascii_case("upgrade"))
                || never_hop_by_hop(token)
            {
                continue;
            }
            if headers.contains_key(token) {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    // One pass over the few names present instead of a hash lookup for each of the six.
    let mut present = [false; 6];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop().iter().position(|h| *h == name) {
            present[i] = true;
        }
    }
    for (name, _) in hop_by_hop().into_iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// An RFC 8941 byte sequence: `:base64:`.
fn sf_binary(cert: &CertificateDer<'_>) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(cert.as_ref())
    )
}

/// Envoy's `x-forwarded-client-cert` element for this peer.
fn xfcc(identity: &PeerIdentity) -> String {
    let mut out = format!("Hash={}", identity.fingerprint_hex());
    let subject: String = identity
        .subject
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    out.push_str(&format!(";Subject=\"{subject}\""));
    for uri in &identity.san_uri {
        if uri.is_ascii() && !uri.contains([';', ',', '"']) {
            out.push_str(&format!(";URI={uri}"));
        }
    }
    for dns in &identity.san_dns {
        if dns.is_ascii() && !dns.contains([';', ',', '"']) {
            out.push_str(&format!(";DNS={dns}"));
        }
    }
    out
}

/// Values built here are ASCII by construction; anything else is dropped rather than forwarded.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_request_loses_foreign_identity_headers_but_connection_cannot_take_host() {
        use crate::config::model::StripHeaders;
        let forward = Forward {
            client_cert_header: ClientCertHeader::None,
            partner_header: HeaderName::from_static("x-partner-id"),
            strip_headers: StripHeaders::with_defaults(["X-Acme-*"]),
        };
        let mut headers = map(&[
            ("host", "localhost"),
            ("connection", "close, Host, content-length, x-hop"),
            ("content-length", "3"),
            ("x-hop", "1"),
            ("x-ssl-client-verify", "SUCCESS"),
            ("ssl_client_s_dn", "CN=admin"),
            ("x_real_ip", "10.0.0.1"),
            ("x-forwarded-host", "admin"),
            ("x-acme-role", "admin"),
            ("x-request-id", "1"),
        ]);
        ConnectionHeaders::default().rewrite_request(&mut headers, &forward, false);
        assert_eq!(names(&headers), ["content-length", "host", "x-request-id"]);
    }

    #[test]
    fn a_response_loses_every_hop_by_hop_header_and_those_connection_names() {
        let mut headers = map(&[
            ("content-type", "text/plain"),
            ("connection", "Keep-Alive, X-Trace"),
            ("connection", "close,  x-other ,te"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("transfer-encoding", "chunked"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
        ]);
        rewrite_response(&mut headers, false);
        assert_eq!(names(&headers), ["content-type", "x-kept"]);
    }

    #[test]
    fn a_plain_keep_alive_response_keeps_everything_else() {
        let mut headers = map(&[
            ("server", "nginx"),
            ("content-length", "100"),
            ("connection", "keep-alive"),
        ]);
        rewrite_response(&mut headers, false);
        assert_eq!(names(&headers), ["content-length", "server"]);
    }

    #[test]
    fn a_connection_header_naming_another_still_removes_it() {
        for connection in ["close, x-trace", "X-Trace", "keep-alive,x-trace"] {
            let mut headers = map(&[
                ("connection", "close"),
                ("connection", connection),
                ("x-trace", "1"),
                ("content-length", "2"),
            ]);
            rewrite_response(&mut headers, false);
            assert_eq!(names(&headers), ["content-length"], "{connection}");
        }
        let mut headers = map(&[("connection", "Close"), ("content-length", "2")]);
        rewrite_response(&mut headers, false);
        assert_eq!(names(&headers), ["content-length"]);
    }

    #[test]
    fn an_agreed_upgrade_keeps_upgrade_and_rewrites_connection() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-accept", "abc"),
        ]);
        rewrite_response(&mut headers, true);
        assert_eq!(
            names(&headers),
            ["connection", "sec-websocket-accept", "upgrade"]
        );
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");
    }
}
