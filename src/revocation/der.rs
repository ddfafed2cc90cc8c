//! The certificate fields the handshake path reads without x509-parser: the issuer Name and serial
//! number that key revocation lookups, read with the `der` crate's `SliceReader` (no allocation),
//! the same reader `signed.rs` splits CRLs and OCSP responses with.
//!
//! Used on certificates webpki has already validated: bytes after a complete certificate, and
//! fields after the issuer, are not looked at.

use der::{Decode, Header, Reader, SliceReader, Tag, TagNumber};

/// The raw issuer Name (its whole TLV) and the serial INTEGER's content bytes of a DER
/// certificate; `None` when the bytes do not start with one.
pub(crate) fn cert_issuer_and_serial(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut reader = SliceReader::new(cert_der).ok()?;
    reader
        .sequence(|cert| {
            let fields = cert.sequence(|tbs| {
                let version = Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber::N0,
                };
                if tbs.peek_tag()? == version {
                    tbs.tlv_bytes()?;
                }
                let serial = Header::decode(tbs)?;
                serial.tag.assert_eq(Tag::Integer)?;
                let serial = tbs.read_slice(serial.length)?;
                let signature_alg = tbs.peek_header()?;
                signature_alg.tag.assert_eq(Tag::Sequence)?;
                tbs.tlv_bytes()?;
                let issuer = tbs.peek_header()?;
                issuer.tag.assert_eq(Tag::Sequence)?;
                let issuer = tbs.tlv_bytes()?;
                skip_rest(tbs)?;
                Ok((issuer, serial))
            })?;
            skip_rest(cert)?;
            Ok(fields)
        })
        .ok()
}

/// Whether `raw` is exactly one complete TLV.
pub(crate) fn is_one_tlv(raw: &[u8]) -> bool {
    SliceReader::new(raw)
        .and_then(|mut r| {
            let tlv = r.tlv_bytes()?;
            r.finish(tlv)
        })
        .is_ok()
}

fn skip_rest<'a, R: Reader<'a>>(r: &mut R) -> der::Result<()> {
    let rest = r.remaining_len();
    r.read_slice(rest).map(|_| ())
}

/// Strips leading zero bytes, so the same serial number compares equal however it was padded.
///
/// DER adds a `0x00` before a positive integer whose high bit is set; some issuers pad further.
/// Both the CRL set and the per-handshake lookup key go through this one function.
pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn one_tlv_with_short_and_long_lengths() {
        assert!(is_one_tlv(&[0x02, 0x01, 0x05]));
        assert!(!is_one_tlv(&[0x02, 0x01, 0x05, 0xff]), "trailing byte");
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert!(is_one_tlv(&long));
    }

    #[test]
    fn truncated_and_odd_encodings_are_not_one_tlv() {
        assert!(!is_one_tlv(&[]));
        assert!(!is_one_tlv(&[0x30]));
        assert!(!is_one_tlv(&[0x30, 0x03, 0x01]));
        assert!(!is_one_tlv(&[0x30, 0x80, 0x00, 0x00]), "indefinite length");
        assert!(!is_one_tlv(&[0x1f, 0x01, 0x00]), "high tag number");
        assert!(!is_one_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]));
        assert!(!is_one_tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]));
    }

    #[test]
    fn a_certificates_issuer_and_serial_are_read_as_x509_parser_reads_them() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["leaf.example".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x00, 0x80, 0x01]));
        let cert = params.self_signed(&ca).unwrap();
        let der = cert.der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (issuer, serial) = cert_issuer_and_serial(&der).unwrap();
        assert_eq!(issuer, parsed.issuer().as_raw());
        assert_eq!(serial, parsed.raw_serial());
        // Trailing bytes after the certificate are not looked at; a truncated one is refused.
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(cert_issuer_and_serial(&trailing), Some((issuer, serial)));
        assert_eq!(cert_issuer_and_serial(&der[..der.len() - 1]), None);
        assert_eq!(cert_issuer_and_serial(&[0x02, 0x01, 0x05]), None);
    }

    #[test]
    fn strips_zeros() {
        assert_eq!(strip_leading_zeros(&[0, 0, 0x80, 0]), &[0x80, 0]);
        assert_eq!(strip_leading_zeros(&[0]), &[] as &[u8]);
        assert_eq!(strip_leading_zeros(&[1]), &[1]);
    }
}
