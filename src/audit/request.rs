//! The request audit line: one per answered request, the log line certgate writes most.
//!
//! As a tracing event, each of its twenty-one fields costs a dynamic visit, a key lookup and an
//! escape check on every request: about 6 800 instructions a line, 13 % of a proxied keep-alive
//! request. So where the JSON log is installed ([`super::install`]), each line is
//! written straight to the log writer instead, its keys as constants, with the same primitives
//! certgate's JSON formatter uses.
//!
//! The text log, a subscriber set for a scope (tests, benchmarks) and no subscriber at all still
//! get an ordinary `tracing::info!` with every field. Both ways write the same line; the tests
//! compare them byte for byte. The direct line never lists `spans`: certgate opens none, and at
//! `debug` a dependency's span around the response body says nothing about the request.
//!
//! The connection's seven fields are written anew on every line rather than rendered once per
//! connection: a rendered copy would save about 1 % of a request's instructions but hold about
//! 300 bytes for every idle connection, and idle connections are what a gateway holds most of.

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
    pub fn emit(&self) {
        if !tracing::enabled!(target: "certgate::audit", tracing::Level::INFO) {
            return;
        }
        match DIRECT.get() {
            Some(sink) if self.write_direct(sink) => {}
            _ => self.event(),
        }
    }

    /// False when the line could not be written here (the thread's buffer is busy or gone), so the
    /// caller sends it as an event instead.
    fn write_direct(&self, sink: &LineSink) -> bool {
        LINE.try_with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            if json::request_line(&mut line, self).is_ok() {
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
