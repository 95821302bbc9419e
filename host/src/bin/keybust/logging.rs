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
        .with_writer(std::io::stderr);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
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
