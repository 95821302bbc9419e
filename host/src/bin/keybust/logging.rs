//! Log lines to stderr, and keybust's spans to OpenTelemetry when tracing
//! is on.

use clap::ValueEnum;
use keybust::telemetry::export::{self, Tracing};

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Without `RUST_LOG`: keybust's info lines; sigstore's own chatter about
/// each signature check (keybust logs the outcome) only when it is an error.
const DEFAULT_FILTER: &str = "info,sigstore=error";

/// Log lines go to stderr, filtered by `RUST_LOG` ([`DEFAULT_FILTER`]); with
/// tracing on, keybust's spans also go to the OTLP exporter.
pub fn init_logging(format: LogFormat, traces: Option<&Tracing>) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::{Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(filter.and(export::without_trace_spans())))
        .with(traces.map(Tracing::layer))
        .init();
}
