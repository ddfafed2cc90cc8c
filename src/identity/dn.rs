//! Distinguished names as RFC 4514 strings, the form `openssl x509 -nameopt RFC2253` prints.
//!
//! A subject is chosen by whoever requested the certificate, so its text can hold anything: a
//! comma or quote inside a value must not read as the start of another attribute in an audit
//! line or a forwarded header. RFC 4514 settles it: RDNs last-to-first, `,` between them, `+`
//! inside a multi-valued one, special characters escaped with `\`, and a value that is not a
//! string written as `#` and the hex of its DER.

use std::fmt::Write as _;

use x509_parser::der_parser::asn1_rs::{Any, Tag, ToDer as _};
use x509_parser::oid_registry::{self, Oid};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// `name` in RFC 4514 form, e.g. `O=Evil\, Inc,CN=acme`.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attr);
        }
    }
    out
}

fn push_attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) {
    match short_name(attr.attr_type()) {
        Some(short) => out.push_str(short),
        None => out.push_str(&attr.attr_type().to_id_string()),
    }
    out.push('=');
    match string_value(attr.attr_value()) {
        Some(text) => push_escaped(out, &text),
        None => push_hex(out, attr.attr_value()),
    }
}

/// The names RFC 4514 §3 defines; every other type is written as its dotted OID.
fn short_name(oid: &Oid<'_>) -> Option<&'static str> {
    [
        (oid_registry::OID_X509_COMMON_NAME, "CN"),
        (oid_registry::OID_X509_LOCALITY_NAME, "L"),
        (oid_registry::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (oid_registry::OID_X509_ORGANIZATION_NAME, "O"),
        (oid_registry::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (oid_registry::OID_X509_COUNTRY_NAME, "C"),
        (oid_registry::OID_X509_STREET_ADDRESS, "STREET"),
        (oid_registry::OID_DOMAIN_COMPONENT, "DC"),
        (oid_registry::OID_USERID, "UID"),
    ]
    .into_iter()
    .find_map(|(known, short)| (known == *oid).then_some(short))
}

/// The value's characters, for the string types a name uses; `None` for anything else.
fn string_value(value: &Any<'_>) -> Option<String> {
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::TeletexString => std::str::from_utf8(value.data).ok().map(str::to_owned),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            value
                .data
                .len()
                .is_multiple_of(2)
                .then(|| String::from_utf16(&units).ok())
                .flatten()
        }
        Tag::UniversalString => {
            let chars: Option<String> = value
                .data
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            chars.filter(|_| value.data.len().is_multiple_of(4))
        }
        _ => None,
    }
}

/// RFC 4514 §2.4: `"` `+` `,` `;` `<` `>` `\` escaped everywhere, a space or `#` at the start and
/// a space at the end escaped, and control characters as `\XX` so that no log reader sees them raw.
fn push_escaped(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() && c.is_ascii() => {
                let _ = write!(out, "\\{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `#` and the hex of the value's whole DER encoding (RFC 4514 §2.4, for non-string values).
fn push_hex(out: &mut String, value: &Any<'_>) {
    out.push('#');
    match value.to_der_vec() {
        Ok(der) => out.push_str(&hex::encode_upper(der)),
        Err(_) => out.push_str(&hex::encode_upper(value.data)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer as _;

    fn rendered(build: impl FnOnce(&mut rcgen::DistinguishedName)) -> String {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        build(&mut params.distinguished_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) =
            x509_parser::certificate::X509Certificate::from_der(cert.der().as_ref()).unwrap();
        rfc4514(parsed.subject())
    }

    #[test]
    fn rdns_are_written_last_first_with_specials_escaped() {
        let text = rendered(|dn| {
            dn.push(rcgen::DnType::OrganizationName, "Evil, Inc");
            dn.push(rcgen::DnType::CommonName, "a,x;y=z\"q");
        });
        assert_eq!(text, "CN=a\\,x\\;y=z\\\"q,O=Evil\\, Inc");
    }

    #[test]
    fn leading_and_trailing_spaces_a_leading_hash_and_controls_are_escaped() {
        let text = rendered(|dn| {
            dn.push(rcgen::DnType::CommonName, " #a\u{1}b ");
        });
        assert_eq!(text, "CN=\\ #a\\01b\\ ");
        let text = rendered(|dn| dn.push(rcgen::DnType::CommonName, "#x<y>+\\"));
        assert_eq!(text, "CN=\\#x\\<y\\>\\+\\\\");
    }

    #[test]
    fn unknown_types_are_dotted_oids() {
        let text = rendered(|dn| {
            dn.push(rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]), "v");
        });
        assert_eq!(text, "1.2.3.4=v");
    }
}
