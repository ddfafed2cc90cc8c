//! Instants as a person reads them: RFC 3339 in UTC, `2026-12-03T03:43:15Z`.
//!
//! Status documents and log fields keep Unix seconds internally (cheap to compare and store) and
//! go through here wherever they are shown.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `secs` since the Unix epoch as RFC 3339 UTC; a value beyond year 9999 is written as the
/// seconds themselves rather than not at all.
pub(crate) fn from_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// For `#[serde(serialize_with)]` on Unix seconds.
///
/// # Errors
/// Those of the serializer.
pub(crate) fn serialize<S: serde::Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&from_unix(*secs))
}

/// For `#[serde(serialize_with)]` on optional Unix seconds: `null` stays `null`.
///
/// # Errors
/// Those of the serializer.
pub(crate) fn serialize_option<S: serde::Serializer>(
    secs: &Option<u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secs {
        Some(secs) => s.serialize_some(&from_unix(*secs)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_read_as_utc_dates() {
        assert_eq!(from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(from_unix(1_796_268_195), "2026-12-03T03:23:15Z");
        assert_eq!(from_unix(u64::MAX), u64::MAX.to_string());
    }
}
