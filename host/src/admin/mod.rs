//! The admin listener: health, readiness, metrics, and the component API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the backends are configured, else 503 with the reasons |
//! | `GET /metrics` | Prometheus text |
//! | `GET /admin/component` | digest, wasi_http, source, loaded_at, previous_digest, and the followed tag beside them (`follow`) |
//! | `PUT /admin/component` | swap in the body's component, or the one `{"reference": "oci://…"}` names (bearer token) |
//! | `POST /admin/component/rollback` | back to the previous version (bearer token) |
//! | `GET /admin/rollout` | the candidate earning its traffic, its stage and counts, the last decision |
//! | `POST /admin/rollout/promote`, `/abort` | serve the candidate now, or drop it as refused (bearer token) |
//!
//! Mutations are taken from loopback peers only, unless
//! `--admin-allow-remote`; a listener for probes alone (`--metrics-listen`)
//! answers only the first three.

mod policy;
mod swap;

pub use policy::{AdminArgs, AdminPolicy};

use crate::body::{ResponseBody, json_response};
use crate::serve::endpoint::Endpoint;
use crate::versions::slot::Version;
use bytes::Bytes;
use http::Method;
use hyper::body::Incoming;
use policy::authorize;
use serde_json::json;
use std::sync::Arc;
use swap::put_component;

/// The largest `{"reference": …}` body the admin API reads.
const MAX_REFERENCE_BODY_BYTES: usize = 64 << 10;

/// Answers one admin request. Every request to the component API, and
/// every refused one, leaves one audit line (target `keybust::audit`):
/// peer, action, digest, outcome. Probes (`/healthz`, `/readyz`,
/// `/metrics`) leave none.
pub async fn handle(
    endpoint: &Arc<Endpoint>,
    policy: &AdminPolicy,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<crate::serve::server::Peer>()
        .map(|peer| peer.0);
    let action = format!("{} {path}", request.method());
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    let (response, digest) = if policy.probes_only && !probe {
        (json_response(404, r#"{"error":"Not found"}"#), None)
    } else {
        answer(endpoint, policy, peer, request).await
    };
    // Probes are not actions: an unready /readyz, probed every few
    // seconds, would bury the audit trail.
    if !probe {
        let outcome = response.status().as_u16();
        tracing::info!(
            target: "keybust::audit",
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            action,
            digest = digest.as_deref().unwrap_or(""),
            outcome,
        );
    }
    response
}

/// The answer, and the digest a swap or rollback concerned.
async fn answer(
    endpoint: &Arc<Endpoint>,
    policy: &AdminPolicy,
    peer: Option<std::net::SocketAddr>,
    request: hyper::Request<Incoming>,
) -> (hyper::Response<ResponseBody>, Option<String>) {
    let path = request.uri().path().to_owned();
    let mutation = matches!(
        (request.method(), path.as_str()),
        (&Method::PUT, "/admin/component")
            | (&Method::POST, "/admin/component/rollback")
            | (&Method::POST, "/admin/rollout/promote")
            | (&Method::POST, "/admin/rollout/abort")
    );
    if mutation && let Err(refusal) = authorize(policy, peer, &request) {
        // The upload is not read; drained, so the refusal reaches a client
        // still sending it.
        crate::body::discard(request.into_body());
        return (refusal.response(), None);
    }
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => (json_response(200, r#"{"status":"ok"}"#), None),
        (&Method::GET, "/readyz") => (readiness(endpoint), None),
        (&Method::GET, "/metrics") => {
            let metrics = endpoint.metrics();
            let capabilities = endpoint.capabilities();
            metrics.scraped(crate::metrics::ScrapeState {
                not_ready: Some(
                    endpoint
                        .unready_reasons()
                        .first()
                        .map_or(crate::metrics::NotReady::Ready, |(kind, _)| *kind),
                ),
                backends: capabilities.backends_up(),
                jwks_age: capabilities.session.keys_age(),
            });
            let format = crate::metrics::Format::negotiate(
                request
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|accept| accept.to_str().ok()),
            );
            let mut response = json_response(200, metrics.encode(format));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            (response, None)
        }
        (&Method::GET, "/admin/component") => (component_json(endpoint, 200, None), None),
        (&Method::PUT, "/admin/component") => put_component(endpoint, policy, request).await,
        (&Method::GET, "/admin/rollout") => (rollout_json(endpoint, 200), None),
        (&Method::POST, "/admin/rollout/promote") => match endpoint.slot().candidate() {
            Some(candidate) => {
                let digest = candidate.version.digest().to_owned();
                endpoint
                    .slot()
                    .promote(
                        &candidate,
                        "promoted by an operator (POST /admin/rollout/promote)",
                    )
                    .await;
                (rollout_json(endpoint, 200), Some(digest))
            }
            None => (error(409, "there is no candidate to promote"), None),
        },
        (&Method::POST, "/admin/rollout/abort") => match endpoint.slot().abort().await {
            Some(candidate) => (
                rollout_json(endpoint, 200),
                Some(candidate.version.digest().to_owned()),
            ),
            None => (error(409, "there is no candidate to abort"), None),
        },
        (&Method::POST, "/admin/component/rollback") => match endpoint.slot().rollback().await {
            Ok(back) => (
                component_json(endpoint, 200, None),
                Some(back.digest().to_owned()),
            ),
            Err(err) => (error(409, &err.to_string()), None),
        },
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/admin/component"
            | "/admin/component/rollback"
            | "/admin/rollout"
            | "/admin/rollout/promote"
            | "/admin/rollout/abort",
        ) => (error(405, "method not allowed"), None),
        _ => (json_response(404, r#"{"error":"Not found"}"#), None),
    }
}

fn error(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    json_response(status, json!({ "error": message }).to_string())
}

/// Ready or not, with the reasons; `warnings` lists what does not stop
/// requests but an operator should know (the contract gate off).
fn readiness(endpoint: &Endpoint) -> hyper::Response<ResponseBody> {
    let reasons: Vec<String> = endpoint
        .unready_reasons()
        .into_iter()
        .map(|(_, reason)| reason)
        .collect();
    let warnings = endpoint.warnings();
    match (reasons.is_empty(), warnings.is_empty()) {
        (true, true) => json_response(200, r#"{"status":"ready"}"#),
        (true, false) => json_response(
            200,
            json!({ "status": "ready", "warnings": warnings }).to_string(),
        ),
        (false, _) => json_response(
            503,
            json!({ "status": "not ready", "reasons": reasons, "warnings": warnings }).to_string(),
        ),
    }
}

fn describe(version: &Version) -> serde_json::Value {
    json!({
        "digest": version.digest(),
        "wasi_http": version.plugin.wasi_http().as_str(),
        "source": version.source,
        "loaded_at": humantime::format_rfc3339_millis(version.loaded_at).to_string(),
    })
}

/// The followed tag beside what serves: where it points, whether the
/// version serving is the one it names, and why not.
fn follow_json(endpoint: &Endpoint) -> serde_json::Value {
    let slot = endpoint.slot();
    let Some(following) = slot.following() else {
        return serde_json::Value::Null;
    };
    let current = slot.current();
    let serving = current.digest();
    let in_step = following.component.as_deref() == Some(serving);
    let why = if in_step {
        None
    } else if let Some(refused) = &following.refused {
        Some(format!("the version the tag names is refused: {refused}"))
    } else if let Some(before) = following
        .component
        .as_deref()
        .and_then(|digest| slot.admission().refused.get(digest))
    {
        Some(format!(
            "the version the tag names was refused at the {}: {}",
            crate::versions::slot::stage_name(&before.stage),
            before.reason
        ))
    } else if following.component.is_none() {
        Some("the version the tag names has not been pulled yet".to_owned())
    } else if let Some(candidate) = slot
        .candidate()
        .filter(|candidate| Some(candidate.version.digest()) == following.component.as_deref())
    {
        Some(format!(
            "the version the tag names is a candidate in its {} stage",
            candidate.stage().as_str()
        ))
    } else {
        Some(format!(
            "the serving version (from {}) was put in place by an admin swap or rollback, \
             or restored from the state directory; the follower swaps again when the tag moves",
            current.source
        ))
    };
    json!({
        "reference": following.reference,
        "manifest": following.manifest,
        "component_digest": following.component,
        "serving_digest": serving,
        "in_step": in_step,
        "why": why,
    })
}

/// `GET /admin/rollout`: the candidate in progress, its stage and counts,
/// and how the last one's stage ended.
fn rollout_json(endpoint: &Endpoint, status: u16) -> hyper::Response<ResponseBody> {
    let slot = endpoint.slot();
    let body = json!({
        "serving_digest": slot.current().digest(),
        "candidate": slot.candidate_status(),
        "last_decision": slot.last_decision(),
        "gate": if slot.admission().gate.is_on() { "on" } else { "off" },
        "shadow": if slot.admission().shadow.enabled { "on" } else { "off" },
        "canary": canary_json(slot.admission()),
    });
    json_response(status, Bytes::from(body.to_string()))
}

/// The canary's settings, or `off` without steps.
fn canary_json(admission: &crate::versions::slot::Admission) -> serde_json::Value {
    let canary = &admission.canary;
    if !canary.enabled() {
        return json!("off");
    }
    json!({
        "steps": canary.steps,
        "step_duration_ms": canary.step_duration.as_millis() as u64,
        "failure_margin": canary.margins.failure_rate,
        "latency_margin_ms": canary.margins.latency.as_millis() as u64,
        "min_requests": canary.margins.min_requests,
    })
}

fn component_json(
    endpoint: &Endpoint,
    status: u16,
    extra: Option<serde_json::Value>,
) -> hyper::Response<ResponseBody> {
    let slot = endpoint.slot();
    let mut body = describe(&slot.current());
    body["previous_digest"] = match slot.previous() {
        Some(previous) => json!(previous.digest()),
        None => serde_json::Value::Null,
    };
    body["follow"] = follow_json(endpoint);
    body["candidate"] = json!(slot.candidate_status());
    if let (Some(extra), Some(map)) = (extra, body.as_object_mut()) {
        map.extend(extra.as_object().cloned().unwrap_or_default());
    }
    json_response(status, Bytes::from(body.to_string()))
}
