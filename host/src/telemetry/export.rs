//! Sending keybust's spans to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), configured by the standard `OTEL_*` variables.
//!
//! Tracing is off unless an OTLP endpoint is set or `OTEL_TRACES_EXPORTER`
//! is `otlp`; off, no OpenTelemetry code runs at all. On, spans are
//! batched and exported from the SDK's own thread, so a slow or absent
//! collector never holds up a request: the batch queue is bounded, and what
//! does not fit is dropped. The batch processor also reads the standard
//! `OTEL_BSP_*` variables (queue size, schedule delay, batch size).

use super::TRACE_TARGET;
use crate::config::ConfigError;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::time::Duration;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};

/// Where traces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TracesExporter {
    /// OTLP over HTTP to the collector at `OTEL_EXPORTER_OTLP_ENDPOINT`.
    Otlp,
    /// Nowhere: tracing is off.
    None,
}

/// The OTLP wire format. Only HTTP with protobuf bodies is built in; a
/// gRPC collector also listens for it (port 4318 by convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Which traces are recorded, by the names the OpenTelemetry specification
/// gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerChoice {
    /// Every trace.
    #[value(name = "always_on")]
    AlwaysOn,
    /// No trace.
    #[value(name = "always_off")]
    AlwaysOff,
    /// The fraction `OTEL_TRACES_SAMPLER_ARG` of traces.
    #[value(name = "traceidratio")]
    TraceIdRatio,
    /// The caller's decision when a request carries one, else every trace.
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    /// The caller's decision when a request carries one, else none.
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    /// The caller's decision when a request carries one, else the fraction
    /// `OTEL_TRACES_SAMPLER_ARG`.
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// Tracing settings, under the standard OpenTelemetry variable names.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Continue a caller's trace (its traceparent and tracestate) as the parent of each request's
    /// span: for a public listener behind a gateway or mesh that sets them. Off, each request starts
    /// a trace of its own, the sampler decides afresh, and the caller's span is only a link.
    #[arg(long, env = "KEYBUST_TRUST_TRACE_CONTEXT", value_parser = crate::config::parse_switch)]
    pub trust_trace_context: bool,

    /// Where traces go: `otlp` or `none`
    /// [default: otlp when an OTLP endpoint is set, else none].
    #[arg(
        long = "otel-traces-exporter",
        env = "OTEL_TRACES_EXPORTER",
        value_enum
    )]
    pub traces_exporter: Option<TracesExporter>,

    /// Base URL of the OTLP/HTTP collector; traces go to its `/v1/traces`
    /// (e.g. http://otel-collector:4318) [default with `otlp`: http://localhost:4318].
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub endpoint: Option<String>,

    /// Full URL for traces, used as is; wins over the base URL.
    #[arg(
        long = "otel-exporter-otlp-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub traces_endpoint: Option<String>,

    /// OTLP wire format.
    #[arg(
        long = "otel-exporter-otlp-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub protocol: OtlpProtocol,

    /// Headers sent with every export, as `key=value` pairs separated by
    /// commas, values URL-encoded (e.g. a collector's API key). Never logged.
    #[arg(
        long = "otel-exporter-otlp-headers",
        env = "OTEL_EXPORTER_OTLP_HEADERS",
        hide_env_values = true
    )]
    pub headers: Option<String>,

    /// Time one export may take, in milliseconds.
    #[arg(
        long = "otel-exporter-otlp-timeout",
        env = "OTEL_EXPORTER_OTLP_TIMEOUT",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,

    /// The `service.name` of every span.
    #[arg(
        long = "otel-service-name",
        env = "OTEL_SERVICE_NAME",
        default_value = "keybust"
    )]
    pub service_name: String,

    /// Which traces are recorded.
    #[arg(
        long = "otel-traces-sampler",
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub sampler: SamplerChoice,

    /// The fraction of traces the ratio samplers record, 0 to 1 [default: 1].
    #[arg(long = "otel-traces-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_sampler_arg)]
    pub sampler_arg: Option<f64>,
}

/// A sampling fraction, refused outside 0 to 1 whether or not traces are
/// exported now: a value that only fails once an exporter is turned on
/// would fail on the day it is needed.
fn parse_sampler_arg(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "OTEL_TRACES_SAMPLER_ARG is a fraction from 0 to 1, not {value:?}"
        )),
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OTLP exporter cannot be built.
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl TelemetryArgs {
    /// Whether these settings turn tracing on.
    pub fn enabled(&self) -> bool {
        match self.traces_exporter {
            Some(TracesExporter::Otlp) => true,
            Some(TracesExporter::None) => false,
            None => self.endpoint.is_some() || self.traces_endpoint.is_some(),
        }
    }

    /// The exporting pipeline these settings ask for; none when tracing is off.
    pub fn pipeline(&self) -> Result<Option<Tracing>, TelemetryError> {
        if !self.enabled() {
            return Ok(None);
        }
        let endpoint = self.traces_url();
        let url = url::Url::parse(&endpoint).map_err(|err| {
            ConfigError::invalid("OTEL_EXPORTER_OTLP_ENDPOINT", format!("not a URL: {err}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "must be an http:// or https:// URL",
            )
            .into());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_millis(self.timeout_ms))
            .with_headers(self.parsed_headers()?)
            .build()?;
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(self.sampler()?)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("keybust");
        Ok(Some(Tracing {
            provider,
            tracer,
            export_timeout: Duration::from_millis(self.timeout_ms),
        }))
    }

    /// Where spans are posted: the traces URL as given, else the base URL
    /// with `/v1/traces`.
    fn traces_url(&self) -> String {
        if let Some(url) = &self.traces_endpoint {
            return url.clone();
        }
        let base = self.endpoint.as_deref().unwrap_or("http://localhost:4318");
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }

    fn sampler(&self) -> Result<Sampler, ConfigError> {
        let ratio = match self.sampler_arg {
            None => 1.0,
            Some(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
            Some(_) => {
                return Err(ConfigError::invalid(
                    "OTEL_TRACES_SAMPLER_ARG",
                    "must be a fraction from 0 to 1",
                ));
            }
        };
        Ok(match self.sampler {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
            SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerChoice::ParentBasedTraceIdRatio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        })
    }

    /// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs, comma-separated,
    /// values percent-decoded. The values are not quoted in errors.
    fn parsed_headers(&self) -> Result<HashMap<String, String>, ConfigError> {
        let invalid = |reason: &str| ConfigError::invalid("OTEL_EXPORTER_OTLP_HEADERS", reason);
        let mut headers = HashMap::new();
        for pair in self.headers.iter().flat_map(|all| all.split(',')) {
            if pair.trim().is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid("each entry must be key=value"))?;
            let key = key.trim();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| invalid("a value is not UTF-8 once decoded"))?;
            if http::HeaderName::from_bytes(key.as_bytes()).is_err()
                || http::HeaderValue::from_str(&value).is_err()
            {
                return Err(invalid("an entry is not a valid HTTP header"));
            }
            headers.insert(key.to_owned(), value.into_owned());
        }
        Ok(headers)
    }
}

/// The exporting pipeline: a tracer provider whose batches go to the
/// collector. Keep it for the life of the process and [`Tracing::shutdown`]
/// it at the end, so the last spans are sent.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    export_timeout: Duration,
}

impl Tracing {
    /// The subscriber layer that turns keybust's spans into OpenTelemetry
    /// spans. It takes those spans alone, no log events: events can carry
    /// text a component chose (its output, its error codes), and a
    /// component sees the request's token.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber
            + for<'span> tracing_subscriber::registry::LookupSpan<'span>
            + Send
            + Sync,
    {
        let wanted = Targets::new().with_target(TRACE_TARGET, LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(wanted)
    }

    /// Sends what is still batched and stops the exporter; blocks up to the
    /// export timeout and a second more. Call it outside the async runtime.
    pub fn shutdown(self) {
        if let Err(err) = self
            .provider
            .shutdown_with_timeout(self.export_timeout + Duration::from_secs(1))
        {
            tracing::warn!(error = %err, "the last spans could not be sent");
        }
    }
}

/// A filter for log output that leaves keybust's trace spans out: they are
/// for the tracing layer, and would otherwise prefix every log line.
pub fn without_trace_spans() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(TRACE_TARGET, LevelFilter::OFF)
}

#[cfg(test)]
mod tests;
