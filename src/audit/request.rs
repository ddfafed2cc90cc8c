//! The request audit line: one per answered request, the log line certgate writes most.
//!
//! As a tracing event, each of its twenty-one fields would cost a dynamic visit, a key lookup and
//! an escape check on every request. So under certgate's JSON log ([`super::subscriber`]) the
//! line is written by one function, `json::request_line`, straight to the log writer, its keys as
//! constants: the JSON subscriber carries its writer as a [`DirectSink`] layer, which the line
//! finds through the current dispatcher. That function is the only writer of the JSON request
//! line; the tests compare it with what tracing-subscriber's own JSON formatter writes for
//! [`RequestLine::event`].
//!
//! Any other subscriber (the text log, a plain tracing-subscriber setup) gets
//! [`RequestLine::event`], an ordinary `tracing::info!` with every field, formatted its own way.
//! The direct line never lists `spans`: certgate opens none, and at `debug` a dependency's span
//! around the response body says nothing about the request.
//!
//! The certificate's three fields (`cert.subject`, `cert.serial`, `cert.sha256`) are rendered once
//! per certificate chain ([`certificate_json`], kept with the chain every connection presenting it
//! shares) and copied onto each line as one run: they are the line's longest values, and checking
//! each for escapes on every request was about 1 % of a proxied request's instructions.
//! The connection's own fields (id, address, SNI, partner) are still written anew on every line:
//! a rendered copy of those would be held by every idle connection, and idle connections are what
//! a gateway holds most of.

use std::io::Write as _;

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
    /// The three fields above as the JSON line writes them, from [`certificate_json`]; `None`
    /// writes them from the fields.
    pub certificate_json: Option<&'a str>,
}

/// `subject`, `serial` and `sha256` as the JSON request line writes them, keys and all, for
/// [`Connection::certificate_json`].
pub fn certificate_json(subject: &str, serial: &str, sha256: &str) -> Box<str> {
    json::certificate_fields(subject, serial, sha256).into()
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

/// A layer that records nothing: it carries the JSON log's writer, so a request line written
/// under that subscriber goes straight to it (found with `Dispatch::downcast_ref`).
pub struct DirectSink(LineSink);

/// Takes one whole line.
type LineSink = Box<dyn Fn(&[u8]) + Send + Sync>;

impl DirectSink {
    pub(super) fn new<W>(writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Self(Box::new(move |line| {
            // The log writer only fails once its thread has gone, when the process is ending;
            // tracing-subscriber drops the line then too.
            let _ = writer.make_writer().write_all(line);
        }))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DirectSink {}

impl std::fmt::Debug for DirectSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSink").finish_non_exhaustive()
    }
}

thread_local! {
    /// The line being written: the thread's requests reuse one buffer.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl RequestLine<'_> {
    /// Writes the line, unless the filter (`RUST_LOG`) turns the `certgate::audit` target off:
    /// directly under certgate's JSON log, else as [`Self::event`].
    pub fn emit(&self) {
        if !tracing::enabled!(target: "certgate::audit", tracing::Level::INFO) {
            return;
        }
        // No tracing call may happen inside `get_default`: the dispatcher is taken meanwhile.
        let direct = tracing::dispatcher::get_default(|d| match d.downcast_ref::<DirectSink>() {
            Some(sink) => {
                self.write_direct(sink);
                true
            }
            None => false,
        });
        if !direct {
            self.event();
        }
    }

    /// Renders the line into the thread's buffer (a fresh one if that is busy or gone) and hands
    /// it to `sink`.
    fn write_direct(&self, sink: &DirectSink) {
        let write = |line: &mut String| {
            line.clear();
            if json::request_line(line, self).is_ok() {
                (sink.0)(line.as_bytes());
            }
        };
        let reused = LINE.try_with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                write(&mut line);
                true
            }
            Err(_) => false,
        });
        if reused != Ok(true) {
            write(&mut String::new());
        }
    }

    /// The line as a tracing event, for any subscriber other than certgate's JSON log (the text
    /// log formats it its own way); the tests and benchmarks also hand it to tracing-subscriber's
    /// JSON formatter, the reference the direct line is compared with.
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
