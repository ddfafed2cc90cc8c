//! Header rewriting on arbitrary request/response headers: hop-by-hop and client-supplied identity
//! headers (certgate's own and other front ends', checked against a reference matcher) never reach
//! the upstream, `Host` and `Content-Length` survive a `Connection` that names them, and
//! certgate's own identity headers are exactly what it renders for a clean request.
//!
//! Input: byte 0 = flags (upgrade, header style); then `name:value\n` lines.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use certgate::config::model::{ClientCertHeader, Forward, StripHeaders, STRIP_BY_DEFAULT};
use certgate::identity::PeerIdentity;
use certgate::proxy::headers::{rewrite_response, CertificateHeaders, ConnectionHeaders};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

const HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
];

/// Configured on top of the defaults, as `forward.strip_headers`.
const EXTRA_STRIP: &[&str] = &["X_Fuzz-*", "x-exact"];

/// Whether a name is to be stripped, worked out independently of `StripHeaders`: every spelling
/// folded to lower case with `-` for `_`, then compared as a string.
fn reference_strip(name: &str) -> bool {
    let fold = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let name = fold(name);
    STRIP_BY_DEFAULT.iter().chain(EXTRA_STRIP).any(|p| {
        let p = fold(p);
        match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        }
    })
}

/// Names `Connection` cannot make hop-by-hop.
const NEVER_HOP: &[&str] = &["host", "content-length"];

struct Fixture {
    forward: [Forward; 3],
    conn: [ConnectionHeaders; 3],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let leaf = CertificateDer::from_pem_slice(include_bytes!("../../certs/demo-acme.pem"))
            .expect("demo leaf");
        let id = PeerIdentity::from_der(&leaf).expect("identity");
        let addr: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let forward = [
            ClientCertHeader::Rfc9440,
            ClientCertHeader::Xfcc,
            ClientCertHeader::None,
        ]
        .map(|client_cert_header| Forward {
            client_cert_header,
            partner_header: HeaderName::from_static("x-partner"),
            strip_headers: StripHeaders::with_defaults(EXTRA_STRIP.iter().copied()),
        });
        let conn = [0, 1, 2].map(|i| {
            let certificate = CertificateHeaders::render(&forward[i], &id, &[leaf.clone()]);
            ConnectionHeaders::build(Some("acme"), Arc::new(certificate), addr)
        });
        Fixture { forward, conn }
    })
}

fn parse(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let upgrade = flags & 1 == 1;
    let style = usize::from(flags >> 1) % 3;
    let f = fixture();
    let (forward, conn) = (&f.forward[style], &f.conn[style]);

    let input = parse(rest);
    let connection_named: Vec<String> = input
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();

    let mut clean = HeaderMap::new();
    conn.rewrite_request(&mut clean, forward, upgrade);

    let mut req = input.clone();
    conn.rewrite_request(&mut req, forward, upgrade);

    for h in HOP {
        assert!(!req.contains_key(*h), "{h} forwarded");
    }
    // Every header certgate sets carries exactly certgate's values.
    for name in clean.keys() {
        let ours: Vec<_> = clean.get_all(name).iter().collect();
        let sent: Vec<_> = req.get_all(name).iter().collect();
        assert_eq!(ours, sent, "{name}");
    }
    for name in [
        "client-cert",
        "client-cert-chain",
        "x-forwarded-client-cert",
        "x-partner",
        "forwarded",
    ] {
        if !clean.contains_key(name) {
            assert!(!req.contains_key(name), "client-supplied {name} forwarded");
        }
    }
    for (name, _) in &input {
        if reference_strip(name.as_str()) && !clean.contains_key(name) {
            assert!(!req.contains_key(name), "{name} (another front end's) forwarded");
        }
    }
    for token in &connection_named {
        if clean.contains_key(token.as_str())
            || (upgrade && token == "upgrade")
            || NEVER_HOP.contains(&token.as_str())
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            assert!(
                !req.contains_key(&name),
                "Connection-named {name} forwarded"
            );
        }
    }
    if !upgrade {
        assert!(!req.contains_key(http::header::CONNECTION));
        assert!(!req.contains_key(http::header::UPGRADE));
    }
    // Headers that are neither hop-by-hop, identity nor Connection-named pass unchanged.
    for (name, value) in &input {
        let n = name.as_str();
        if HOP.contains(&n)
            || clean.contains_key(name)
            || [
                "client-cert",
                "client-cert-chain",
                "x-forwarded-client-cert",
                "x-partner",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "connection",
                "upgrade",
            ]
            .contains(&n)
            || (connection_named.iter().any(|t| t == n) && !NEVER_HOP.contains(&n))
            || reference_strip(n)
        {
            continue;
        }
        assert!(req.get_all(name).iter().any(|v| v == value), "{n} lost");
    }

    let mut resp = input;
    rewrite_response(&mut resp, upgrade);
    for h in HOP {
        assert!(!resp.contains_key(*h), "{h} returned");
    }
});
