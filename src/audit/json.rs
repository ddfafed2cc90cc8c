//! The JSON line format, written straight into the line buffer tracing-subscriber lends us.
//!
//! tracing-subscriber's own JSON formatter drives a `serde_json` map serializer, formats the
//! timestamp into a fresh `String` and goes through an `io::Write` adaptor for every token. At one
//! audit line per request that was about 13 % of the gateway's CPU on the keep-alive path. This
//! formatter writes the same line, byte for byte apart from the timestamp's value, with no
//! allocation: strings are escaped in runs, numbers go through `itoa`/`zmij` (the crates
//! `serde_json` itself uses) and the timestamp's date and time of day are rendered once per second
//! per thread, from the `time` crate's calendar.
//!
//! Shape, in this order: `timestamp`, `level`, the event's fields in the order the macro lists
//! them (`message` first, as tracing puts it there), `target`, then `spans` only when the event
//! happens inside a span — exactly what `fmt().json().flatten_event(true).with_current_span(false)`
//! wrote.
//!
//! Deliberate differences from tracing-subscriber's formatter:
//! * A field whose name ends in `_ms` (`duration_ms`, `upstream_ms`) is written with exactly three
//!   decimals: a reader wants microseconds, not `0.044663999999999995`.
//! * A field named `timestamp`, `level`, `target` or `spans` is written as `fields.<name>`: the
//!   tracing-subscriber writes the key twice, and which of the two a reader kept depended on the reader.
//! * Records from the `log` crate are not renamed to their original target: certgate installs no
//!   `log` bridge, so none arrive.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use time::{OffsetDateTime, PrimitiveDateTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::request::{Connection, RequestLine};

/// Formats each event as one JSON object on one line. Pair it with
/// [`tracing_subscriber::fmt::format::JsonFields`] so span fields are stored as JSON objects.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonLine;

/// The line being written. A line is about a hundred small pieces (keys, quotes, numbers, runs of
/// text); handing each to tracing-subscriber's `Writer` costs a dynamic call and a `String`
/// capacity check, so they are gathered here first and passed on in a few large writes.
struct Line<'a, 'w> {
    out: &'a mut Writer<'w>,
    /// Holds only whole `&str`s, so it is always valid UTF-8.
    buf: [u8; LINE_CHUNK],
    len: usize,
}

/// Large enough that a typical request line (about 650 bytes) takes two writes.
const LINE_CHUNK: usize = 512;

/// Writes one field per call, each preceded by a comma: the object is already open (the timestamp
/// comes first), so no field needs to know whether it is the first.
struct Fields<'a, 'b, 'w> {
    line: &'a mut Line<'b, 'w>,
    /// The first error; once set, later fields are skipped and the line is dropped.
    result: fmt::Result,
}

/// A `fmt::Write` that escapes what passes through it as JSON string content, so a `Display` or
/// `Debug` value is written into the line without an intermediate `String`.
struct Escaping<'a, W: ?Sized>(&'a mut W);

// === impl JsonLine ===

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Line::new(&mut writer);
        line.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut line, SystemTime::now())?;
        line.write_str(match *meta.level() {
            Level::TRACE => "\",\"level\":\"TRACE\"",
            Level::DEBUG => "\",\"level\":\"DEBUG\"",
            Level::INFO => "\",\"level\":\"INFO\"",
            Level::WARN => "\",\"level\":\"WARN\"",
            Level::ERROR => "\",\"level\":\"ERROR\"",
        })?;
        let mut fields = Fields {
            line: &mut line,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        line.write_quoted(b",\"target\":\"", meta.target(), b"\"")?;
        // The same test tracing-subscriber makes: an explicit parent, or else the current span.
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        if in_span {
            write_spans(&mut line, ctx)?;
        }
        line.write_str("}\n")?;
        line.flush()
    }
}

/// `"spans":[…]`, root first: each span's recorded fields (stored as a JSON object by
/// `JsonFields`) plus its `name`, as tracing-subscriber writes them. certgate itself opens no spans;
/// dependencies do at `debug` and `trace`.
fn write_spans<S, N>(out: &mut Line<'_, '_>, ctx: &FmtContext<'_, S, N>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    out.write_str(",\"spans\":[")?;
    if let Some(leaf) = ctx.lookup_current() {
        for (i, span) in leaf.scope().from_root().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            out.write_char('{')?;
            let extensions = span.extensions();
            let inner = extensions
                .get::<FormattedFields<N>>()
                .and_then(|f| f.fields.strip_prefix('{')?.strip_suffix('}'))
                .unwrap_or("");
            // Only a JSON object's members are spliced in; anything else is left out rather than
            // written unchecked into the line.
            if !inner.trim().is_empty() {
                out.write_str(inner)?;
                out.write_char(',')?;
            }
            out.write_str("\"name\":\"")?;
            write_escaped(out, span.name())?;
            out.write_str("\"}")?;
        }
    }
    out.write_char(']')
}

// === the request line, written directly (see `super::request`) ===

fn write_connection(line: &mut Line<'_, '_>, conn: &Connection<'_>) -> fmt::Result {
    line.write_ascii(b",\"conn.id\":")?;
    line.write_str(itoa::Buffer::new().format(conn.id))?;
    line.write_quoted(b",\"client.addr\":\"", conn.client_addr, b"\"")?;
    line.write_quoted(b",\"sni\":\"", conn.sni, b"\"")?;
    line.write_quoted(b",\"partner\":\"", conn.partner, b"\"")?;
    match conn.certificate_json {
        Some(rendered) => line.write_str(rendered),
        None => write_certificate(line, conn.subject, conn.serial, conn.sha256),
    }
}

fn write_certificate(
    line: &mut Line<'_, '_>,
    subject: &str,
    serial: &str,
    sha256: &str,
) -> fmt::Result {
    line.write_quoted(b",\"cert.subject\":\"", subject, b"\"")?;
    line.write_quoted(b",\"cert.serial\":\"", serial, b"\"")?;
    line.write_quoted(b",\"cert.sha256\":\"", sha256, b"\"")
}

/// What [`write_certificate`] writes, on its own: rendered once per certificate chain.
pub(super) fn certificate_fields(subject: &str, serial: &str, sha256: &str) -> String {
    let mut out = String::new();
    let mut writer = Writer::new(&mut out);
    let mut line = Line::new(&mut writer);
    // Writing into a `String` cannot fail.
    let _ = write_certificate(&mut line, subject, serial, sha256).and_then(|()| line.flush());
    out
}

/// The whole line for `request`, exactly as [`JsonLine`] writes the event `RequestLine::event`
/// sends.
pub(super) fn request_line(out: &mut String, request: &RequestLine<'_>) -> fmt::Result {
    let mut writer = Writer::new(out);
    let mut line = Line::new(&mut writer);
    line.write_ascii(b"{\"timestamp\":\"")?;
    write_timestamp(&mut line, SystemTime::now())?;
    if request.denied {
        line.write_ascii(b"\",\"level\":\"INFO\",\"message\":\"request refused\",\"event\":\"request\",\"decision\":\"deny\"")?;
    } else {
        line.write_ascii(b"\",\"level\":\"INFO\",\"message\":\"request answered\",\"event\":\"request\",\"decision\":\"allow\"")?;
    }
    line.write_quoted(b",\"reason\":\"", request.reason, b"\"")?;
    write_connection(&mut line, &request.conn)?;
    line.write_quoted(b",\"route\":\"", request.route, b"\"")?;
    line.write_quoted(b",\"upstream\":\"", request.upstream, b"\"")?;
    line.write_quoted(b",\"http.method\":\"", request.method, b"\"")?;
    line.write_quoted(b",\"http.path\":\"", request.path, b"\"")?;
    line.write_ascii(b",\"http.status\":")?;
    line.write_str(itoa::Buffer::new().format(request.status))?;
    line.write_ascii(b",\"bytes.in\":")?;
    line.write_str(itoa::Buffer::new().format(request.bytes_in))?;
    line.write_ascii(b",\"bytes.out\":")?;
    line.write_str(itoa::Buffer::new().format(request.bytes_out))?;
    if request.complete {
        line.write_ascii(b",\"body.complete\":true,\"upstream_ms\":")?;
    } else {
        line.write_ascii(b",\"body.complete\":false,\"upstream_ms\":")?;
    }
    write_ms(&mut line, request.upstream_ms)?;
    line.write_ascii(b",\"duration_ms\":")?;
    write_ms(&mut line, request.duration_ms)?;
    line.write_ascii(b",\"target\":\"certgate::audit\"}\n")?;
    line.flush()
}

/// A duration in milliseconds with exactly three decimals (microsecond resolution): `0.045`, not
/// `0.044663999999999995`. Values too large for that (beyond about 10^15 ms) fall back to
/// [`write_f64`].
fn write_ms(out: &mut Line<'_, '_>, value: f64) -> fmt::Result {
    let micros = (value * 1e3).round();
    // Exactly representable bounds of i64, so the cast below cannot saturate.
    if !(-9.0e18..=9.0e18).contains(&micros) {
        return write_f64(out, value);
    }
    let micros = micros as i64;
    if micros < 0 {
        out.write_char('-')?;
    }
    let micros = micros.unsigned_abs();
    out.write_str(itoa::Buffer::new().format(micros / 1000))?;
    let frac = micros % 1000;
    // `frac` < 1000: three digits, each below ten.
    let digits = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    out.write_ascii(&digits)
}

/// Whether a field holds milliseconds: written by [`write_ms`].
fn is_ms(name: &str) -> bool {
    name.ends_with("_ms")
}

/// JSON has no NaN or infinity; serde_json writes null for them too.
fn write_f64(out: &mut Line<'_, '_>, value: f64) -> fmt::Result {
    if value.is_finite() {
        out.write_str(zmij::Buffer::new().format_finite(value))
    } else {
        out.write_str("null")
    }
}

// === impl Line ===

impl<'a, 'w> Line<'a, 'w> {
    fn new(out: &'a mut Writer<'w>) -> Self {
        Self {
            out,
            buf: [0; LINE_CHUNK],
            len: 0,
        }
    }

    /// Passes what is gathered on to tracing-subscriber's buffer.
    fn flush(&mut self) -> fmt::Result {
        let pending = self.buf.get(..self.len).unwrap_or_default();
        // Whole `&str`s only went in, so this never fails; checking costs less than a write.
        self.out
            .write_str(std::str::from_utf8(pending).map_err(|_| fmt::Error)?)?;
        self.len = 0;
        Ok(())
    }
}

impl Line<'_, '_> {
    /// `open`, then `s` as JSON string content, then `close`: a key (`,"` … `":`) or a string
    /// value (`"` … `"`). Most keys and values on an audit line are 4 to 16 bytes with nothing to
    /// escape; for those the check and the copy are two overlapping words, and the three pieces
    /// go in with one bounds check, no `memcpy` call and no second pass. (Per piece, the generic
    /// path cost about twice as much: over a third of a request line.) `open` and `close` are
    /// fixed arrays so that their copies compile to plain stores.
    #[inline]
    fn write_quoted<const O: usize, const C: usize>(
        &mut self,
        open: &[u8; O],
        s: &str,
        close: &[u8; C],
    ) -> fmt::Result {
        if let Some(short) = Short::clean(s.as_bytes()) {
            let at = self.len;
            let end = at + O + s.len() + C;
            if let Some(free) = self.buf.get_mut(at..end) {
                if let Some((head, rest)) = free.split_first_chunk_mut::<O>() {
                    *head = *open;
                    if let Some((text, tail)) = rest.split_last_chunk_mut::<C>() {
                        short.put(text);
                        *tail = *close;
                    }
                }
                self.len = end;
                return Ok(());
            }
        }
        self.write_ascii(open)?;
        write_escaped(self, s)?;
        self.write_ascii(close)
    }

    /// A short ASCII constant (so the buffer stays UTF-8), copied as a fixed-size array.
    fn write_ascii<const N: usize>(&mut self, ascii: &[u8; N]) -> fmt::Result {
        if N > LINE_CHUNK - self.len {
            self.flush()?;
        }
        let at = self.len;
        if let Some(free) = self
            .buf
            .get_mut(at..at + N)
            .and_then(|f| f.first_chunk_mut())
        {
            *free = *ascii;
            self.len = at + N;
        }
        Ok(())
    }
}

/// A string of 4 to 16 bytes that needs no escaping, held as its first and last word (8 bytes
/// each from 8 bytes up, 4 each below), which overlap when it is shorter than two words.
#[derive(Clone, Copy)]
enum Short {
    Words(u64, u64),
    Halves(u32, u32),
}

impl Short {
    #[inline]
    fn clean(bytes: &[u8]) -> Option<Self> {
        let short = match bytes.len() {
            8..=16 => Self::Words(
                u64::from_le_bytes(*bytes.first_chunk()?),
                u64::from_le_bytes(*bytes.last_chunk()?),
            ),
            4..=7 => Self::Halves(
                u32::from_le_bytes(*bytes.first_chunk()?),
                u32::from_le_bytes(*bytes.last_chunk()?),
            ),
            _ => return None,
        };
        let mask = match short {
            Self::Words(head, tail) => escape_mask(head) | escape_mask(tail),
            // One word from both halves: a spurious bit only ever sits above a real match.
            Self::Halves(head, tail) => escape_mask(u64::from(head) | u64::from(tail) << 32),
        };
        (mask == 0).then_some(short)
    }

    /// Writes the string into `out`, which is exactly as long as it.
    #[inline]
    fn put(self, out: &mut [u8]) {
        match self {
            Self::Words(head, tail) => put_ends(out, head.to_le_bytes(), tail.to_le_bytes()),
            Self::Halves(head, tail) => put_ends(out, head.to_le_bytes(), tail.to_le_bytes()),
        }
    }
}

#[inline]
fn put_ends<const W: usize>(out: &mut [u8], head: [u8; W], tail: [u8; W]) {
    if let Some(first) = out.first_chunk_mut() {
        *first = head;
    }
    if let Some(last) = out.last_chunk_mut() {
        *last = tail;
    }
}

impl fmt::Write for Line<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.len() > LINE_CHUNK - self.len {
            self.flush()?;
            if s.len() > LINE_CHUNK {
                return self.out.write_str(s);
            }
        }
        let end = self.len + s.len();
        if let Some(free) = self.buf.get_mut(self.len..end) {
            free.copy_from_slice(s.as_bytes());
            self.len = end;
        }
        Ok(())
    }
}

// === impl Fields ===

impl Fields<'_, '_, '_> {
    /// `,"name":`; names that would collide with the line's own keys get a `fields.` prefix.
    fn key(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        match name {
            "timestamp" | "level" | "target" | "spans" => {
                self.line.write_quoted(b",\"fields.", name, b"\":")
            }
            _ => self.line.write_quoted(b",\"", name, b"\":"),
        }
    }

    /// Writes one field unless an earlier one failed.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Line<'_, '_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.line));
        }
    }
}

impl Visit for Fields<'_, '_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if is_ms(field.name()) {
            self.field(field, |out| write_ms(out, value));
        } else {
            self.field(field, |out| write_f64(out, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| out.write_quoted(b"\"", value, b"\""));
    }

    /// The error's own message, without its sources: what tracing-subscriber wrote. Events that
    /// want the chain pass `crate::error_chain` instead.
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value}")?;
            out.write_char('"')
        });
    }

    /// `%` and `?` fields, and 128-bit integers and byte slices (tracing routes those here too):
    /// a JSON string, as tracing-subscriber writes them.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

// === impl Escaping ===

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

/// The escapes for bytes below 0x20, the same ones serde_json writes: the short forms where JSON
/// has one, `\u00XX` (lowercase hex) for the rest.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// The SWAR test for the eight bytes packed little-endian in `word`: the lowest set bit of the
/// result lies in the first byte that is below 0x20, `"` or `\\`, and the result is zero when none
/// is. (A byte less than `n` sets its high bit in `(x - n·0x01…) & !x & 0x80…`; equality is "less
/// than 1" after an XOR. Borrows only run towards higher bytes, so bits above the first match may be
/// spurious but the first match itself is exact.)
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    below(word, 0x20) | below(quote, 1) | below(backslash, 1)
}

/// The byte-at-a-time form of [`escape_mask`], for the few bytes a word does not cover.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Where the first byte that needs escaping sits: eight bytes at a time, then the last few.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let mask = escape_mask(u64::from_le_bytes(word));
        if mask != 0 {
            return Some(offset + (mask.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|at| offset + at)
}

/// Whether no byte of `bytes` needs escaping. The audit line's keys and values are short and
/// almost never need an escape, so this answers for a whole string without a byte-by-byte tail:
/// whole words, then one last word that overlaps the one before. (The masks may be OR-ed: a
/// spurious bit only ever sits above a real match in the same word.)
fn is_clean(bytes: &[u8]) -> bool {
    match bytes.len() {
        0..=3 => !bytes.iter().copied().any(needs_escape),
        4..=16 => Short::clean(bytes).is_some(),
        _ => {
            let word = |w: Option<&[u8; 8]>| u64::from_le_bytes(w.copied().unwrap_or_default());
            bytes
                .chunks_exact(8)
                .fold(escape_mask(word(bytes.last_chunk())), |mask, chunk| {
                    mask | escape_mask(word(chunk.first_chunk()))
                })
                == 0
        }
    }
}

/// Writes `s` as JSON string content (RFC 8259 §7): quote, backslash and control characters
/// escaped, everything else — including non-ASCII UTF-8 — passed through in runs. Audit values
/// rarely need an escape at all, so the common case is one scan and one write.
fn write_escaped<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    if is_clean(s.as_bytes()) {
        return out.write_str(s);
    }
    let mut rest = s;
    while let Some(at) = first_escape(rest.as_bytes()) {
        // The byte at `at` is ASCII, so `at` and `at + 1` are character boundaries.
        let (Some(run), Some(after), Some(&byte)) =
            (rest.get(..at), rest.get(at + 1..), rest.as_bytes().get(at))
        else {
            return Err(fmt::Error);
        };
        if !run.is_empty() {
            out.write_str(run)?;
        }
        out.write_str(match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            _ => CONTROL.get(usize::from(byte)).copied().unwrap_or_default(),
        })?;
        rest = after;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        out.write_str(rest)
    }
}

// === timestamp ===

/// Seconds since the epoch and microseconds within the second, rounded towards the past for
/// instants before 1970 as tracing-subscriber does.
fn split(now: SystemTime) -> (i64, u32) {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_micros(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Sub-microsecond remainders truncate towards the past, like tracing-subscriber's
            // nanoseconds ÷ 1000.
            match d.subsec_nanos() {
                0 => (-secs, 0),
                nanos => (-secs - 1, (1_000_000_000 - nanos) / 1_000),
            }
        }
    }
}

/// The calendar fields of a second since the epoch, from the `time` crate. Its `large-dates`
/// range (years ±999 999) is far beyond any clock certgate will see; an instant outside it is
/// written as the nearest end of that range rather than not at all.
fn civil(secs: i64) -> PrimitiveDateTime {
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => PrimitiveDateTime::new(t.date(), t.time()),
        Err(_) if secs < 0 => PrimitiveDateTime::MIN,
        Err(_) => PrimitiveDateTime::MAX,
    }
}

/// Writes `value` as exactly `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut value: u32) {
    for b in out.iter_mut().rev() {
        // `value % 10` is a single digit.
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for a second since the epoch, or `None` outside years 0–9999.
fn second_prefix(secs: i64) -> Option<[u8; 19]> {
    let t = civil(secs);
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut p = *b"0000-00-00T00:00:00";
    put_digits(&mut p[0..4], year);
    put_digits(&mut p[5..7], u32::from(u8::from(t.month())));
    put_digits(&mut p[8..10], u32::from(t.day()));
    put_digits(&mut p[11..13], u32::from(t.hour()));
    put_digits(&mut p[14..16], u32::from(t.minute()));
    put_digits(&mut p[17..19], u32::from(t.second()));
    Some(p)
}

thread_local! {
    /// The last second this thread rendered and its `YYYY-MM-DDTHH:MM:SS`: lines come many per
    /// second, so the calendar is consulted about once a second per thread.
    static LAST_SECOND: Cell<(i64, [u8; 19])> =
        const { Cell::new((0, *b"1970-01-01T00:00:00")) };
}

/// RFC 3339 UTC with microseconds, `2026-11-27T22:58:17.894741Z`, as tracing-subscriber's
/// `SystemTime` timer writes it (years outside 0–9999 as `+10000` or `-0001`, like it too).
fn write_timestamp<W: fmt::Write + ?Sized>(out: &mut W, now: SystemTime) -> fmt::Result {
    let (secs, micros) = split(now);
    let cached = LAST_SECOND
        .try_with(|last| {
            let (second, prefix) = last.get();
            if second == secs {
                return Some(prefix);
            }
            let prefix = second_prefix(secs)?;
            last.set((secs, prefix));
            Some(prefix)
        })
        .ok()
        .flatten()
        .or_else(|| second_prefix(secs));
    let Some(prefix) = cached else {
        return write_timestamp_slow(out, secs, micros);
    };
    let mut line = *b"0000-00-00T00:00:00.000000Z";
    line[..19].copy_from_slice(&prefix);
    put_digits(&mut line[20..26], micros);
    out.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
}

/// Years before 0 or after 9999: rare enough for `write!`.
fn write_timestamp_slow<W: fmt::Write + ?Sized>(
    out: &mut W,
    secs: i64,
    micros: u32,
) -> fmt::Result {
    let t = civil(secs);
    let year = t.year();
    if year > 9999 {
        write!(out, "+{year}")?;
    } else {
        write!(out, "{year:05}")?;
    }
    write!(
        out,
        "-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests;
