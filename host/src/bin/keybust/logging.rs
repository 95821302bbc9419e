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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
        // Never below these, whatever RUST_LOG says: at debug, oci-client
        // logs a registry's token answer, and the OpenTelemetry exporter a
        // collector's answer, which may echo credentials.
        .add_directive("oci_client=info".parse().expect("a valid directive"))
        .add_directive("opentelemetry_sdk=warn".parse().expect("a valid directive"))
        .add_directive(
            "opentelemetry-otlp=warn"
                .parse()
                .expect("a valid directive"),
        )
        .add_directive(
            "opentelemetry-http=warn"
                .parse()
                .expect("a valid directive"),
        );
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let lines = lines.with_filter(filter.and(export::without_trace_spans()));
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
