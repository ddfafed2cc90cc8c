//! A minimal, allocation-free DER reader.
//!
//! Only what the handshake path needs: read one TLV at a time, single-byte tags, definite lengths
//! up to four length bytes, to find a certificate's issuer and serial. It is used on certificates
//! that webpki has already validated, so it is lenient about non-minimal encodings and strict
//! about anything that would make it read out of bounds. Signed structures (CRLs, OCSP responses)
//! are split by `signed.rs` with the `der` crate.

/// `SEQUENCE` (constructed).
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
/// `INTEGER`.
pub(crate) const TAG_INTEGER: u8 = 0x02;
/// `[0] EXPLICIT` (constructed, context-specific 0): the certificate's version field.
pub(crate) const TAG_CONTEXT_0: u8 = 0xa0;

/// One decoded TLV.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// The value bytes, without tag and length.
    pub(crate) content: &'a [u8],
    /// The whole encoding, tag and length included.
    pub(crate) whole: &'a [u8],
}

/// Reads one TLV from the front of `input`; returns it and the bytes after it.
///
/// `None` for truncated input, high-tag-number tags, indefinite lengths and lengths over 4 bytes.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at_checked(len)?;
    let whole = input.get(..header + len)?;
    Some((
        Tlv {
            tag,
            content,
            whole,
        },
        after,
    ))
}

/// Reads one TLV and requires its tag to be `tag`.
pub(crate) fn expect_tlv(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (tlv, rest) = read_tlv(input)?;
    (tlv.tag == tag).then_some((tlv, rest))
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
    fn reads_short_and_long_lengths() {
        let short = [0x02, 0x01, 0x05, 0xff];
        let (tlv, rest) = read_tlv(&short).unwrap();
        assert_eq!(
            (tlv.tag, tlv.content, tlv.whole, rest),
            (2, &[5u8][..], &short[..3], &[0xffu8][..])
        );

        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        let (tlv, rest) = read_tlv(&long).unwrap();
        assert_eq!(tlv.content.len(), 256);
        assert_eq!(tlv.whole.len(), 260);
        assert!(rest.is_empty());
    }

    #[test]
    fn rejects_truncated_and_odd_encodings() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x03, 0x01]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(read_tlv(&[0x1f, 0x01, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(read_tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }

    #[test]
    fn strips_zeros() {
        assert_eq!(strip_leading_zeros(&[0, 0, 0x80, 0]), &[0x80, 0]);
        assert_eq!(strip_leading_zeros(&[0]), &[] as &[u8]);
        assert_eq!(strip_leading_zeros(&[1]), &[1]);
    }
}
