//! The admin listener: health, readiness, metrics, and the component API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the backends are configured, else 503 with the reasons |
//! | `GET /metrics` | Prometheus text |
//! | `GET /admin/component` | digest, source, loaded_at, previous_digest |
//! | `PUT /admin/component` | swap in the body's component (bearer token) |
//! | `POST /admin/component/rollback` | back to the previous version (bearer token) |

use crate::body::{ResponseBody, json_response};
use crate::config::Secret;
use crate::endpoint::Endpoint;
use crate::slot::Version;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use subtle::ConstantTimeEq;

/// The largest component the admin API accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Answers one admin request.
pub async fn handle(
    endpoint: &Endpoint,
    admin_token: Option<&Secret>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(200, r#"{"status":"ok"}"#),
        (&Method::GET, "/readyz") => readiness(endpoint),
        (&Method::GET, "/metrics") => {
            let mut response = json_response(200, endpoint.capabilities().metrics.encode());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/admin/component") => component_json(endpoint, 200, None),
        (&Method::PUT, "/admin/component") => {
            if let Err(refusal) = authorize(admin_token, &request) {
                return refusal.response();
            }
            let body = match Limited::new(request.into_body(), MAX_COMPONENT_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return error(
                        413,
                        &format!(
                            "component larger than {MAX_COMPONENT_BYTES} bytes, or the upload broke off"
                        ),
                    );
                }
            };
            match endpoint
                .slot()
                .replace(body.to_vec(), "admin".to_owned())
                .await
            {
                Ok(swapped) => component_json(
                    endpoint,
                    200,
                    Some(json!({
                        "compiled": swapped.origin == Some(crate::artifacts::Origin::Compiled),
                        "already_serving": swapped.already_serving(),
                        "took_ms": swapped.took.as_secs_f64() * 1000.0,
                    })),
                ),
                Err(err) => {
                    tracing::error!(error = %err, "admin swap refused; the current component keeps serving");
                    error(422, &err.to_string())
                }
            }
        }
        (&Method::POST, "/admin/component/rollback") => {
            if let Err(refusal) = authorize(admin_token, &request) {
                return refusal.response();
            }
            match endpoint.slot().rollback().await {
                Ok(_) => component_json(endpoint, 200, None),
                Err(err) => error(409, &err.to_string()),
            }
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/admin/component" | "/admin/component/rollback",
        ) => error(405, "method not allowed"),
        _ => json_response(404, r#"{"error":"Not found"}"#),
    }
}

fn error(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    json_response(status, json!({ "error": message }).to_string())
}

fn readiness(endpoint: &Endpoint) -> hyper::Response<ResponseBody> {
    let reasons = endpoint.capabilities().unready_reasons();
    if reasons.is_empty() {
        json_response(200, r#"{"status":"ready"}"#)
    } else {
        json_response(
            503,
            json!({ "status": "not ready", "reasons": reasons }).to_string(),
        )
    }
}

fn describe(version: &Version) -> serde_json::Value {
    json!({
        "digest": version.digest(),
        "source": version.source,
        "loaded_at": humantime::format_rfc3339_millis(version.loaded_at).to_string(),
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
    if let (Some(extra), Some(map)) = (extra, body.as_object_mut()) {
        map.extend(extra.as_object().cloned().unwrap_or_default());
    }
    json_response(status, Bytes::from(body.to_string()))
}

/// Why an admin mutation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No admin token is configured.
    Disabled,
    /// The request carries no bearer token.
    Missing,
    /// The request carries another token.
    Wrong,
}

impl Refusal {
    fn response(self) -> hyper::Response<ResponseBody> {
        match self {
            Refusal::Disabled => error(
                403,
                "admin mutations are disabled: KEYBUST_ADMIN_TOKEN is not set",
            ),
            Refusal::Missing => {
                let mut refusal = error(401, "admin token required");
                refusal.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                refusal
            }
            Refusal::Wrong => error(403, "wrong admin token"),
        }
    }
}

/// Admin mutations need `Authorization: Bearer <KEYBUST_ADMIN_TOKEN>`,
/// compared in constant time; with no token configured they are refused.
fn authorize(
    admin_token: Option<&Secret>,
    request: &hyper::Request<Incoming>,
) -> Result<(), Refusal> {
    let expected = admin_token.ok_or(Refusal::Disabled)?;
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(Refusal::Missing)?;
    if bool::from(presented.ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}
