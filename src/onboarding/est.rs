//! The EST wire format (RFC 7030) for `simplereenroll`: a base64 PKCS#10 request in, a base64
//! PKCS#7 "certs-only" answer out (a degenerate SignedData: no content, no signers, the issued
//! certificate in `certificates`, RFC 5652 and RFC 7030 section 4.2.3).

use base64::Engine as _;

/// `id-signedData` (1.2.840.113549.1.7.2), DER.
const SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// `id-data` (1.2.840.113549.1.7.1), DER.
const DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// The CSR of a `simplereenroll` body: base64 DER as EST sends it (line breaks allowed), or a
/// PEM request, which is passed on as it is. `None` when it is neither.
pub(super) fn request(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with("-----BEGIN") {
        return Some(text.as_bytes().to_vec());
    }
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
        .filter(|der| !der.is_empty())
}

/// The base64 PKCS#7 certs-only answer carrying `certificates` (DER), 64 characters a line.
pub(super) fn certs_only(certificates: &[&[u8]]) -> String {
    let certs: Vec<u8> = certificates.concat();
    let signed_data = tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x01][..], // version 1
            &tlv(0x31, &[]),         // digestAlgorithms: none
            &tlv(0x30, &[DATA]),     // encapContentInfo: id-data, no content
            &tlv(0xa0, &[&certs]),   // [0] IMPLICIT certificates
            &tlv(0x31, &[]),         // signerInfos: none
        ],
    );
    let content_info = tlv(0x30, &[SIGNED_DATA, &tlv(0xa0, &[&signed_data])]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(content_info);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// One DER TLV with definite length: `tag`, then the concatenated `parts`.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_definite_form() {
        assert_eq!(tlv(0x04, &[&[1, 2]]), [0x04, 0x02, 1, 2]);
        let long = vec![0u8; 300];
        assert_eq!(&tlv(0x04, &[&long])[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let mid = vec![0u8; 200];
        assert_eq!(&tlv(0x04, &[&mid])[..3], &[0x04, 0x81, 200]);
    }

    #[test]
    fn a_request_is_base64_der_with_line_breaks_or_pem() {
        assert_eq!(request(b"AQID\r\nBA==\n"), Some(vec![1, 2, 3, 4]));
        assert!(request(b"-----BEGIN CERTIFICATE REQUEST-----\n").is_some());
        assert_eq!(request(b"not base64!"), None);
        assert_eq!(request(b""), None);
    }
}
