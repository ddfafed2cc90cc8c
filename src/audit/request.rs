//! The request audit line: one per answered request, the log line certgate writes most.
//!
//! Seven of its twenty-one fields describe the connection (its id, the client's address, the SNI,
//! the partner and the certificate's subject, serial and fingerprint) and never change while it is
//! open. As a tracing event, every field costs a dynamic visit, a key and an escape check on every
//! request: about 6 800 instructions a line, 13 % of a proxied keep-alive request (issue 5). So
//! where the JSON log is installed ([`super::install`]), the connection's fields are rendered once,
//! on its first request ([`ConnFields`]), and each line is written straight to the log writer:
//! the timestamp, the request's own fields, and the connection's block copied whole.
//!
//! The text log, a subscriber set for a scope (tests, benchmarks) and no subscriber at all still
//! get an ordinary `tracing::info!` with every field. Both ways write the same line; the tests
//! compare them byte for byte. The direct line never lists `spans`: certgate opens none, and at
//! `debug` a dependency's span around the response body says nothing about the request.

use std::io::Write as _;
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;

use super::json;

/// What the connection contributes to each of its request lines.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub id: u64,
    pub client_addr: &'a str,
    pub sni: &'a str,
    pub partner: &'a str,
    pub subject: &'a str,
    pub serial: &'a str,
    pub sha256: &'a str,
}

/// The connection's fields as JSON members (`,"conn.id":…,"cert.sha256":"…"`), rendered on the
/// first request that writes a direct line. An idle connection, or one logged as text, never
/// renders them.
#[derive(Debug, Default)]
pub struct ConnFields(OnceLock<Box<str>>);

/// One answered request, as its audit line reports it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub conn: Connection<'a>,
    /// The refusal was policy's (or the client's), not an upstream failure: `decision="deny"`.
    pub denied: bool,
    pub reason: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
    pub upstream_ms: f64,
    pub duration_ms: f64,
}

/// Takes one whole line; where [`super::install`] put the JSON log.
type LineSink = Box<dyn Fn(&[u8]) + Send + Sync>;

static DIRECT: OnceLock<LineSink> = OnceLock::new();

/// Sends request lines straight to `writer` from now on. Only the first call counts, as only the
/// first global subscriber does.
pub(super) fn direct_to<W>(writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = DIRECT.set(Box::new(move |line| {
        // The log writer only fails once its thread has gone, when the process is ending;
        // tracing-subscriber drops the line then too.
        let _ = writer.make_writer().write_all(line);
    }));
}

thread_local! {
    /// The line being written: the thread's requests reuse one buffer.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl RequestLine<'_> {
    /// Writes the line, unless the filter (`RUST_LOG`) turns the `certgate::audit` target off.
    pub fn emit(&self, conn: &ConnFields) {
        if !tracing::enabled!(target: "certgate::audit", tracing::Level::INFO) {
            return;
        }
        match DIRECT.get() {
            Some(sink) if self.write_direct(conn, sink) => {}
            _ => self.event(),
        }
    }

    /// False when the line could not be written here (the thread's buffer is busy or gone), so the
    /// caller sends it as an event instead.
    fn write_direct(&self, conn: &ConnFields, sink: &LineSink) -> bool {
        let block = conn
            .0
            .get_or_init(|| json::connection_members(&self.conn).into());
        LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            if json::request_line(&mut line, self, block).is_ok() {
                sink(line.as_bytes());
            }
            true
        })
        .unwrap_or(false)
    }

    /// The line as a tracing event, for whatever subscriber is current: what [`Self::emit`] falls
    /// back to, and what the benchmarks and tests compare the direct line with.
    pub fn event(&self) {
        let c = &self.conn;
        tracing::info!(
            target: "certgate::audit",
            message = if self.denied { "request refused" } else { "request answered" },
            event = "request",
            decision = if self.denied { "deny" } else { "allow" },
            reason = self.reason,
            conn.id = c.id,
            client.addr = c.client_addr,
            sni = c.sni,
            partner = c.partner,
            cert.subject = c.subject,
            cert.serial = c.serial,
            cert.sha256 = c.sha256,
            route = self.route,
            upstream = self.upstream,
            http.method = self.method,
            http.path = self.path,
            http.status = self.status,
            bytes.in = self.bytes_in,
            bytes.out = self.bytes_out,
            body.complete = self.complete,
            upstream_ms = self.upstream_ms,
            duration_ms = self.duration_ms,
        );
    }
}
