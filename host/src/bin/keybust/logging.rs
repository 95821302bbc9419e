//! Log lines to stderr, and keybust's spans to OpenTelemetry when tracing
//! is on.

use clap::ValueEnum;
use keybust::serve::access::ACCESS_TARGET;
use keybust::telemetry::export::{self, Tracing};
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Without `RUST_LOG`: info lines.
const DEFAULT_FILTER: &str = "info";

/// Never below these, whatever RUST_LOG says: at debug, oci-client logs a
/// registry's token answer, and the OpenTelemetry exporter a collector's
/// answer, which may echo credentials. A separate filter, not EnvFilter
/// directives: a RUST_LOG directive for a submodule
/// (`oci_client::client=debug`) would outrank a directive for the crate,
/// while a target here covers every module below it.
fn caps() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("oci_client", LevelFilter::INFO)
        .with_target("opentelemetry_sdk", LevelFilter::WARN)
        .with_target("opentelemetry-otlp", LevelFilter::WARN)
        .with_target("opentelemetry_otlp", LevelFilter::WARN)
        .with_target("opentelemetry-http", LevelFilter::WARN)
        .with_target("opentelemetry_http", LevelFilter::WARN)
}

/// Log lines go to stderr, filtered by `RUST_LOG` ([`DEFAULT_FILTER`]); with
/// tracing on, keybust's spans also go to the OTLP exporter.
pub fn init_logging(format: LogFormat, traces: Option<&Tracing>) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::{Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(Lines);
    start_access_flusher();
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.boxed(),
        // Fields at the top level (`"status": 200`, not under `"fields"`),
        // where log collectors look for them.
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let lines = lines.with_filter(filter.and(caps()).and(export::without_trace_spans()));
    // Without tracing, no second layer at all: an absent layer still
    // answers "always" and would turn the trace spans' cached "never" into
    // a filter check per span.
    match traces {
        Some(traces) => tracing_subscriber::registry()
            .with(lines)
            .with(traces.layer())
            .init(),
        None => tracing_subscriber::registry().with(lines).init(),
    }
}

/// Access lines ([`ACCESS_TARGET`], one per request: writing each on its
/// own, one `write` to stderr per line, was a fifth of a cheap request's
/// cost) wait here, at most [`ACCESS_BUFFER_BYTES`] and
/// [`ACCESS_FLUSH_EVERY`], and leave in one write, as nginx's
/// `access_log ... buffer= flush=` does. Every other line is written at
/// once, after the access lines before it, so the log keeps its order.
/// [`flush`] empties it at exit; what a process killed outright had
/// buffered (at most [`ACCESS_FLUSH_EVERY`] of access lines) is lost.
static ACCESS_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const ACCESS_BUFFER_BYTES: usize = 32 << 10;
const ACCESS_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Writes what the access buffer holds to stderr.
pub fn flush() {
    let mut buffer = ACCESS_BUFFER.lock().unwrap_or_else(PoisonError::into_inner);
    write_out(&mut buffer);
}

/// Empties `buffer` into stderr; the caller holds the buffer's lock, so
/// lines leave in the order they were logged.
fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        // Nowhere to report a failed write to stderr.
        let _ = std::io::stderr().lock().write_all(buffer);
        buffer.clear();
    }
}

fn start_access_flusher() {
    let started = std::thread::Builder::new()
        .name("keybust-log".into())
        .spawn(|| {
            loop {
                std::thread::sleep(ACCESS_FLUSH_EVERY);
                flush();
            }
        });
    if started.is_err() {
        // Without the thread, every access line is written as it comes.
        ACCESS_UNBUFFERED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

static ACCESS_UNBUFFERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The log's writers: access lines to [`ACCESS_BUFFER`], the rest to stderr.
struct Lines;

/// One line's writer (the formatter writes a whole line in one call).
enum LineWriter {
    Access,
    Direct,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Direct
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        if meta.target() == ACCESS_TARGET
            && !ACCESS_UNBUFFERED.load(std::sync::atomic::Ordering::Relaxed)
        {
            LineWriter::Access
        } else {
            LineWriter::Direct
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = ACCESS_BUFFER.lock().unwrap_or_else(PoisonError::into_inner);
        match self {
            LineWriter::Access => {
                buffer.extend_from_slice(bytes);
                if buffer.len() >= ACCESS_BUFFER_BYTES {
                    write_out(&mut buffer);
                }
            }
            LineWriter::Direct => {
                write_out(&mut buffer);
                std::io::stderr().lock().write_all(bytes)?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::caps;
    use tracing::Level;

    #[test]
    fn credential_echoing_crates_stay_capped_in_every_module() {
        let caps = caps();
        assert!(!caps.would_enable("oci_client::client", &Level::DEBUG));
        assert!(caps.would_enable("oci_client::client", &Level::INFO));
        assert!(!caps.would_enable("opentelemetry_sdk::trace", &Level::INFO));
        assert!(!caps.would_enable("opentelemetry-otlp", &Level::DEBUG));
        assert!(caps.would_enable("keybust::access", &Level::DEBUG));
    }
}
