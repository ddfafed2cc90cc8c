//! Logging setup. Audit events are ordinary tracing events with target `certgate::audit` and
//! dotted field names, so one JSON line carries the whole decision: which identity, which rule,
//! which outcome.
//!
//! # Audit lines
//! * `event="request"`, one per answered request, written when its response body has been sent to
//!   the end (or dropped): `timestamp`, `conn.id`, `client.addr`, `sni`, `partner`
//!   (`unknown` when none), `cert.subject`, `cert.serial`, `cert.sha256`, `route` (`none` when no
//!   route matched), `upstream` (`none` when nothing was forwarded), `http.method`, `http.path`,
//!   `http.status`, `decision` (`allow` | `deny`), `reason` (`ok` or the refusal's reason code;
//!   upstream failures are `allow` with an `upstream_*` reason), `bytes.in` and `bytes.out` (body
//!   bytes streamed each way, never buffered), `body.complete` (false when the client left before
//!   the response body ended), `upstream_ms` (to the upstream's response head; 0 when not
//!   forwarded) and `duration_ms` (request head to the end of the response body).
//! * `event="handshake_refused"`, one per refused TLS handshake: `conn.id`, `client.addr`,
//!   `decision="deny"`, `reason` (`tls::handshake::HandshakeFailure`), `error` (the reason's
//!   sentence), `duration_ms`, and when a certificate was presented and judged `cert.subject`,
//!   `cert.issuer`, `cert.serial`, `cert.sha256` and the `partner` it would have mapped to.
//! * `event="connection_refused"`, one per connection closed after the handshake because its
//!   client crossed a limit or broke the protocol, mostly inside hyper or h2 before any request
//!   reached certgate (a 431, a slowloris head, an HTTP/2 flood's GOAWAY): `conn.id`,
//!   `client.addr`, `partner` (`unknown` when none), `cert.serial`, `cert.sha256`,
//!   `decision="deny"`, `reason` (`conn_refusal::ConnRefusal`: `header_too_large`,
//!   `header_timeout`, `bad_request`, `http2_protocol_error`, `http2_flood`, `stalled`) and
//!   `error`. A client that merely leaves, and an idle connection closed, get none.
//! * `event="connection_limit_reached"`, each time the accept loop finds every `max_connections`
//!   permit taken: `limit`, `decision="wait"`. The clients that then wait in the backlog were
//!   never accepted, so no line names them.
//! * `event="connection_revoked"`, when a live connection (or its tunnel) is cut because its
//!   certificate was revoked: `conn.id`, `client.addr`, `partner`, `cert.serial`.
//! * `event="tunnel_closed"`, one per upgraded connection (WebSocket) when it ends: the
//!   connection's fields as on `connection_refused`, `route`, `upstream`, `reason`
//!   (`proxy::tunnel::TunnelEnd`: `client_closed`, `upstream_closed`, `error`, `idle_timeout`,
//!   `certificate_revoked`, `drain`, `upgrade_failed`), `bytes.in` (partner to upstream),
//!   `bytes.out` (upstream to partner), `duration_ms` and `error`.
//! * `event="drain_timeout"`, when `drain_timeout` passes during shutdown: `timeout_ms` and
//!   `connections` (how many are cut). A request cut then, or dropped with its connection for any
//!   other reason before it was answered, still gets its `event="request"` line, with
//!   `http.status` 0 and the reason its connection ended (`drain_timeout`, `certificate_revoked`,
//!   `stalled`, `connection_closed`).
//!
//! `docs/audit.md` is the operator's version of this list, with every reason code.
//!
//! # Line format
//! `--log-format json` writes one object per line: `timestamp` (RFC 3339 UTC, microseconds),
//! `level`, `message`, the event's fields under their dotted names, `target`, and `spans` only for
//! an event inside a span (certgate opens none; dependencies do at `debug`/`trace`). This is what
//! tracing-subscriber's flattened JSON formatter wrote, byte for byte; certgate writes it with its
//! own formatter (`audit/json.rs`) because the audit line was about 13 % of the gateway's CPU per
//! proxied request, mostly that formatter's serde maps and allocations, and this one allocates
//! nothing (`benches/audit.rs` compares the two). A field named `timestamp`, `level`, `target` or
//! `spans` appears as `fields.<name>` rather than as a second key of the same name. The request
//! line skips tracing's event dispatch: one function writes it straight to the log writer
//! (`audit/request.rs`).
//!
//! # Log file and rotation
//! `--log-file PATH` appends to `PATH` (created if missing) instead of writing to stdout. Lines
//! are written whole, on a file opened with `O_APPEND`, so rotate with logrotate's
//! `copytruncate`: after the truncation the next line lands at the new end of the file.
//! certgate does not reopen the file on SIGHUP (SIGHUP reloads the configuration).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::EnvFilter;

mod json;
pub mod request;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: what log pipelines ingest.
    Json,
    /// Human-readable, for a terminal.
    Text,
}

/// The writer thread's buffer: lines larger than this are written on their own.
const WRITE_BUFFER: usize = 64 * 1024;

/// A flush that carried at least this many lines means the gateway is busy, and the writer thread
/// then waits [`PACE`] before it takes the next batch.
const BUSY_LINES: usize = 4;
const PACE: Duration = Duration::from_millis(10);

/// Keeps the log writer thread alive; dropping it flushes every line still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber, writing to stdout or appending to `file`. `RUST_LOG`
/// overrides the default level (`info`).
///
/// Lines are formatted on the request's task but written by a dedicated thread, so a request
/// never waits on `write(2)`. That thread writes whatever lines are queued in as few `write`
/// calls as a 64 KiB buffer allows and flushes when the queue is empty, so an idle gateway's last
/// line is on disk at once. Under load it then rests for 10 ms (see [`Paced`]) and takes the
/// next batch whole. The queue holds 128 Ki lines; when it is full, writers wait rather than drop
/// lines: an audit trail with holes is worse than a brief stall.
///
/// # Errors
/// The log file cannot be opened.
pub fn init(format: LogFormat, file: Option<&Path>) -> std::io::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = || {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(128 * 1024)
            .thread_name("certgate-log")
    };
    let ((writer, guard), ansi) = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (builder().finish(Paced::new(file)), false)
        }
        None => (
            builder().finish(Paced::new(std::io::stdout())),
            std::io::stdout().is_terminal(),
        ),
    };
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = install(format, filter, writer, ansi);
    Ok(LogGuard(guard))
}

/// The log writer thread's output. tracing-appender's thread blocks on its queue whenever the
/// queue runs empty, and then every line queued wakes it: a futex wake on the request's thread
/// and two context switches on the gateway's core, several times a millisecond under load.
/// After a flush that carried [`BUSY_LINES`] or more, this writer sleeps for [`PACE`]
/// instead: lines queue up meanwhile without waking anyone, and the next batch is written whole.
/// A trickle of lines (an idle gateway, a test) is never held back.
struct Paced<W: Write> {
    out: BufWriter<W>,
    lines: usize,
}

impl<W: Write> Paced<W> {
    fn new(out: W) -> Self {
        Self {
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            lines: 0,
        }
    }
}

impl<W: Write> Write for Paced<W> {
    /// tracing-appender hands over one line per call.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.lines += 1;
        self.out.write_all(line)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if std::mem::take(&mut self.lines) >= BUSY_LINES {
            std::thread::sleep(PACE);
        }
        Ok(())
    }
}

/// Makes [`subscriber`] the global default. Tests capture audit lines through this.
///
/// Returns false, changing nothing, when a global subscriber was already set: a second call
/// (tests, embedding) keeps the first.
pub fn install<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> bool
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    tracing::subscriber::set_global_default(subscriber(format, filter, writer, ansi)).is_ok()
}

/// The subscriber [`install`] sets, writing to `writer`; on its own, for a scope. The JSON one
/// carries `writer` as a [`request::DirectSink`] too, so request lines reach it directly.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => {
            let writer = Shared(Arc::new(writer));
            Box::new(
                builder
                    .with_writer(writer.clone())
                    .fmt_fields(JsonFields::new())
                    .event_format(json::JsonLine)
                    .finish()
                    .with(request::DirectSink::new(writer)),
            )
        }
        LogFormat::Text => Box::new(builder.with_writer(writer).with_ansi(ansi).finish()),
    }
}

/// One writer for both the JSON formatter and the request line's [`request::DirectSink`].
struct Shared<W>(Arc<W>);

impl<W> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Shared<W> {
    type Writer = W::Writer;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Bursts large enough to make the writer rest between batches lose nothing and keep their
    /// order, and dropping the guard mid-rest still writes every queued line.
    #[test]
    fn paced_batches_keep_every_line_in_order_through_the_guards_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = std::fs::File::create(&path).unwrap();
        let (mut writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(Paced::new(file));
        for burst in 0..20 {
            for i in 0..250 {
                // One `write` per line, as tracing-subscriber hands them over.
                let line = format!("{{\"burst\":{burst},\"line\":{i}}}\n");
                writer.write_all(line.as_bytes()).unwrap();
            }
            std::thread::yield_now();
        }
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5_000);
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(
                *line,
                format!("{{\"burst\":{},\"line\":{}}}", n / 250, n % 250)
            );
        }
    }
}
