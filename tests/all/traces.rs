//! Traces: a request that carries a W3C `traceparent` from a trusted
//! caller becomes one trace at an OTLP/HTTP receiver the test owns,
//! spanning keybust's work and continued into the backends; an untrusted
//! caller's is only linked; nothing secret is exported; and with tracing
//! off, nothing is sent at all.

use crate::support::otlp::{OtlpReceiver, attribute, descends_from, hex, named};
use crate::support::{
    Backend, ENDPOINT, Options, SECRET, Stack, UPSTASH_TOKEN, hashes, primary_key, sign,
    stranger_key,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SERVER_SPAN: &str = "POST /api/invalidate-user-api-key-cache";

/// keybust serving `backend` with `env`, exporting to `receiver` every 100 ms,
/// and trusting its callers' trace context (`--trust-trace-context`), as
/// behind a gateway that sets it.
async fn traced_stack(
    backend: Backend,
    receiver: &OtlpReceiver,
    env: &[(&'static str, &str)],
) -> Stack {
    let mut env = env.to_vec();
    env.insert(0, ("KEYBUST_TRUST_TRACE_CONTEXT", "true"));
    exporting_stack(backend, receiver, &env).await
}

/// keybust serving `backend` with `env`, exporting to `receiver` every 100 ms.
async fn exporting_stack(
    backend: Backend,
    receiver: &OtlpReceiver,
    env: &[(&'static str, &str)],
) -> Stack {
    let mut options = Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_SERVICE_NAME", "keybust-under-test".to_owned()),
        ],
        ..Options::default()
    };
    options
        .env
        .extend(env.iter().map(|(name, value)| (*name, (*value).to_owned())));
    Stack::with(backend, options).await
}

/// A POST for `hash` with `token`, continuing the caller's trace.
async fn traced_post(stack: &Stack, token: &str, hash: &str) -> u16 {
    stack
        .request(reqwest::Method::POST, ENDPOINT)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .body(json!({ "keyHash": hash }).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn trace_id_bytes() -> Vec<u8> {
    (0..TRACE_ID.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TRACE_ID[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_request_with_a_traceparent_is_one_trace_continued_into_the_backends() {
    let receiver = OtlpReceiver::start().await;
    let stack = traced_stack(Backend::Upstash, &receiver, &[]).await;
    stack.seed(hashes::OWNED);
    // Ready means the issuer's keys are in: the request below must find
    // them, not fetch them (jwks.refetched is asserted false).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reqwest::get(stack.keybust.admin_url("/readyz"))
        .await
        .map(|answer| answer.status() != 200)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let token = stack.issuer.token();
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);
    assert_eq!(stack.cached(hashes::OWNED), Some(false));

    let spans = receiver
        .wait_for_trace(
            &trace_id_bytes(),
            &[
                SERVER_SPAN,
                "instantiate",
                "guest",
                "session.validate",
                "convex.post",
                "cache.delete",
            ],
        )
        .await;

    // The server span continues the caller's span and says what happened.
    let server = named(&spans, SERVER_SPAN);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(server, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(attribute(server, "http.route").as_deref(), Some(ENDPOINT));
    assert_eq!(attribute(server, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );

    // Every other span of the trace is the request's work, beneath it.
    for span in spans.iter().filter(|s| s.span_id != server.span_id) {
        assert!(
            descends_from(&spans, span, server),
            "{} is not under the server span",
            span.name
        );
    }
    let guest = named(&spans, "guest");
    for name in ["session.validate", "convex.post", "cache.delete"] {
        assert!(
            descends_from(&spans, named(&spans, name), guest),
            "{name} is not under the guest"
        );
    }
    let cache = named(&spans, "cache.delete");
    assert_eq!(
        attribute(cache, "cache.backend").as_deref(),
        Some("upstash")
    );
    let session = named(&spans, "session.validate");
    assert_eq!(
        attribute(session, "jwks.refetched").as_deref(),
        Some("false")
    );
    assert_eq!(
        attribute(session, "session.outcome").as_deref(),
        Some("valid")
    );
    let convex = named(&spans, "convex.post");
    assert_eq!(convex.kind, SpanKind::Client as i32);
    assert_eq!(
        attribute(convex, "http.response.status_code").as_deref(),
        Some("200")
    );

    // The backends were told which span called them, in the same trace.
    let call = stack.convex.calls().pop().expect("Convex was called");
    let sent = call.traceparent.expect("Convex got a traceparent");
    assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", hex(&convex.span_id)));
    let upstash = stack
        .upstash
        .as_ref()
        .unwrap()
        .traceparents
        .lock()
        .unwrap()
        .clone();
    assert!(
        upstash
            .iter()
            .any(|sent| *sent == format!("00-{TRACE_ID}-{}-01", hex(&cache.span_id))),
        "Upstash got {upstash:?}"
    );

    // The access line names the trace.
    stack.keybust.assert_logged(TRACE_ID).await;

    // Nothing secret was exported: not the token, the shared secret, the
    // Upstash token, the key hash, nor the cache key.
    let cache_key = stack.cache_key(hashes::OWNED);
    for secret in [
        token.as_str(),
        SECRET,
        UPSTASH_TOKEN,
        hashes::OWNED,
        &cache_key,
    ] {
        assert!(
            !receiver.exported_anywhere(secret),
            "an export contains a secret ({} bytes)",
            secret.len()
        );
    }
    // The service is named as configured.
    assert!(receiver.exported_anywhere("keybust-under-test"));
}

/// On a reused instance (`--instance-reuse`), the guest runs in a task of
/// its own; its calls still belong to the request that made them.
#[tokio::test]
async fn on_a_reused_instance_the_backends_calls_stay_in_the_requests_trace() {
    let receiver = OtlpReceiver::start().await;
    let stack = traced_stack(
        Backend::Redis,
        &receiver,
        &[("KEYBUST_INSTANCE_REUSE", "100")],
    )
    .await;
    let token = stack.issuer.token();
    // An untraced request first, so the traced one lands on a kept instance.
    assert_eq!(stack.invalidate(hashes::OWNED).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);
    let spans = receiver
        .wait_for_trace(
            &trace_id_bytes(),
            &[
                SERVER_SPAN,
                "guest",
                "session.validate",
                "convex.post",
                "cache.delete",
            ],
        )
        .await;
    let server = named(&spans, SERVER_SPAN);
    let guest = named(&spans, "guest");
    assert!(descends_from(&spans, guest, server));
    for name in ["session.validate", "convex.post", "cache.delete"] {
        assert!(
            descends_from(&spans, named(&spans, name), guest),
            "{name} is not under the guest"
        );
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "keybust_instantiate_duration_seconds_count 1"),
        "the traced request should have reused the first request's instance:\n{metrics}"
    );
}

#[tokio::test]
async fn a_refetch_of_the_issuers_keys_shows_in_the_trace() {
    let receiver = OtlpReceiver::start().await;
    let stack = traced_stack(
        Backend::Embedded,
        &receiver,
        &[("KEYBUST_JWKS_REFETCH_COOLDOWN", "1s")],
    )
    .await;
    // Once the keys fetched at start serve a request, rotate: the next
    // token's key is new to keybust, which fetches the set again within
    // that request, once the refetch cooldown has passed.
    Stack::wait_for_ok(|| async { stack.invalidate(hashes::OWNED).await }).await;
    stack.issuer.publish(&[primary_key(), stranger_key()]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = sign(&stack.issuer.claims(), stranger_key());
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);

    let spans = receiver
        .wait_for_trace(&trace_id_bytes(), &["session.validate", "jwks.fetch"])
        .await;
    let session = named(&spans, "session.validate");
    assert_eq!(
        attribute(session, "jwks.refetched").as_deref(),
        Some("true")
    );
    let fetch = named(&spans, "jwks.fetch");
    assert!(descends_from(&spans, fetch, session));
    let sent = stack.issuer.traceparents.lock().unwrap().clone();
    assert!(
        sent.contains(&format!("00-{TRACE_ID}-{}-01", hex(&fetch.span_id))),
        "the issuer got {sent:?}"
    );
}

#[tokio::test]
async fn with_the_exporter_set_to_none_nothing_is_sent() {
    let receiver = OtlpReceiver::start().await;
    let options = Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url()),
            ("OTEL_TRACES_EXPORTER", "none".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
        ..Options::default()
    };
    let mut stack = Stack::with(Backend::Embedded, options).await;
    let token = stack.issuer.token();
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);
    stack.keybust.signal(libc::SIGTERM);
    assert!(stack.keybust.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(receiver.span_count(), 0);
    assert!(
        !stack.keybust.logs().contains(TRACE_ID),
        "a trace id was logged with tracing off"
    );
}

/// A request whose Convex call fails: the failing hop and the server span
/// have status error, and still nothing secret is exported.
#[tokio::test]
async fn a_failing_hop_is_marked_in_the_trace() {
    let receiver = OtlpReceiver::start().await;
    let stack = traced_stack(Backend::Redis, &receiver, &[]).await;
    let token = stack.issuer.token();
    assert_eq!(traced_post(&stack, &token, hashes::STATUS_500).await, 503);
    let spans = receiver
        .wait_for_trace(&trace_id_bytes(), &[SERVER_SPAN, "convex.post"])
        .await;
    let error = opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32;
    let convex = named(&spans, "convex.post");
    assert_eq!(convex.status.as_ref().map(|s| s.code), Some(error));
    assert_eq!(
        attribute(convex, "http.response.status_code").as_deref(),
        Some("500")
    );
    let server = named(&spans, SERVER_SPAN);
    assert_eq!(server.status.as_ref().map(|s| s.code), Some(error));
    assert!(
        spans.iter().all(|span| span.events.is_empty()),
        "no log events in spans"
    );
    for secret in [token.as_str(), SECRET, hashes::STATUS_500] {
        assert!(!receiver.exported_anywhere(secret));
    }
}

/// A collector that cannot be reached is said so in the logs, and requests
/// are served as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_cannot_be_reached_is_logged() {
    let closed = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let options = Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let token = stack.issuer.token();
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);
    stack.keybust.assert_logged("ExportError").await;
    assert_eq!(traced_post(&stack, &token, hashes::OWNED).await, 200);
}

/// By default a caller's trace context is a stranger's: the request starts
/// a trace of its own, linked to the caller's span; the caller's
/// `tracestate` reaches no backend; and a caller's "sampled" flag does not
/// force an export when the sampler would not record the trace.
#[tokio::test]
async fn an_untrusted_callers_trace_context_is_only_linked() {
    let receiver = OtlpReceiver::start().await;
    let stack = exporting_stack(Backend::Embedded, &receiver, &[]).await;
    let token = stack.issuer.token();
    let answer = stack
        .request(reqwest::Method::POST, ENDPOINT)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("tracestate", "caller=chosen")
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let call = stack.convex.calls().pop().expect("Convex was called");
    let sent = call.traceparent.expect("Convex got a traceparent");
    let own_trace = sent.split('-').nth(1).unwrap().to_owned();
    assert_ne!(own_trace, TRACE_ID, "the caller's trace was continued");
    assert!(
        !call
            .tracestate
            .unwrap_or_default()
            .contains("caller=chosen"),
        "the caller's tracestate was passed on"
    );
    let own_trace_bytes: Vec<u8> = (0..own_trace.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&own_trace[i..i + 2], 16).unwrap())
        .collect();
    let spans = receiver
        .wait_for_trace(&own_trace_bytes, &[SERVER_SPAN])
        .await;
    let server = named(&spans, SERVER_SPAN);
    assert!(
        server.parent_span_id.is_empty(),
        "the server span has a parent"
    );
    assert!(
        server
            .links
            .iter()
            .any(|link| hex(&link.trace_id) == TRACE_ID && hex(&link.span_id) == CALLER_SPAN),
        "no link to the caller's span: {:?}",
        server.links
    );
    assert!(receiver.trace(&trace_id_bytes()).is_empty());

    // Sampling off: the caller's "sampled" flag exports nothing.
    let unsampled_receiver = OtlpReceiver::start().await;
    let unsampled = exporting_stack(
        Backend::Embedded,
        &unsampled_receiver,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let token = unsampled.issuer.token();
    assert_eq!(traced_post(&unsampled, &token, hashes::OWNED).await, 200);
    // Well past the 100 ms export delay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(unsampled_receiver.span_count(), 0);
}
