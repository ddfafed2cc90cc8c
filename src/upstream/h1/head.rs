//! Message heads on a dedicated upstream connection: the request head certgate writes, the
//! response head it reads, and how that response's body is framed (RFC 9112 §6.3).
//!
//! Parsing is strict where leniency would let the two ends of the connection disagree on where a
//! message ends: a malformed `Content-Length`, or one beside `Transfer-Encoding`, is an error or
//! ends the connection's reuse, never a guess.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::Error;

/// More header fields than this in one response head is an error, as in hyper's client.
pub(super) const MAX_HEADERS: usize = 100;
/// A response head (interim ones included) longer than this is an error.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// No body and no framing header: a request without `Content-Length` has none (RFC 9112 §6.3).
    Empty,
    /// `Content-Length`: the partner's, or added for a body of known size.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown size.
    Chunked,
}

impl RequestFraming {
    /// The framing for a body with this size hint. A partner's `Content-Length` reaches here as an
    /// exact hint (hyper framed the body by it), so it is kept.
    pub(super) fn of(headers: &HeaderMap, exact: Option<u64>, end_stream: bool) -> Self {
        match exact {
            Some(n) if n > 0 || headers.contains_key(http::header::CONTENT_LENGTH) => {
                Self::Length(n)
            }
            _ if end_stream => Self::Empty,
            Some(_) => Self::Empty,
            None => Self::Chunked,
        }
    }
}

/// Writes the request line and header fields for an origin-form `path_and_query`. The partner's
/// hop-by-hop fields, `Transfer-Encoding` among them, were removed before; the framing field
/// this hop needs is added here.
pub(super) fn encode_request(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Length(n) if !headers.contains_key(http::header::CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Empty | RequestFraming::Length(_) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    Length(u64),
    Chunked,
    /// Read until the upstream closes: the connection cannot carry another exchange.
    Close,
}

/// A final response head, its header fields sharing the read buffer's bytes.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) framing: BodyFraming,
    /// Whether the connection may carry another exchange once this body has been read.
    pub(super) reusable: bool,
}

/// One parsed head: a final response, an interim (1xx) one to skip, or not all of it yet.
#[derive(Debug)]
pub(super) enum Parsed {
    Final(ResponseHead),
    Interim,
    Partial,
}

/// Where one header field lies in the head's bytes (name start, name length, value start, value
/// length), so values can share those bytes without a copy. `u32`: the head is at most
/// [`MAX_HEAD_BYTES`], and a small array is cheap to zero on every response.
type FieldAt = [u32; 4];

/// Parses one response head at the front of `buf`, and removes it from there once complete.
///
/// A final head's fields go into `spare`'s map, taken and cleared: the request's own, sent by
/// then, which would otherwise be freed while the response allocated another. Over HTTP/1.1 the
/// one map then goes round (request, response, hyper's cache, next request) without a new
/// allocation. An interim or partial head, or an error before the fields, leaves `spare` alone.
///
/// # Errors
/// A head that is malformed, too long, carries an invalid `Content-Length`, or switches protocols
/// (certgate never asks an upstream on this path to).
pub(super) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    spare: &mut HeaderMap,
) -> Result<Parsed, Error> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(Error::Head(e)),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Status(code))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::UnexpectedUpgrade);
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    // An HTTP/1.0 upstream closes after each answer unless it says otherwise; certgate does not
    // rely on the old keep-alive extension and closes too.
    let http_10 = response.version == Some(0);

    if len > MAX_HEAD_BYTES {
        return Err(Error::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    // In bounds of a head under MAX_HEAD_BYTES: never truncated.
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut fields: [FieldAt; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
    let mut count = 0;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = http_10;
    for (field, header) in fields.iter_mut().zip(response.headers.iter()) {
        *field = [
            at(header.name.as_bytes()),
            header.name.len() as u32,
            at(header.value),
            header.value.len() as u32,
        ];
        count += 1;
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(content_length(header.value, length)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding matters: chunked must be last when present at all.
            chunked = Some(last_token(header.value).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(header.value, b"close");
        }
    }

    let head = buf.split_to(len).freeze();
    let mut headers = std::mem::take(spare);
    headers.clear();
    // No more room than the response needs. Over HTTP/1.1 the map keeps what it grew to for the
    // request and its identity headers, as it goes round; over HTTP/2 it goes to the encoder and is
    // freed, so room beyond the response's would be a new allocation for nothing.
    headers.reserve(count);
    for &[name, name_len, value, value_len] in &fields[..count] {
        let name =
            HeaderName::from_bytes(&head[span(name, name_len)]).map_err(|_| Error::HeaderField)?;
        let value = HeaderValue::from_maybe_shared(head.slice(span(value, value_len)))
            .map_err(|_| Error::HeaderField)?;
        headers.append(name, value);
    }

    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (chunked, length) {
        _ if no_body => BodyFraming::Length(0),
        // Both present: Transfer-Encoding wins, the Content-Length goes (the partner's side
        // frames the body anew), and the connection is not trusted with another exchange
        // (RFC 9112 §6.3, item 3).
        (Some(chunked), length) => {
            if length.is_some() {
                headers.remove(http::header::CONTENT_LENGTH);
                close = true;
            }
            close |= !chunked;
            if chunked {
                BodyFraming::Chunked
            } else {
                BodyFraming::Close
            }
        }
        (None, Some(n)) => BodyFraming::Length(n),
        (None, None) => {
            close = true;
            BodyFraming::Close
        }
    };
    Ok(Parsed::Final(ResponseHead {
        status,
        headers,
        framing,
        reusable: !close,
    }))
}

fn span(start: u32, len: u32) -> std::ops::Range<usize> {
    start as usize..(start + len) as usize
}

/// A `Content-Length` value (a comma-separated list of equal values is allowed, RFC 9110 §8.6),
/// checked against one seen before in the same head.
fn content_length(value: &[u8], seen: Option<u64>) -> Result<u64, Error> {
    let mut found = seen;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Error::ContentLength);
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(previous) if previous != n => return Err(Error::ContentLength),
            _ => found = Some(n),
        }
    }
    found.ok_or(Error::ContentLength)
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(raw: &str) -> Result<Parsed, Error> {
        parse_response(
            &mut BytesMut::from(raw),
            &Method::GET,
            &mut HeaderMap::new(),
        )
    }

    fn head(raw: &str) -> ResponseHead {
        match parse(raw) {
            Ok(Parsed::Final(head)) => head,
            other => panic!("not a final head: {other:?}"),
        }
    }

    #[test]
    fn requests_are_written_with_the_framing_their_body_needs() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api"));
        let mut out = Vec::new();
        encode_request(
            &Method::GET,
            "/a?b=c",
            &headers,
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: api\r\n\r\n");
        encode_request(
            &Method::POST,
            "/",
            &headers,
            RequestFraming::Length(5),
            &mut out,
        );
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 5\r\n\r\n"
        );
        encode_request(
            &Method::PUT,
            "/",
            &headers,
            RequestFraming::Chunked,
            &mut out,
        );
        assert_eq!(
            out,
            b"PUT / HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // The partner's own Content-Length is not written twice.
        headers.insert("content-length", HeaderValue::from_static("0"));
        encode_request(
            &Method::POST,
            "/",
            &headers,
            RequestFraming::Length(0),
            &mut out,
        );
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_request_body_is_framed_by_what_is_known_of_it() {
        let none = HeaderMap::new();
        let mut with_length = HeaderMap::new();
        with_length.insert("content-length", HeaderValue::from_static("0"));
        assert_eq!(
            RequestFraming::of(&none, Some(0), true),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of(&with_length, Some(0), true),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::of(&none, Some(7), false),
            RequestFraming::Length(7)
        );
        assert_eq!(
            RequestFraming::of(&none, None, false),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn a_head_is_framed_by_its_length_and_consumed() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok");
        let Parsed::Final(head) =
            parse_response(&mut buf, &Method::GET, &mut HeaderMap::new()).unwrap()
        else {
            panic!("not final");
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, BodyFraming::Length(2));
        assert!(head.reusable);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn a_final_head_takes_the_spare_map_and_an_interim_one_leaves_it() {
        let mut spare = HeaderMap::with_capacity(64);
        spare.insert("x-request", HeaderValue::from_static("sent"));
        let capacity = spare.capacity();
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: b\r\n\r\n",
        );
        assert!(matches!(
            parse_response(&mut buf, &Method::GET, &mut spare),
            Ok(Parsed::Interim)
        ));
        assert_eq!(spare["x-request"], "sent");
        let Ok(Parsed::Final(head)) = parse_response(&mut buf, &Method::GET, &mut spare) else {
            panic!("not final");
        };
        assert!(spare.is_empty());
        assert_eq!(head.headers.len(), 2);
        assert!(!head.headers.contains_key("x-request"));
        assert_eq!(head.headers["x-a"], "b");
        // The request's allocation, not a new one.
        assert_eq!(head.headers.capacity(), capacity);
    }

    /// An HTTP/2 request's map is as large as its fields needed, and is freed with the response
    /// that takes it: a response that fits in that room must not grow it.
    #[test]
    fn a_response_that_fits_the_spare_map_keeps_its_room() {
        let mut spare = HeaderMap::with_capacity(8);
        let capacity = spare.capacity();
        let fields: String = (0..capacity).map(|i| format!("X-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{fields}\r\n").as_str());
        let Ok(Parsed::Final(head)) = parse_response(&mut buf, &Method::GET, &mut spare) else {
            panic!("not final");
        };
        assert_eq!(head.headers.len(), capacity);
        assert_eq!(head.headers.capacity(), capacity);
    }

    #[test]
    fn a_partial_head_waits_and_an_endless_one_fails() {
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nA: b\r\n"),
            Ok(Parsed::Partial)
        ));
        let endless = format!("HTTP/1.1 200 OK\r\nA: {}", "b".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse(&endless), Err(Error::HeadTooLarge)));
    }

    #[test]
    fn interim_heads_are_consumed_and_skipped() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        assert!(matches!(
            parse_response(&mut buf, &Method::GET, &mut HeaderMap::new()),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            parse_response(&mut buf, &Method::GET, &mut HeaderMap::new()),
            Ok(Parsed::Final(ResponseHead {
                status: StatusCode::NO_CONTENT,
                ..
            }))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn responses_without_a_body_ignore_their_length() {
        for (raw, method) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Method::HEAD,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                Method::GET,
            ),
        ] {
            let Ok(Parsed::Final(head)) =
                parse_response(&mut BytesMut::from(raw), &method, &mut HeaderMap::new())
            else {
                panic!("{raw:?} not parsed");
            };
            assert_eq!(head.framing, BodyFraming::Length(0), "{raw:?}");
            assert!(head.reusable, "{raw:?}");
        }
    }

    #[test]
    fn chunked_wins_over_a_length_and_ends_reuse() {
        let both =
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, BodyFraming::Chunked);
        assert!(!both.reusable);
        assert!(!both.headers.contains_key("content-length"));
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(chunked.framing, BodyFraming::Chunked);
        assert!(chunked.reusable);
        let not_last = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(not_last.framing, BodyFraming::Close);
        assert!(!not_last.reusable);
    }

    #[test]
    fn without_length_the_body_runs_to_the_close() {
        let head = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(head.framing, BodyFraming::Close);
        assert!(!head.reusable);
    }

    #[test]
    fn connection_close_and_http_1_0_end_reuse() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n")
                .reusable
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
    }

    #[test]
    fn lengths_must_be_digits_and_agree() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n").framing,
            BodyFraming::Length(5)
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 5, 6",
            "Content-Length: +5",
            "Content-Length: 0x5",
            "Content-Length: ",
            "Content-Length: 99999999999999999999",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
            assert!(
                matches!(parse(&raw), Err(Error::ContentLength)),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn malformed_heads_and_upgrades_are_errors() {
        assert!(matches!(parse("garbage\r\n\r\n"), Err(Error::Head(_))));
        assert!(matches!(
            parse("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(Error::UnexpectedUpgrade)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(Error::Head(httparse::Error::TooManyHeaders))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_parse_to_a_head_or_an_error_never_a_panic(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let mut buf = BytesMut::from(&raw[..]);
            match parse_response(&mut buf, &Method::GET, &mut HeaderMap::new()) {
                Ok(Parsed::Final(_) | Parsed::Interim) => proptest::prop_assert!(buf.len() < raw.len()),
                Ok(Parsed::Partial) => proptest::prop_assert_eq!(&buf[..], &raw[..]),
                Err(_) => {}
            }
        }

        #[test]
        fn every_field_of_a_valid_head_is_kept_in_order(
            fields in proptest::collection::vec(("x-[a-z0-9-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?"), 0..20),
        ) {
            let mut raw = String::from("HTTP/1.1 200 OK\r\n");
            for (name, value) in &fields {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("content-length: 0\r\n\r\n");
            let head = head(&raw);
            let got: Vec<(String, String)> = head
                .headers
                .iter()
                .filter(|(n, _)| n.as_str() != "content-length")
                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                .collect();
            // A header map groups the values of one name (in the order they came), names in the
            // order of their first field.
            let mut want = fields.clone();
            want.sort_by_key(|(n, _)| fields.iter().position(|(m, _)| m == n));
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn header_values_share_the_head_bytes() {
        let head = head(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        );
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}
