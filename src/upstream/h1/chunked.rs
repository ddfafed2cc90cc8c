//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded in place from the
//! connection's read buffer: data comes out as slices of that buffer, never copied.
//!
//! Strict on purpose: every line ends in CRLF, a chunk size is at most 16 hex digits, and a chunk's
//! data is followed by exactly CRLF. A lenient decoder here could read a different body than the
//! upstream meant, and then take the rest of it for the next response.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::head::{MAX_HEADERS, MAX_HEAD_BYTES};
use super::Error;

/// A chunk-size line (with its extensions) longer than this is an error.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoder {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    End,
}

/// What the buffer held next.
#[derive(Debug)]
pub(super) enum Decoded {
    Data(Bytes),
    /// The trailer section, when the body had one; then the body has ended.
    Trailers(HeaderMap),
    End,
}

impl Decoder {
    /// Decodes what it can from the front of `buf`; `None` asks for more bytes.
    ///
    /// # Errors
    /// Malformed chunk framing or trailer section.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        loop {
            match *self {
                Self::Size => {
                    let Some(end) = line_end(buf, MAX_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Self::Trailers
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(n).freeze();
                    *self = match left - n as u64 {
                        0 => Self::DataEnd,
                        rest => Self::Data(rest),
                    };
                    return Ok(Some(Decoded::Data(data)));
                }
                Self::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Chunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Self::Size;
                }
                Self::Trailers => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Self::End;
                        return Ok(Some(Decoded::End));
                    }
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(None);
                    };
                    *self = Self::End;
                    return Ok(Some(Decoded::Trailers(trailers)));
                }
                Self::End => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// Where the CRLF ending the line at the front of `buf` starts, if it is there yet.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, Error> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(0) => Err(Error::Chunk("bare LF")),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(Error::Chunk("bare LF")),
        None if buf.len() >= max => Err(Error::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or extensions (ignored) after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Chunk("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Error::Chunk("invalid chunk size"));
    }
    if rest.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(Error::Chunk("control character in a chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        // At most 16 digits: never overflows.
        (n << 4) | u64::from(char::from(d).to_digit(16).unwrap_or_default())
    }))
}

/// The trailer section, once all of it (up to its empty line) is in `buf`.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Error::Chunk("trailer section too long"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Error::Chunk("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| Error::HeaderField)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| Error::HeaderField)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Feeds `wire` to a decoder `step` bytes at a time, as reads would; returns the body, the
    /// trailers and what was left after the end.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), Error> {
        let mut decoder = Decoder::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = HeaderMap::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Decoded::Data(d)) => body.extend_from_slice(&d),
                Some(Decoded::Trailers(t)) => trailers = t,
                Some(Decoded::End) => break,
                None if fed == wire.len() => return Err(Error::Incomplete),
                None => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
        buf.extend_from_slice(&wire[fed..]);
        Ok((body, trailers, buf.to_vec()))
    }

    #[test]
    fn chunks_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;name=value\r\n \r\nB\r\nwhole world\r\n0\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers, rest) = decode(wire, step).unwrap();
            assert_eq!(body, b"hello whole world", "step {step}");
            assert!(trailers.is_empty());
            assert_eq!(
                rest, b"NEXT",
                "step {step}: bytes after the body are left alone"
            );
        }
    }

    #[test]
    fn trailers_are_returned() {
        let wire = b"2\r\nok\r\n0\r\nChecksum: abc\r\nX-B: 1\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (body, trailers, rest) = decode(wire, step).unwrap();
            assert_eq!(body, b"ok");
            assert_eq!(trailers["checksum"], "abc");
            assert_eq!(trailers["x-b"], "1");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],     // bare LF after the size
            b"5\r\nhelloXX0\r\n\r\n",          // data not followed by CRLF
            b"5\r\nhello\n0\r\n\r\n",          // data followed by bare LF
            b"x\r\n",                          // not hex
            b"\r\n",                           // empty size
            b"-1\r\n",                         // sign
            b"5 x\r\nhello\r\n0\r\n\r\n",      // junk after the size
            b"10000000000000000\r\n",          // 17 digits
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n", // control character in an extension
            b"0\r\nBad Name: x\r\n\r\n",       // malformed trailer
        ] {
            assert!(
                matches!(decode(bad, 64), Err(Error::Chunk(_))),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_endless_size_line_is_an_error_not_a_wait() {
        let mut wire = b"5;".to_vec();
        wire.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert!(matches!(decode(&wire, 512), Err(Error::Chunk(_))));
    }

    #[test]
    fn the_largest_size_is_read_without_overflow() {
        let mut decoder = Decoder::Size;
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nx"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Data(d))) if &d[..] == b"x"
        ));
        assert_eq!(decoder, Decoder::Data(u64::MAX - 1));
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_decodes_to_its_body_whatever_the_read_boundaries(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..64), 0..8),
            ext in proptest::bool::ANY,
            upper in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            step in 1usize..40,
        ) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                let size = if upper { format!("{:X}", chunk.len()) } else { format!("{:x}", chunk.len()) };
                wire.extend_from_slice(size.as_bytes());
                if ext {
                    wire.extend_from_slice(b" ;name=\"v\"");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer {
                wire.extend_from_slice(b"X-T: 1\r\n");
            }
            wire.extend_from_slice(b"\r\nNEXT");
            let (body, trailers, rest) = decode(&wire, step).unwrap();
            proptest::prop_assert_eq!(body, chunks.concat());
            proptest::prop_assert_eq!(trailers.contains_key("x-t"), trailer);
            proptest::prop_assert_eq!(rest, b"NEXT".to_vec());
        }

        #[test]
        fn arbitrary_bytes_end_in_a_body_or_an_error_never_a_panic(
            wire in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            step in 1usize..64,
        ) {
            if let Ok((body, _, rest)) = decode(&wire, step) {
                proptest::prop_assert!(body.len() + rest.len() < wire.len());
            }
        }
    }

    #[test]
    fn a_truncated_body_never_ends() {
        assert!(matches!(decode(b"5\r\nhel", 2), Err(Error::Incomplete)));
        assert!(matches!(
            decode(b"5\r\nhello\r\n0\r\n", 2),
            Err(Error::Incomplete)
        ));
    }
}
