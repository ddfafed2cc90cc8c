//! Connections ended after the handshake because the client crossed a limit or broke the
//! protocol, in the fixed categories that the `connection_refused` audit line and
//! `certgate_connection_refusals_total` use.
//!
//! Most of these refusals happen inside hyper and h2, before certgate's request service runs (a
//! 431 for a head over `max_header_bytes`, a GOAWAY for a reset flood), so they are recognised
//! from the error the connection ends with. A client that merely goes away (reset, EOF between or
//! in the middle of requests, a dead peer that stops answering HTTP/2 pings) is not refused and is
//! not classified here.

use std::error::Error as StdError;

/// Why certgate ended a connection. Label values and audit `reason`s come from
/// [`ConnRefusal::as_str`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnRefusal {
    /// An HTTP/1.1 request head over `max_header_bytes` or `max_headers`, a long URI included
    /// (hyper answered 431; 414 only for a URI over its fixed 65534 bytes in a head that fits).
    HeaderTooLarge,
    /// Part of an HTTP/1.1 request head arrived, the rest not within `header_read_timeout`.
    HeaderTimeout,
    /// A malformed HTTP/1.1 request head (hyper answered 400), or the HTTP/2 preface on a
    /// connection that negotiated HTTP/1.1.
    BadRequest,
    /// An HTTP/2 connection error that h2 detected in the client's frames (GOAWAY with
    /// PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR, FLOW_CONTROL_ERROR…).
    Http2ProtocolError,
    /// h2's abuse limits (GOAWAY with ENHANCE_YOUR_CALM): streams opened and reset faster than
    /// they are served (rapid reset, CVE-2023-44487), a CONTINUATION flood, too many tiny DATA
    /// frames, a header block far over the limit, or too many streams that had to be refused.
    Http2Flood,
    /// No byte moved either way for `idle_timeout` while a request or response was in flight:
    /// a client that stopped reading its response or stopped sending its request (or an
    /// upstream slower than `idle_timeout`, where its `request_timeout` is set longer).
    Stalled,
}

impl ConnRefusal {
    /// Every category, in metric-export order (each one's declaration order, which
    /// `certgate_connection_refusals_total`'s counters are indexed by); a unit test fails when a
    /// variant is missing.
    pub const ALL: [ConnRefusal; 6] = [
        Self::HeaderTooLarge,
        Self::HeaderTimeout,
        Self::BadRequest,
        Self::Http2ProtocolError,
        Self::Http2Flood,
        Self::Stalled,
    ];

    /// Position in [`ConnRefusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTooLarge => "header_too_large",
            Self::HeaderTimeout => "header_timeout",
            Self::BadRequest => "bad_request",
            Self::Http2ProtocolError => "http2_protocol_error",
            Self::Http2Flood => "http2_flood",
            Self::Stalled => "stalled",
        }
    }

    /// Classifies the error a served connection ended with; `None` when the client just went
    /// away or the error says nothing about the client.
    ///
    /// `head_started` tells whether any byte of a further request arrived since the last
    /// request was handled: hyper's header read timeout also runs while an HTTP/1.1 keep-alive
    /// connection waits for its next request, and closing such an idle connection is no refusal.
    pub fn classify(error: &(dyn StdError + 'static), head_started: bool) -> Option<Self> {
        let hyper = find::<hyper::Error>(error)?;
        if hyper.is_parse_too_large() {
            return Some(Self::HeaderTooLarge);
        }
        if hyper.is_parse() {
            return Some(Self::BadRequest);
        }
        if hyper.is_timeout() {
            // The header read timeout is a bare error; HTTP/2's keep-alive timeout (a dead peer
            // that stopped answering pings, no refusal) carries its cause as a source. ALPN
            // cannot tell them apart: hyper serves whichever protocol the client speaks.
            let header_timeout = hyper.source().is_none();
            return (header_timeout && head_started).then_some(Self::HeaderTimeout);
        }
        let h2_error = find::<h2::Error>(hyper)?;
        if !h2_error.is_library() {
            // The client's own GOAWAY or RST_STREAM, or an I/O error: it chose to leave.
            return None;
        }
        match h2_error.reason()? {
            h2::Reason::NO_ERROR => None,
            h2::Reason::ENHANCE_YOUR_CALM => Some(Self::Http2Flood),
            _ => Some(Self::Http2ProtocolError),
        }
    }
}

/// `error` itself or the first error of type `E` in its source chain.
fn find<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_in_all_with_its_own_reason_code() {
        let codes = assert_all_lists_every_variant!(ConnRefusal:
            ConnRefusal::HeaderTooLarge,
            ConnRefusal::HeaderTimeout,
            ConnRefusal::BadRequest,
            ConnRefusal::Http2ProtocolError,
            ConnRefusal::Http2Flood,
            ConnRefusal::Stalled,
        );
        assert_eq!(codes.len(), ConnRefusal::ALL.len());
        for (i, r) in ConnRefusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} is out of place in ALL");
        }
    }

    #[test]
    fn errors_without_a_hyper_or_h2_cause_are_not_refusals() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(ConnRefusal::classify(&reset, true), None);
        assert_eq!(ConnRefusal::classify(&reset, false), None);
    }
}
