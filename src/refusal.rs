//! The one place where a refusal becomes a wire response: status, stable reason code, JSON body.
//!
//! The match below is exhaustive on purpose: a new refusal does not compile until it has a status
//! and a reason code, and a unit test fails until [`Refusal::ALL`] lists it, from which the
//! metrics take their label set. Bodies never carry certificate or upstream details that would help an
//! attacker; those go to the audit log.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::policy::Denial;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Policy(Denial),
    /// The certificate verified but maps to no configured partner.
    UnknownPartner,
    /// The partner's certificate verified under another partner's trust bundle.
    WrongTrustBundle,
    CertificateRevoked,
    RevocationUnknown,
    /// The request is malformed in a way hyper let through (e.g. no usable path).
    BadRequest,
    /// An HTTP/1.1 request without `Host`, a request with more than one `Host` or one that is not
    /// visible ASCII, an HTTP/2 `Host` that disagrees with `:authority`, or a target authority with
    /// user information (RFC 9112 §3.2, RFC 9110 §4.2.4): the request names no host, or two.
    BadHost,
    /// A `Transfer-Encoding` other than a single `chunked` (hyper accepts any list that ends in
    /// `chunked`, such as `identity, chunked`, which other parsers read differently).
    BadTransferEncoding,
    /// `Upgrade: h2c` and similar protocol switches certgate never forwards.
    UpgradeNotAllowed,
    /// The request body is over the route's `max_body_bytes`: declared so in `Content-Length`
    /// (the upstream was not contacted) or grown past it while streaming (the upstream request
    /// was aborted).
    BodyTooLarge,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamError,
}

impl Refusal {
    /// Every refusal. Reason codes may repeat (two refusals can look the same to a client).
    pub const ALL: [Refusal; 17] = [
        Self::Policy(Denial::NoRoute),
        Self::Policy(Denial::ScopeDenied),
        Self::Policy(Denial::MethodNotAllowed),
        Self::Policy(Denial::HostMismatch),
        Self::Policy(Denial::BadPath),
        Self::UnknownPartner,
        Self::WrongTrustBundle,
        Self::CertificateRevoked,
        Self::RevocationUnknown,
        Self::BadRequest,
        Self::BadHost,
        Self::BadTransferEncoding,
        Self::UpgradeNotAllowed,
        Self::BodyTooLarge,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::UpstreamError,
    ];

    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    /// Whether the refusal reports an upstream failure (policy had allowed the request).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Self::UpstreamUnavailable | Self::UpstreamTimeout | Self::UpstreamError
        )
    }

    /// Whether the connection closes after this answer: the request was read in a way another
    /// parser might not share, so what follows it on the connection is not trusted either.
    pub fn closes(self) -> bool {
        matches!(self, Self::BadHost | Self::BadTransferEncoding)
    }

    /// The stable reason code: logged, counted and returned to the client.
    pub fn as_str(self) -> &'static str {
        self.parts().1
    }

    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Policy(Denial::NoRoute) => (
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches this request",
            ),
            Self::Policy(Denial::ScopeDenied) => (
                StatusCode::FORBIDDEN,
                "scope_denied",
                "the partner is not granted this route",
            ),
            Self::Policy(Denial::MethodNotAllowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not allow this method",
            ),
            Self::Policy(Denial::HostMismatch) => (
                StatusCode::MISDIRECTED_REQUEST,
                "host_mismatch",
                "the Host header does not match the TLS server name",
            ),
            Self::Policy(Denial::BadPath) => (
                StatusCode::BAD_REQUEST,
                "bad_path",
                "the request path is malformed",
            ),
            Self::UnknownPartner => (
                StatusCode::FORBIDDEN,
                "unknown_partner",
                "the client certificate is not bound to a partner",
            ),
            Self::WrongTrustBundle => (
                StatusCode::FORBIDDEN,
                "unknown_partner",
                "the client certificate is not bound to a partner",
            ),
            Self::CertificateRevoked => (
                StatusCode::FORBIDDEN,
                "certificate_revoked",
                "the client certificate has been revoked",
            ),
            Self::RevocationUnknown => (
                StatusCode::FORBIDDEN,
                "revocation_unknown",
                "the client certificate's revocation status cannot be established",
            ),
            Self::BadRequest => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request is malformed",
            ),
            Self::BadHost => (
                StatusCode::BAD_REQUEST,
                "bad_host",
                "the request must name exactly one host",
            ),
            Self::BadTransferEncoding => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request is malformed",
            ),
            Self::UpgradeNotAllowed => (
                StatusCode::BAD_REQUEST,
                "upgrade_not_allowed",
                "this protocol upgrade is not allowed",
            ),
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this route accepts",
            ),
            Self::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream service is unavailable",
            ),
            Self::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream service did not answer in time",
            ),
            Self::UpstreamError => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream service failed",
            ),
        }
    }

    /// The JSON body: `{"error": reason code, "message": fixed text}`.
    pub fn body(self) -> String {
        let (_, reason, message) = self.parts();
        // Reason codes and messages are fixed ASCII without quotes or backslashes: no escaping.
        format!("{{\"error\":\"{reason}\",\"message\":\"{message}\"}}\n")
    }

    /// The JSON response. `allow` fills the `Allow` header of a 405.
    pub fn response(self, allow: Option<HeaderValue>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = allow {
            headers.insert(header::ALLOW, allow);
        }
        if self.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_refusal() {
        let codes = assert_all_lists_every_variant!(Refusal:
            Refusal::Policy(Denial::NoRoute),
            Refusal::Policy(Denial::ScopeDenied),
            Refusal::Policy(Denial::MethodNotAllowed),
            Refusal::Policy(Denial::HostMismatch),
            Refusal::Policy(Denial::BadPath),
            Refusal::UnknownPartner,
            Refusal::WrongTrustBundle,
            Refusal::CertificateRevoked,
            Refusal::RevocationUnknown,
            Refusal::BadRequest,
            Refusal::BadHost,
            Refusal::BadTransferEncoding,
            Refusal::UpgradeNotAllowed,
            Refusal::BodyTooLarge,
            Refusal::UpstreamUnavailable,
            Refusal::UpstreamTimeout,
            Refusal::UpstreamError,
        );
        // Two pairs share a code on purpose: a wrong trust bundle is an unknown partner to the
        // client, a bad transfer encoding a bad request.
        assert_eq!(codes.len(), Refusal::ALL.len() - 2);
    }

    #[test]
    fn every_refusal_has_a_status_and_valid_json() {
        for r in Refusal::ALL {
            let resp = r.response(None);
            assert_eq!(resp.status(), r.status());
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let json: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
            assert_eq!(json["error"], r.as_str());
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(
            Refusal::Policy(Denial::HostMismatch).status(),
            StatusCode::MISDIRECTED_REQUEST
        );
        assert_eq!(
            Refusal::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            Refusal::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
