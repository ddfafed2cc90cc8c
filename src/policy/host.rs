//! Which host a request is for, from its Host header and the connection's SNI.
//!
//! A client that connected for one name must not reach another name's routes by sending a different
//! Host header on the same TLS connection (connection reuse in HTTP/2 makes this easy to do by
//! accident, and easy to do on purpose), so when both are present they must agree.

use super::Denial;

/// Longest host name that can match a route host; longer ones cannot be DNS names (253 octets) and
/// are refused with the usual [`Denial::NoRoute`] for host-specific routes.
pub(super) const MAX_HOST_LEN: usize = 255;

/// Picks the host that routes are matched against.
///
/// The Host header wins when present (after its port is stripped), but must equal the SNI when both
/// are present; without a Host header the SNI is used; without either there is no host and only
/// host-less routes can match. An empty Host value means "no authority" (RFC 9112 section 3.2) and is
/// treated as absent.
///
/// The result borrows from the input: it is not lower-cased, so comparisons with it must ignore
/// ASCII case.
///
/// # Errors
/// [`Denial::HostMismatch`] when Host and SNI disagree, or when the Host value is malformed (a bad
/// port, an unclosed `[`, or a byte that cannot be in a host name or IP literal).
pub(super) fn effective_host<'a>(
    host: Option<&'a str>,
    sni: Option<&'a str>,
) -> Result<Option<&'a str>, Denial> {
    let host = match host {
        Some(h) if !h.is_empty() => Some(host_without_port(h).ok_or(Denial::HostMismatch)?),
        _ => None,
    };
    let sni = sni.map(strip_one_trailing_dot);
    match (host, sni) {
        (Some(h), Some(s)) if !h.eq_ignore_ascii_case(s) => Err(Denial::HostMismatch),
        (Some(h), _) => Ok(Some(h)),
        (None, s) => Ok(s),
    }
}

/// Normalises a configured route host the same way a request host is: lower-case, no brackets
/// around an IPv6 literal, no trailing dot.
pub(super) fn route_host_key(host: &str) -> Box<[u8]> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    strip_one_trailing_dot(host)
        .to_ascii_lowercase()
        .into_bytes()
        .into_boxed_slice()
}

/// Strips `:port` (and the brackets of an IPv6 literal) and one trailing dot, checking the shape
/// along the way. `None` means malformed.
fn host_without_port(value: &str) -> Option<&str> {
    let (name, port, is_ip6) = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':')?,
        };
        (inner, port, true)
    } else {
        match value.split_once(':') {
            Some((name, port)) => (name, port, false),
            None => (value, "", false),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = if is_ip6 {
        name
    } else {
        strip_one_trailing_dot(name)
    };
    let ok_byte = |b: u8| {
        if is_ip6 {
            b.is_ascii_hexdigit() || b == b':' || b == b'.'
        } else {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
        }
    };
    if name.is_empty() || !name.bytes().all(ok_byte) {
        return None;
    }
    Some(name)
}

fn strip_one_trailing_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Lower-cases `host` into `buf` for an allocation-free map lookup. `None` when it does not fit, in
/// which case it cannot equal any route host either.
pub(super) fn lower_into<'b>(host: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_sni_must_agree() {
        assert_eq!(
            effective_host(Some("api.example"), Some("api.example")),
            Ok(Some("api.example"))
        );
        assert_eq!(
            effective_host(Some("other.example"), Some("api.example")),
            Err(Denial::HostMismatch)
        );
    }

    #[test]
    fn the_port_is_ignored_and_case_and_one_trailing_dot_do_not_matter() {
        assert_eq!(
            effective_host(Some("API.Example:8443"), Some("api.example")),
            Ok(Some("API.Example"))
        );
        assert_eq!(
            effective_host(Some("api.example.:443"), Some("api.example")),
            Ok(Some("api.example"))
        );
        assert_eq!(
            effective_host(Some("api.example"), Some("API.EXAMPLE.")),
            Ok(Some("api.example"))
        );
        assert_eq!(
            effective_host(Some("api.example.."), Some("api.example")),
            Err(Denial::HostMismatch)
        );
    }

    #[test]
    fn without_host_the_sni_is_used_and_without_sni_the_host() {
        assert_eq!(
            effective_host(None, Some("api.example")),
            Ok(Some("api.example"))
        );
        assert_eq!(
            effective_host(Some(""), Some("api.example")),
            Ok(Some("api.example"))
        );
        assert_eq!(
            effective_host(Some("10.0.0.1:8443"), None),
            Ok(Some("10.0.0.1"))
        );
        assert_eq!(effective_host(None, None), Ok(None));
    }

    #[test]
    fn ipv6_literals_lose_brackets_and_port() {
        assert_eq!(effective_host(Some("[::1]:8443"), None), Ok(Some("::1")));
        assert_eq!(
            effective_host(Some("[2001:DB8::1]"), None),
            Ok(Some("2001:DB8::1"))
        );
        assert_eq!(
            effective_host(Some("[::1]:8443"), Some("api.example")),
            Err(Denial::HostMismatch)
        );
    }

    #[test]
    fn malformed_host_values_are_refused() {
        for h in [
            "api.example:x",
            "api.example:443:1",
            "[::1",
            "[::1]x",
            "[::1]:a",
            "::1",
            ":443",
            "a b",
            "a/b",
            "user@api.example",
            "[fe80::1%25eth0]",
            "[]",
        ] {
            assert_eq!(
                effective_host(Some(h), None),
                Err(Denial::HostMismatch),
                "{h:?}"
            );
        }
    }

    #[test]
    fn route_hosts_are_keyed_like_request_hosts() {
        assert_eq!(&*route_host_key("API.example."), b"api.example");
        assert_eq!(&*route_host_key("[::1]"), b"::1");
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(
            lower_into("Api.Example", &mut buf),
            Some(&b"api.example"[..])
        );
        assert_eq!(lower_into(&"a".repeat(MAX_HOST_LEN + 1), &mut buf), None);
    }
}
