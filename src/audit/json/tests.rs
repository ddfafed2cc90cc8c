//! Every line must parse, carry the values it was given, and match what tracing-subscriber's JSON
//! formatter wrote for the same event — byte for byte outside a span, apart from the timestamp.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;

use super::request_line;
use super::{first_escape, is_clean, split, write_escaped, write_timestamp};
use crate::audit::request::{certificate_json, Connection, RequestLine};
use crate::audit::{subscriber, LogFormat};

thread_local! {
    /// What the subscriber under test wrote on this thread; `with_default` runs on the caller's
    /// thread, so tests running in parallel do not mix lines.
    static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with_borrow_mut(|c| c.extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture(subscriber: impl tracing::Subscriber + Send + Sync, emit: impl FnOnce()) -> String {
    CAPTURED.with_borrow_mut(Vec::clear);
    tracing::subscriber::with_default(subscriber, emit);
    String::from_utf8(CAPTURED.with_borrow_mut(std::mem::take)).expect("a line is UTF-8")
}

/// The text the new formatter writes for what `emit` logs.
fn new_text(emit: impl FnOnce()) -> String {
    capture(
        subscriber(LogFormat::Json, EnvFilter::new("trace"), || Capture, false),
        emit,
    )
}

/// The text tracing-subscriber's JSON formatter, configured as a plain tracing setup has it, writes: the reference.
fn old_text(emit: impl FnOnce()) -> String {
    capture(
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_writer(|| Capture)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish(),
        emit,
    )
}

/// The one line `emit` produced, parsed.
fn new_line(emit: impl FnOnce()) -> Value {
    let text = new_text(emit);
    assert_eq!(text.matches('\n').count(), 1, "{text}");
    assert!(text.ends_with('\n'));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `text` with the timestamp's value blanked, so lines written at different instants compare.
fn without_timestamp(text: &str) -> String {
    let key = "{\"timestamp\":\"";
    assert!(text.starts_with(key), "{text}");
    let rest = &text[key.len()..];
    let end = rest.find('"').unwrap();
    format!("{key}{}", &rest[end..])
}

/// Asserts certgate's formatter writes exactly what tracing-subscriber's does for `emit`.
fn same_as_before(emit: impl Fn()) -> Value {
    let new = new_text(&emit);
    let old = old_text(&emit);
    assert_eq!(without_timestamp(&new), without_timestamp(&old));
    serde_json::from_str(&new).unwrap()
}

/// A `Display` that writes in many small pieces, some needing escapes.
struct Pieces;

impl fmt::Display for Pieces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CN=\"acme\", ")?;
        f.write_str("O=a\\b")?;
        write!(f, "\n{}", 7)
    }
}

#[derive(Debug)]
struct Failure;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream said \"no\"")
    }
}

impl std::error::Error for Failure {}

#[test]
fn strings_are_escaped_and_round_trip() {
    let cases = [
        "plain",
        "quote \" inside",
        "back\\slash",
        "line\nfeed\r\n",
        "tab\tbell\u{7}nul\0esc\u{1b}unit\u{1f}",
        "\u{8}\u{c}",
        "del \u{7f} is not escaped",
        "non-ASCII: é ü 日本 😀",
        "{\"looks\": [\"like\", \"json\"]}",
        "",
    ];
    for s in cases {
        let line = same_as_before(|| tracing::info!(value = s, "m"));
        assert_eq!(line["value"], s);
    }
    let mut out = String::new();
    write_escaped(&mut out, "a\"b\\c\nd\u{1}é").unwrap();
    assert_eq!(out, "a\\\"b\\\\c\\nd\\u0001é");
}

#[test]
fn long_values_cross_the_line_buffer_intact() {
    // Longer than the line's stack buffer, with escapes on both sides of its boundaries.
    let long: String = (0..3000)
        .map(|i| match i % 97 {
            0 => '"',
            1 => '\n',
            2 => 'é',
            _ => char::from(b'a' + (i % 26) as u8),
        })
        .collect();
    let line = same_as_before(
        || tracing::info!(a = long.as_str(), b = %long, c = &long[..500], "{}", &long[..700]),
    );
    assert_eq!(line["a"], long.as_str());
    assert_eq!(line["b"], long.as_str());
    assert_eq!(line["c"], &long[..500]);
    assert_eq!(line["message"], &long[..700]);
}

#[test]
fn numbers_and_booleans_keep_their_json_types() {
    let line = same_as_before(|| {
        tracing::info!(
            big = u64::MAX,
            zero = 0u64,
            negative = i64::MIN,
            minus_one = -1i64,
            yes = true,
            no = false,
            ms = 0.9786930000000001,
            tenth = 0.1,
            huge = 1e300,
            tiny = 5e-324,
            whole = 3.0,
            negative_zero = -0.0,
            "numbers"
        );
    });
    assert_eq!(line["big"], json!(u64::MAX));
    assert_eq!(line["zero"], 0);
    assert_eq!(line["negative"], json!(i64::MIN));
    assert_eq!(line["minus_one"], -1);
    assert_eq!(line["yes"], true);
    assert_eq!(line["no"], false);
    // serde_json's default float parser may be one ulp off, so this one is checked as text:
    // shortest round-trip digits, as serde_json writes them.
    assert!(new_text(|| tracing::info!(ms = 0.9786930000000001))
        .contains(",\"ms\":0.9786930000000001,"));
    assert_eq!(line["tenth"].as_f64(), Some(0.1));
    assert_eq!(line["huge"].as_f64(), Some(1e300));
    assert_eq!(line["tiny"].as_f64(), Some(5e-324));
    assert_eq!(line["whole"].as_f64(), Some(3.0));
}

#[test]
fn non_finite_floats_are_null() {
    let line = same_as_before(|| {
        tracing::info!(
            nan = f64::NAN,
            inf = f64::INFINITY,
            ninf = f64::NEG_INFINITY,
            "x"
        );
    });
    for key in ["nan", "inf", "ninf"] {
        assert!(line[key].is_null(), "{key}: {line}");
    }
}

#[test]
fn display_debug_and_error_fields_are_strings() {
    let err = Failure;
    let line = same_as_before(|| {
        tracing::info!(
            shown = %Pieces,
            debugged = ?"quoted",
            addr = %std::net::SocketAddr::from(([127, 0, 0, 1], 8443)),
            error = &err as &(dyn std::error::Error + 'static),
            maybe = Some(tracing::field::display("only when present")),
            absent = None::<tracing::field::DisplayValue<&str>>,
            wide = u128::MAX,
            "x"
        );
    });
    assert_eq!(line["shown"], "CN=\"acme\", O=a\\b\n7");
    assert_eq!(line["debugged"], "\"quoted\"");
    assert_eq!(line["addr"], "127.0.0.1:8443");
    assert_eq!(line["error"], "upstream said \"no\"");
    assert_eq!(line["maybe"], "only when present");
    assert!(line.get("absent").is_none());
    assert_eq!(line["wide"], u128::MAX.to_string());
}

#[test]
fn message_level_and_target_are_top_level_keys() {
    let line = same_as_before(
        || tracing::warn!(target: "certgate::x", n = 1, "braces {{}} and \"{}\"", "}{"),
    );
    assert_eq!(line["message"], "braces {} and \"}{\"");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["target"], "certgate::x");
    assert_eq!(line["n"], 1);
    let keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert!(keys.contains(&"timestamp"), "{keys:?}");
    // An event without a message has no message key, as in tracing-subscriber's.
    let bare = same_as_before(|| tracing::error!(n = 2));
    assert!(bare.get("message").is_none());
    assert_eq!(bare["level"], "ERROR");
}

#[test]
fn a_field_named_like_a_line_key_does_not_shadow_it() {
    let text = new_text(|| {
        tracing::info!(
            target: "certgate::t",
            level = "mine",
            timestamp = 5,
            target = "also mine",
            "x"
        )
    });
    let line: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "certgate::t");
    assert!(line["timestamp"].is_string());
    assert_eq!(line["fields.level"], "mine");
    assert_eq!(line["fields.timestamp"], 5);
    assert_eq!(line["fields.target"], "also mine");
    assert_eq!(text.matches("\"level\"").count(), 1, "{text}");
}

/// A refused request with values that need escaping.
fn refused_request<'a>() -> RequestLine<'a> {
    RequestLine {
        conn: Connection {
            id: 7,
            client_addr: "10.0.0.9:51000",
            sni: "api.example.com",
            partner: "acme",
            subject: "CN=acme \"billing\", O=Acme\\Inc",
            serial: "2001",
            sha256: "f1f156676f3ef6a233f23411c6ac2f5a4467711254ae041a57c5827e30373cc7",
            certificate_json: None,
        },
        denied: true,
        reason: "scope_denied",
        route: "none",
        upstream: "none",
        method: "POST",
        path: "/v1/payments/\u{1}x?a=\"b\"",
        status: 403,
        bytes_in: 5,
        bytes_out: 61,
        complete: true,
        upstream_ms: 0.0,
        duration_ms: 0.9786930000000001,
    }
}

/// What the direct writer produces for `request`.
fn direct_text(request: &RequestLine<'_>) -> String {
    let mut out = String::new();
    request_line(&mut out, request).unwrap();
    out
}

/// `text` (a line from tracing-subscriber's formatter) with its millisecond fields rounded to
/// three decimals, as certgate writes them.
/// (`null`, for NaN and infinities, stays.)
fn ms_fixed(text: &str) -> String {
    let mut text = text.to_owned();
    for key in ["\"upstream_ms\":", "\"duration_ms\":"] {
        let Some(at) = text.find(key) else { continue };
        let start = at + key.len();
        let end = start + text[start..].find([',', '}']).unwrap();
        if let Ok(value) = text[start..end].parse::<f64>() {
            text.replace_range(start..end, &format!("{value:.3}"));
        }
    }
    text
}

/// What tracing-subscriber's JSON formatter writes for `request`'s event, timestamp blanked and
/// milliseconds fixed: the reference for the direct line.
fn reference_text(request: &RequestLine<'_>) -> String {
    ms_fixed(&without_timestamp(&old_text(|| request.event())))
}

#[test]
fn a_request_line_reads_exactly_as_before_but_for_millisecond_precision() {
    let request = refused_request();
    let new = direct_text(&request);
    assert_eq!(without_timestamp(&new), reference_text(&request));
    let line: Value = serde_json::from_str(&new).unwrap();
    assert_eq!(line["message"], "request refused");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["conn.id"], 7);
    assert_eq!(line["http.status"], 403);
    assert_eq!(line["http.path"], "/v1/payments/\u{1}x?a=\"b\"");
    assert_eq!(line["cert.subject"], "CN=acme \"billing\", O=Acme\\Inc");
    assert_eq!(line["target"], "certgate::audit");
}

#[test]
fn millisecond_fields_have_exactly_three_decimals_and_other_floats_are_untouched() {
    let text = new_text(|| {
        tracing::info!(
            duration_ms = 0.044663999999999995,
            upstream_ms = 0.0,
            took_ms = 1234.56789,
            ratio = 0.044663999999999995,
            "timed"
        )
    });
    assert!(text.contains("\"duration_ms\":0.045,"), "{text}");
    assert!(text.contains("\"upstream_ms\":0.000,"), "{text}");
    assert!(text.contains("\"took_ms\":1234.568,"), "{text}");
    assert!(text.contains("\"ratio\":0.044663999999999995,"), "{text}");

    let request = RequestLine {
        upstream_ms: 12.0,
        duration_ms: 0.044663999999999995,
        ..refused_request()
    };
    let direct = direct_text(&request);
    assert!(
        direct.contains("\"upstream_ms\":12.000,\"duration_ms\":0.045,"),
        "{direct}"
    );
}

#[test]
fn request_lines_read_as_tracing_subscriber_writes_the_event_and_emit_writes_them_directly() {
    let refused = refused_request();
    let answered = RequestLine {
        denied: false,
        reason: "ok",
        status: 200,
        complete: false,
        upstream_ms: f64::NAN,
        duration_ms: f64::INFINITY,
        conn: Connection {
            sni: "",
            ..refused.conn
        },
        ..refused
    };
    for request in [refused, answered] {
        let direct = direct_text(&request);
        assert_eq!(direct.matches('\n').count(), 1, "{direct}");
        assert_eq!(without_timestamp(&direct), reference_text(&request));
        // Under certgate's JSON log, `emit` writes exactly this line.
        assert_eq!(
            without_timestamp(&new_text(|| request.emit())),
            without_timestamp(&direct)
        );
    }
    let line: Value = serde_json::from_str(&direct_text(&answered)).unwrap();
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["body.complete"], false);
    assert_eq!(line["upstream_ms"], Value::Null);
    assert_eq!(line["sni"], "");
}

#[test]
fn spans_are_listed_as_before() {
    let emit = || {
        let outer = tracing::info_span!("conn", conn.id = 3u64, peer = %"1.2.3.4:5");
        let _outer = outer.enter();
        let inner = tracing::info_span!("empty");
        let _inner = inner.enter();
        tracing::info!(n = 1, "inside");
    };
    let new = same_as_before(emit);
    assert_eq!(
        new["spans"],
        json!([{"conn.id": 3, "peer": "1.2.3.4:5", "name": "conn"}, {"name": "empty"}])
    );
    // Outside any span there is no `spans` key, as in tracing-subscriber's.
    assert!(new_line(|| tracing::info!("outside"))
        .get("spans")
        .is_none());
}

/// `time`'s RFC 3339 text for the same instant: at most 9 fraction digits, trailing zeros and an
/// all-zero fraction left out.
fn rfc3339_by_time(secs: i64, micros: u32) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(secs) * 1_000_000_000 + i128::from(micros) * 1_000,
    )
    .unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Ours in the same shortened form.
fn ours_shortened(at: SystemTime) -> String {
    let mut full = String::new();
    write_timestamp(&mut full, at).unwrap();
    assert_eq!(full.len(), "2026-11-27T22:58:17.894741Z".len(), "{full}");
    let body = full.strip_suffix('Z').unwrap();
    let body = body.trim_end_matches('0').trim_end_matches('.');
    format!("{body}Z")
}

fn instant(secs: i64, micros: u32) -> SystemTime {
    let sub = Duration::from_micros(u64::from(micros));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) + sub
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + sub
    }
}

#[test]
fn timestamps_match_the_time_crate() {
    let fixed = [
        (0, 0),
        (0, 1),
        (59, 999_999),
        (951_782_400, 500_000),     // 2000-02-29
        (1_709_164_800, 10),        // 2024-02-29
        (1_795_820_297, 894_741),   // 2026-11-27T22:58:17.894741Z
        (4_107_542_399, 0),         // 2100-02-28T23:59:59
        (4_107_542_400, 0),         // 2100-03-01: not a leap year
        (253_402_300_799, 999_999), // 9999-12-31T23:59:59
        (-1, 999_999),
        (-86_400, 0),
        (-62_167_219_200, 0), // 0000-01-01
    ];
    for (secs, micros) in fixed {
        assert_eq!(
            ours_shortened(instant(secs, micros)),
            rfc3339_by_time(secs, micros),
            "{secs}.{micros:06}"
        );
    }
    // Consecutive lines in one second reuse the cached prefix; the next second must not.
    let a = ours_shortened(instant(1_795_820_297, 1));
    let b = ours_shortened(instant(1_795_820_298, 1));
    assert_eq!(a, "2026-11-27T22:58:17.000001Z");
    assert_eq!(b, "2026-11-27T22:58:18.000001Z");
}

#[test]
fn timestamps_outside_four_digit_years_are_written_like_tracing_subscriber() {
    let mut out = String::new();
    write_timestamp(&mut out, instant(253_402_300_800, 5)).unwrap();
    assert_eq!(out, "+10000-01-01T00:00:00.000005Z");
    out.clear();
    write_timestamp(&mut out, instant(-62_167_219_201, 0)).unwrap();
    assert_eq!(out, "-0001-12-31T23:59:59.000000Z");
}

#[test]
fn instants_before_1970_round_towards_the_past() {
    // 0.25 s before the epoch is 1969-12-31T23:59:59.750000Z.
    assert_eq!(
        split(UNIX_EPOCH - Duration::from_millis(250)),
        (-1, 750_000)
    );
    assert_eq!(split(UNIX_EPOCH - Duration::from_secs(2)), (-2, 0));
}

#[test]
fn a_live_timestamp_has_the_old_shape_and_is_now() {
    let before = SystemTime::now();
    let line = new_line(|| tracing::info!("now"));
    let after = SystemTime::now();
    let ts = line["timestamp"].as_str().unwrap();
    let old: Value = serde_json::from_str(&old_text(|| tracing::info!("now"))).unwrap();
    assert_eq!(ts.len(), old["timestamp"].as_str().unwrap().len());
    let (lo, hi) = (split(before), split(after));
    let mut low = String::new();
    let mut high = String::new();
    write_timestamp(&mut low, instant(lo.0, lo.1)).unwrap();
    write_timestamp(&mut high, instant(hi.0, hi.1)).unwrap();
    // Same-length, zero-padded RFC 3339 text orders like the instants it names.
    assert!(
        low.as_str() <= ts && ts <= high.as_str(),
        "{low} {ts} {high}"
    );
}

proptest! {
    #[test]
    fn the_word_scans_agree_with_a_byte_by_byte_one(
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        plants in proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..10), 0..4),
    ) {
        let naive = |b: &[u8]| b.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
        prop_assert_eq!(first_escape(&bytes), naive(&bytes));
        prop_assert_eq!(is_clean(&bytes), naive(&bytes).is_none());
        // Random bytes rarely avoid an escape for long: plant escapes and their near misses in
        // text that has none, at random places, several per input.
        let mut clean: Vec<u8> = bytes.iter().map(|&b| b | 0x40).map(|b| if b == b'\\' { b'a' } else { b }).collect();
        prop_assert_eq!(first_escape(&clean), None);
        prop_assert!(is_clean(&clean));
        const KINDS: [u8; 10] = [b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x5b, 0x7f, 0x80, 0xff];
        for (at, kind) in plants {
            if !clean.is_empty() {
                let i = at.index(clean.len());
                clean[i] = KINDS[kind];
            }
            prop_assert_eq!(first_escape(&clean), naive(&clean), "{:?}", clean);
            prop_assert_eq!(is_clean(&clean), naive(&clean).is_none(), "{:?}", clean);
        }
    }

    /// Keys and values of 4 to 16 bytes take a shortcut into the line buffer; wherever they
    /// fall relative to its end, with or without something to escape, the line is the same as
    /// tracing-subscriber's.
    #[test]
    fn short_pieces_anywhere_in_the_line_buffer_read_as_before(
        pad in 0usize..600,
        a in "[ -~]{0,18}",
        b in "[ -~]{0,18}",
        c in "[a-z]{4,16}",
    ) {
        let pad = "p".repeat(pad);
        let emit = || tracing::info!(pad = pad.as_str(), short_a = a.as_str(), b = b.as_str(), c = c.as_str(), "{}", c);
        let new = new_text(emit);
        let line: Value = serde_json::from_str(&new).unwrap();
        prop_assert_eq!(line["short_a"].as_str(), Some(a.as_str()));
        prop_assert_eq!(line["b"].as_str(), Some(b.as_str()));
        prop_assert_eq!(without_timestamp(&new), without_timestamp(&old_text(emit)));
    }

    #[test]
    fn timestamps_match_the_time_crate_anywhere_in_four_digit_years(
        secs in -62_167_219_200i64..=253_402_300_799,
        micros in 0u32..1_000_000,
    ) {
        prop_assert_eq!(ours_shortened(instant(secs, micros)), rfc3339_by_time(secs, micros));
    }

    #[test]
    fn any_request_line_reads_as_tracing_subscriber_writes_the_event(
        texts in proptest::collection::vec(
            proptest::collection::vec(any::<char>(), 0..40)
                .prop_map(|c| c.into_iter().collect::<String>()),
            11,
        ),
        numbers in (any::<u64>(), any::<u16>(), any::<u64>(), any::<u64>()),
        flags in (any::<bool>(), any::<bool>()),
        times in (0.0f64..1e6, 0.0f64..1e6),
    ) {
        let t = |i: usize| texts[i].as_str();
        let request = RequestLine {
            conn: Connection {
                id: numbers.0,
                client_addr: t(0),
                sni: t(1),
                partner: t(2),
                subject: t(3),
                serial: t(4),
                sha256: t(5),
                certificate_json: None,
            },
            denied: flags.0,
            reason: t(6),
            route: t(7),
            upstream: t(8),
            method: t(9),
            path: t(10),
            status: numbers.1,
            bytes_in: numbers.2,
            bytes_out: numbers.3,
            complete: flags.1,
            upstream_ms: times.0,
            duration_ms: times.1,
        };
        let direct = direct_text(&request);
        prop_assert_eq!(without_timestamp(&direct), reference_text(&request));
        // The certificate's fields rendered once, as a connection's lines carry them.
        let rendered = certificate_json(t(3), t(4), t(5));
        let prerendered = RequestLine {
            conn: Connection { certificate_json: Some(&rendered), ..request.conn },
            ..request
        };
        prop_assert_eq!(without_timestamp(&direct_text(&prerendered)), without_timestamp(&direct));
        let line: Value = serde_json::from_str(&direct).unwrap();
        prop_assert_eq!(line["cert.subject"].as_str(), Some(t(3)));
        prop_assert_eq!(line["http.path"].as_str(), Some(t(10)));
    }

    #[test]
    fn any_string_round_trips_through_serde_json(
        s in proptest::collection::vec(any::<char>(), 0..48)
            .prop_map(|c| c.into_iter().collect::<String>())
    ) {
        let emit = || tracing::info!(plain = s.as_str(), shown = %s, "{}", s);
        let new = new_text(emit);
        let line: Value = serde_json::from_str(&new).unwrap();
        prop_assert_eq!(line["plain"].as_str(), Some(s.as_str()));
        prop_assert_eq!(line["shown"].as_str(), Some(s.as_str()));
        prop_assert_eq!(line["message"].as_str(), Some(s.as_str()));
        prop_assert_eq!(without_timestamp(&new), without_timestamp(&old_text(emit)));
    }
}
