//! An OpenTelemetry collector's OTLP/HTTP receiver, reduced to what the
//! tests read: it takes `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, decodes it with the protocol's own
//! definitions (`opentelemetry-proto`), and keeps the raw bodies too, so a
//! test can search everything that was exported.

use super::http::{Handler, respond, spawn_http};
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything a receiver was sent.
#[derive(Default)]
struct Received {
    bodies: Vec<Bytes>,
    spans: Vec<Span>,
    /// Exports that were not a valid OTLP/HTTP protobuf request.
    malformed: usize,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Received>> = Arc::default();
        let log = received.clone();
        let handler: Handler = Arc::new(move |request| {
            let log = log.clone();
            Box::pin(async move {
                let protobuf = request
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
                let path_ok = request.method() == "POST" && request.uri().path() == "/v1/traces";
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let decoded = ExportTraceServiceRequest::decode(body.clone());
                let mut received = log.lock().unwrap();
                received.bodies.push(body);
                match decoded {
                    Ok(export) if protobuf && path_ok => {
                        for resource in export.resource_spans {
                            for scope in resource.scope_spans {
                                received.spans.extend(scope.spans);
                            }
                        }
                    }
                    _ => {
                        received.malformed += 1;
                        return respond(400, "{}");
                    }
                }
                let mut answer =
                    respond(200, ExportTraceServiceResponse::default().encode_to_vec());
                answer.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/x-protobuf"),
                );
                answer
            })
        });
        OtlpReceiver {
            addr: spawn_http(handler).await,
            received,
        }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        let received = self.received.lock().unwrap();
        assert_eq!(
            received.malformed, 0,
            "an export was not OTLP/HTTP protobuf"
        );
        received
            .spans
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Every span received so far.
    pub fn span_count(&self) -> usize {
        self.received.lock().unwrap().spans.len()
    }

    /// Waits up to ten seconds for trace `trace_id` to hold spans named
    /// `names`, and returns all its spans.
    pub async fn wait_for_trace(&self, trace_id: &[u8], names: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.trace(trace_id);
            if names
                .iter()
                .all(|name| spans.iter().any(|span| span.name == *name))
            {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace incomplete after 10 s; got {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether any exported byte, in any body, contains `needle`.
    pub fn exported_anywhere(&self, needle: &str) -> bool {
        let received = self.received.lock().unwrap();
        received.bodies.iter().any(|body| {
            body.windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
    }
}

/// The one span named `name` in `spans`.
pub fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {}", found.len());
    found[0]
}

/// A span attribute, as text (strings as they are; numbers and booleans
/// printed).
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// Whether `span` descends from `ancestor` in `spans`.
pub fn descends_from(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut parent = span.parent_span_id.clone();
    // A trace has no cycles; the bound only guards against a broken export.
    for _ in 0..spans.len() {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == parent) {
            Some(next) => parent = next.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

/// Lower-case hex, as `traceparent` writes ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
