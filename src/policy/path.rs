//! Request path normalisation.
//!
//! Policy matches the normalised path and the proxy forwards that same path, so the upstream sees
//! exactly what policy checked. Any disagreement between the two about what a path means (an
//! encoded dot segment, a doubled slash, a lower-case escape) would be a way around a route's scope,
//! which is why normalisation refuses anything it cannot give one unambiguous meaning.
//!
//! The rules, in the order they apply to each segment:
//! - only RFC 3986 `pchar`s and `/` may appear raw; anything else (space, controls, `#`, `?`, `\`,
//!   `"`, `{`, non-ASCII bytes, ...) is refused;
//! - `%XX` escapes of unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded; every other escape
//!   stays encoded with upper-case hex, so `%2F` is never a separator; a broken escape is refused;
//! - runs of `/` collapse to one, `.` segments drop, `..` removes the previous segment and is
//!   refused when there is none (climbing above the root is an attack, not a typo, so it is not
//!   clamped);
//! - a trailing slash is kept, and a path ending in a dot segment ends with a slash
//!   (`/a/.` → `/a/`, `/a/b/..` → `/a/`), as in RFC 3986 section 5.2.4.

use std::borrow::Cow;

use super::Denial;

/// Normalises a request path (no query string) for matching and forwarding.
///
/// Returns the input borrowed when it is already normal, so the common case does not allocate;
/// otherwise it allocates exactly once (the output is never longer than the input).
///
/// # Errors
/// [`Denial::BadPath`] when the path does not start with `/`, holds a byte that may not appear raw
/// in a path, holds a malformed percent-escape, or has a `..` that would climb above the root.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Denial> {
    if is_normal(path)? {
        Ok(Cow::Borrowed(path))
    } else {
        rewrite(path).map(Cow::Owned)
    }
}

/// Whether `b` may appear raw in a path segment: RFC 3986 `pchar` less `%`, which is handled as an
/// escape by the callers.
fn is_raw_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads the escape whose `%` is at `bytes[i]`, returning the decoded byte.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, Denial> {
    let hi = bytes.get(i + 1).copied().and_then(hex_value);
    let lo = bytes.get(i + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(Denial::BadPath),
    }
}

/// The fast check: `Ok(true)` when `path` is already in normal form, `Ok(false)` when it is valid but
/// needs rewriting.
///
/// It finds every error [`rewrite`] would, including a `..` above the root (by tracking how many
/// segments the rewrite would hold), so that a refused path never allocates.
fn is_normal(path: &str) -> Result<bool, Denial> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Denial::BadPath);
    }
    let mut normal = true;
    // Segments the rewritten path would hold so far.
    let mut depth: usize = 0;
    // The current segment's length once decoded, and whether it is all dots.
    let mut seg_len: usize = 0;
    let mut all_dots = true;
    let mut i = 1;
    loop {
        match bytes.get(i).copied() {
            end @ (None | Some(b'/')) => {
                match (seg_len, all_dots) {
                    // An empty segment is only normal as the last one: a trailing slash, or the
                    // root itself.
                    (0, _) => normal &= end.is_none(),
                    (1, true) => normal = false,
                    (2, true) => {
                        normal = false;
                        depth = depth.checked_sub(1).ok_or(Denial::BadPath)?;
                    }
                    _ => depth += 1,
                }
                if end.is_none() {
                    return Ok(normal);
                }
                seg_len = 0;
                all_dots = true;
                i += 1;
            }
            Some(b'%') => {
                let decoded = escape_at(bytes, i)?;
                let lower_hex = bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase);
                if is_unreserved(decoded) || lower_hex {
                    normal = false;
                }
                seg_len += 1;
                all_dots &= decoded == b'.';
                i += 3;
            }
            Some(b) if is_raw_pchar(b) => {
                seg_len += 1;
                all_dots &= b == b'.';
                i += 1;
            }
            Some(_) => return Err(Denial::BadPath),
        }
    }
}

/// The slow path: builds the normal form in one buffer.
///
/// The buffer always ends with `/` between segments; each segment is decoded straight into it and
/// then inspected, so a dot segment spelled with escapes (`%2e%2E`) is caught like a plain one.
fn rewrite(path: &str) -> Result<String, Denial> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Denial::BadPath);
    }
    // The output is never longer than the input, but while it is built a segment is followed by
    // a `/` that may be popped at the end: one more byte keeps it to a single allocation.
    let mut out = String::with_capacity(bytes.len() + 1);
    out.push('/');
    // Whether the output should end with a slash: true unless the last segment was a plain one.
    let mut trailing_slash;
    let mut i = 1;
    loop {
        let seg_start = out.len();
        // Copy one segment, decoding unreserved escapes and upper-casing the others.
        while let Some(&b) = bytes.get(i) {
            match b {
                b'/' => break,
                b'%' => {
                    let decoded = escape_at(bytes, i)?;
                    if is_unreserved(decoded) {
                        out.push(char::from(decoded));
                    } else {
                        out.push('%');
                        out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                        out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                    }
                    i += 3;
                }
                b if is_raw_pchar(b) => {
                    out.push(char::from(b));
                    i += 1;
                }
                _ => return Err(Denial::BadPath),
            }
        }
        match &out[seg_start..] {
            "" => trailing_slash = true,
            "." => {
                out.truncate(seg_start);
                trailing_slash = true;
            }
            ".." => {
                // `out` is `/` or `/seg/.../seg/`; drop the last `seg/`, refusing at the root.
                out.truncate(seg_start);
                if out.len() <= 1 {
                    return Err(Denial::BadPath);
                }
                out.pop();
                let cut = out.rfind('/').map_or(1, |p| p + 1);
                out.truncate(cut);
                trailing_slash = true;
            }
            _ => {
                out.push('/');
                trailing_slash = false;
            }
        }
        if i >= bytes.len() {
            break;
        }
        // Skip the `/` that ended this segment.
        i += 1;
    }
    if !trailing_slash && out.len() > 1 {
        out.pop();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Denial> {
        normalize(p).map(Cow::into_owned)
    }

    fn ok(s: &str) -> Result<String, Denial> {
        Ok(s.to_owned())
    }

    fn assert_borrowed(p: &str) {
        match normalize(p) {
            Ok(Cow::Borrowed(s)) => assert_eq!(s, p),
            other => panic!("{p:?} should be normal and borrowed, got {other:?}"),
        }
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/v1",
            "/v1/orders",
            "/v1/orders/",
            "/v1/orders/7",
            "/v1%2Forders",
            "/a/%00/b",
            "/a:b@c/!$&'()*+,;=",
            "/.well-known/x",
            "/a/..b/.c./...",
        ] {
            assert_borrowed(p);
        }
    }

    #[test]
    fn doubled_slashes_collapse() {
        assert_eq!(norm("/v1//orders"), ok("/v1/orders"));
        assert_eq!(norm("//v1///orders//"), ok("/v1/orders/"));
        assert_eq!(norm("//"), ok("/"));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/v1/./orders"), ok("/v1/orders"));
        assert_eq!(norm("/v1/x/../orders"), ok("/v1/orders"));
        assert_eq!(norm("/./v1"), ok("/v1"));
        assert_eq!(norm("/."), ok("/"));
        assert_eq!(norm("/v1/.."), ok("/"));
        assert_eq!(norm("/v1/../"), ok("/"));
    }

    #[test]
    fn a_path_ending_in_a_dot_segment_keeps_a_trailing_slash() {
        assert_eq!(norm("/v1/orders/."), ok("/v1/orders/"));
        assert_eq!(norm("/v1/orders/x/.."), ok("/v1/orders/"));
    }

    #[test]
    fn climbing_above_the_root_is_refused_not_clamped() {
        for p in [
            "/..",
            "/../",
            "/v1/../../etc",
            "/%2e%2e",
            "/a/./../..",
            "//..//x",
        ] {
            assert_eq!(norm(p), Err(Denial::BadPath), "{p:?}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(norm("/%761/orders"), ok("/v1/orders"));
        assert_eq!(norm("/%7e%7E%2D%5f%41"), ok("/~~-_A"));
    }

    #[test]
    fn encoded_dot_segments_are_resolved_after_decoding() {
        assert_eq!(norm("/v1/%2e%2e/admin"), ok("/admin"));
        assert_eq!(norm("/v1/.%2E/admin"), ok("/admin"));
        assert_eq!(norm("/v1/%2E/admin"), ok("/v1/admin"));
    }

    #[test]
    fn reserved_escapes_stay_encoded_with_upper_case_hex() {
        assert_eq!(norm("/v1%2forders"), ok("/v1%2Forders"));
        assert_eq!(norm("/a%2fb%3a%00"), ok("/a%2Fb%3A%00"));
        assert_eq!(norm("/%c3%a9"), ok("/%C3%A9"));
        // A decoded `%2F` never becomes a separator, so it cannot take part in `..` resolution.
        assert_eq!(norm("/a%2F.."), ok("/a%2F.."));
        assert_eq!(norm("/a/%2F../b"), ok("/a/%2F../b"));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for p in ["/%", "/%4", "/%G1", "/%1G", "/a%", "/a%2", "/%%41"] {
            assert_eq!(norm(p), Err(Denial::BadPath), "{p:?}");
        }
    }

    #[test]
    fn bytes_not_allowed_raw_are_refused() {
        for p in [
            "/a b", "/a\tb", "/a\0b", "/a#b", "/a?b", "/a\\b", "/é", "/a\"b", "/a{b", "/a|b",
            "/a\x7fb", "/a//b c",
        ] {
            assert_eq!(norm(p), Err(Denial::BadPath), "{p:?}");
        }
    }

    #[test]
    fn a_path_must_start_with_a_slash() {
        for p in ["", "v1/orders", "*", "%2Fv1", "http://x/"] {
            assert_eq!(norm(p), Err(Denial::BadPath), "{p:?}");
        }
    }

    #[test]
    fn trailing_slash_is_preserved() {
        assert_borrowed("/v1/orders/");
        assert_eq!(norm("/v1/orders//"), ok("/v1/orders/"));
        assert_eq!(norm("/v1/%6Frders/"), ok("/v1/orders/"));
    }

    #[test]
    fn normal_output_is_a_fixed_point() {
        for p in ["/v1//./x/../%2e/%7e%2f/", "/a/b/c/../../d", "/%41%2a"] {
            match norm(p) {
                Ok(once) => assert_borrowed(&once),
                Err(e) => panic!("{p:?}: {e}"),
            }
        }
    }
}
