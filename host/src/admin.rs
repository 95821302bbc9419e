//! The admin listener: health, readiness, metrics, and the component API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the backends are configured, else 503 with the reasons |
//! | `GET /metrics` | Prometheus text |
//! | `GET /admin/component` | digest, wasi_http, source, loaded_at, previous_digest |
//! | `PUT /admin/component` | swap in the body's component, or the one `{"reference": "oci://…"}` names (bearer token) |
//! | `POST /admin/component/rollback` | back to the previous version (bearer token) |
//!
//! Mutations are taken from loopback peers only, unless
//! `--admin-allow-remote`; a listener for probes alone (`--metrics-listen`)
//! answers only the first three.

use crate::body::{ResponseBody, json_response};
use crate::config::Secret;
use crate::endpoint::Endpoint;
use crate::registry::{OciReference, Registry};
use crate::slot::Version;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub use crate::plugin::MAX_COMPONENT_BYTES;

/// The largest `{"reference": …}` body the admin API reads.
const MAX_REFERENCE_BODY_BYTES: usize = 64 << 10;

/// The admin plane's settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address for the admin listener (health, readiness, metrics, component API).
    #[arg(long, env = "KEYBUST_ADMIN_LISTEN", default_value = "127.0.0.1:8788")]
    pub admin_listen: std::net::SocketAddr,

    /// Bearer token for admin mutations [default: none, admin mutations are
    /// refused]. On the command line it shows in `ps`: prefer the
    /// environment or --admin-token-file.
    #[arg(long, env = "KEYBUST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the bearer token for admin mutations (a mounted secret);
    /// wins over --admin-token.
    #[arg(long, env = "KEYBUST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Take admin mutations from peers beyond loopback (then put TLS or a
    /// private network in front).
    #[arg(long, env = "KEYBUST_ADMIN_ALLOW_REMOTE", value_parser = clap::builder::FalseyValueParser::new())]
    pub admin_allow_remote: bool,

    /// Address for a listener that serves only /healthz, /readyz and
    /// /metrics, for probes and scrapes from the cluster [default: none].
    #[arg(long, env = "KEYBUST_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AdminArgs {
    /// The admin listener's policy: the token from its file, or as given.
    pub fn policy(&self) -> std::io::Result<AdminPolicy> {
        let token = match &self.admin_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("cannot read --admin-token-file {}: {err}", path.display()),
                    )
                })?;
                Some(token.trim().to_owned())
            }
            None => self.admin_token.clone(),
        };
        Ok(AdminPolicy {
            token: token.filter(|t| !t.is_empty()).map(Secret::new),
            allow_remote: self.admin_allow_remote,
            probes_only: false,
            registry: None,
        })
    }
}

/// Which requests a listener takes, and from whom.
#[derive(Debug, Clone, Default)]
pub struct AdminPolicy {
    /// The bearer token admin mutations need; none: mutations are refused.
    pub token: Option<Secret>,
    /// Whether mutations are taken from peers beyond loopback
    /// (`--admin-allow-remote`).
    pub allow_remote: bool,
    /// Only `/healthz`, `/readyz` and `/metrics` (`--metrics-listen`), so
    /// probes and scrapes can face the cluster while swaps stay private.
    pub probes_only: bool,
    /// Where a `{"reference": "oci://…"}` upload is pulled from; none:
    /// such uploads are refused.
    pub registry: Option<Registry>,
}

/// Answers one admin request. Every request to the component API, and
/// every refused one, leaves one audit line (target `keybust::audit`):
/// peer, action, digest, outcome.
pub async fn handle(
    endpoint: &Arc<Endpoint>,
    policy: &AdminPolicy,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<crate::server::Peer>()
        .map(|peer| peer.0);
    let action = format!("{} {path}", request.method());
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    let (response, digest) = if policy.probes_only && !probe {
        (json_response(404, r#"{"error":"Not found"}"#), None)
    } else {
        answer(endpoint, policy, peer, request).await
    };
    if !probe || !response.status().is_success() {
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
        (&Method::PUT, "/admin/component") | (&Method::POST, "/admin/component/rollback")
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
            let capabilities = endpoint.capabilities();
            capabilities
                .metrics
                .jwks_age(capabilities.sessions.keys_age());
            let mut response = json_response(200, capabilities.metrics.encode());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            (response, None)
        }
        (&Method::GET, "/admin/component") => (component_json(endpoint, 200, None), None),
        (&Method::PUT, "/admin/component") => put_component(endpoint, policy, request).await,
        (&Method::POST, "/admin/component/rollback") => match endpoint.slot().rollback().await {
            Ok(back) => (
                component_json(endpoint, 200, None),
                Some(back.digest().to_owned()),
            ),
            Err(err) => (error(409, &err.to_string()), None),
        },
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/admin/component" | "/admin/component/rollback",
        ) => (error(405, "method not allowed"), None),
        _ => (json_response(404, r#"{"error":"Not found"}"#), None),
    }
}

/// `PUT /admin/component`: the body is the component, or, as JSON
/// (`Content-Type: application/json`), `{"reference": "oci://…"}` naming
/// one to pull.
async fn put_component(
    endpoint: &Arc<Endpoint>,
    policy: &AdminPolicy,
    request: hyper::Request<Incoming>,
) -> (hyper::Response<ResponseBody>, Option<String>) {
    let json = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let limit = if json {
        MAX_REFERENCE_BODY_BYTES
    } else {
        MAX_COMPONENT_BYTES
    };
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let message = format!("body larger than {limit} bytes, or the upload broke off");
            return (error(413, &message), None);
        }
    };
    let signed = json
        && policy
            .registry
            .as_ref()
            .is_some_and(Registry::requires_signatures);
    let (bytes, source) = if json {
        match pull_reference(policy, &body).await {
            Ok(pulled) => pulled,
            Err(refusal) => {
                if refusal.status() == 422 {
                    endpoint.capabilities().metrics.swap(false, None);
                }
                return (refusal, None);
            }
        }
    } else if policy
        .registry
        .as_ref()
        .is_some_and(Registry::requires_signatures)
    {
        endpoint.capabilities().metrics.swap(false, None);
        let digest = crate::artifacts::hex_digest(&body);
        tracing::error!(
            digest,
            "admin upload refused: --verify-key needs a signed component pulled by reference"
        );
        return (
            error(
                422,
                r#"--verify-key needs signed components: PUT {"reference": "oci://…"} instead of the bytes"#,
            ),
            Some(digest),
        );
    } else {
        (body.to_vec(), "admin".to_owned())
    };
    let digest = crate::artifacts::hex_digest(&bytes);
    // The swap runs to its end (history record included) even if the
    // client hangs up meanwhile.
    let slot_owner = endpoint.clone();
    let swapped = tokio::spawn(async move {
        slot_owner
            .slot()
            .replace_signed(bytes, source, signed)
            .await
    })
    .await
    .unwrap_or_else(|join| {
        Err(crate::plugin::LoadError::Compile(
            wasmtime::Error::from(join).context("the swap did not finish"),
        ))
    });
    match swapped {
        Ok(swapped) => (
            component_json(
                endpoint,
                200,
                Some(json!({
                    "compiled": swapped.origin == Some(crate::artifacts::Origin::Compiled),
                    "already_serving": swapped.already_serving(),
                    "took_ms": swapped.took.as_secs_f64() * 1000.0,
                })),
            ),
            Some(digest),
        ),
        Err(err) => {
            tracing::error!(error = %err, "admin swap refused; the current component keeps serving");
            (error(422, &err.to_string()), Some(digest))
        }
    }
}

/// The component a `{"reference": "oci://…"}` body names, pulled and
/// checked, with the reference as its source.
async fn pull_reference(
    policy: &AdminPolicy,
    body: &[u8],
) -> Result<(Vec<u8>, String), hyper::Response<ResponseBody>> {
    #[derive(serde::Deserialize)]
    struct Upload {
        reference: String,
    }
    let upload: Upload = serde_json::from_slice(body).map_err(|_| {
        error(
            400,
            r#"expected {"reference": "oci://REGISTRY/REPOSITORY:TAG"}"#,
        )
    })?;
    let reference =
        OciReference::parse(&upload.reference).map_err(|err| error(400, &err.to_string()))?;
    let Some(registry) = &policy.registry else {
        return Err(error(
            501,
            "this listener pulls from no registry; upload the component's bytes",
        ));
    };
    match registry.pull(&reference, None).await {
        Ok(pulled) => Ok((pulled.bytes, reference.to_string())),
        Err(err) if err.is_not_found() => {
            tracing::warn!(error = %err, "admin pull found nothing at the reference; the current component keeps serving");
            Err(error(
                404,
                &format!("not in the registry (or not shown to these credentials): {err}"),
            ))
        }
        Err(err) if err.is_transient() => {
            tracing::error!(error = %err, "admin pull failed; the current component keeps serving");
            Err(error(502, &err.to_string()))
        }
        Err(err) => {
            tracing::error!(error = %err, "admin pull refused; the current component keeps serving");
            Err(error(422, &err.to_string()))
        }
    }
}

fn error(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    json_response(status, json!({ "error": message }).to_string())
}

fn readiness(endpoint: &Endpoint) -> hyper::Response<ResponseBody> {
    let reasons = endpoint.unready_reasons();
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
        "wasi_http": version.plugin.wasi_http().as_str(),
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
    /// The peer is beyond loopback, and `--admin-allow-remote` is off.
    Remote,
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
            Refusal::Remote => error(
                403,
                "admin mutations are taken from loopback only (--admin-allow-remote)",
            ),
        }
    }
}

/// Admin mutations need `Authorization: Bearer <KEYBUST_ADMIN_TOKEN>`,
/// compared in constant time, from a loopback peer unless remote ones are
/// allowed; with no token configured they are refused.
fn authorize<B>(
    policy: &AdminPolicy,
    peer: Option<std::net::SocketAddr>,
    request: &hyper::Request<B>,
) -> Result<(), Refusal> {
    let expected = policy.token.as_ref().ok_or(Refusal::Disabled)?;
    if !policy.allow_remote && !peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return Err(Refusal::Remote);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> hyper::Request<()> {
        hyper::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    }

    #[test]
    fn mutations_come_from_loopback_unless_remote_ones_are_allowed() {
        let mut policy = AdminPolicy {
            token: Some(Secret::new("t0ken")),
            ..AdminPolicy::default()
        };
        let local = Some("127.0.0.1:5000".parse().unwrap());
        let remote = Some("10.1.2.3:5000".parse().unwrap());
        assert_eq!(authorize(&policy, local, &request("t0ken")), Ok(()));
        assert_eq!(
            authorize(&policy, remote, &request("t0ken")),
            Err(Refusal::Remote)
        );
        assert_eq!(
            authorize(&policy, None, &request("t0ken")),
            Err(Refusal::Remote)
        );
        assert_eq!(
            authorize(&policy, local, &request("other")),
            Err(Refusal::Wrong)
        );
        policy.allow_remote = true;
        assert_eq!(authorize(&policy, remote, &request("t0ken")), Ok(()));
        policy.token = None;
        assert_eq!(
            authorize(&policy, local, &request("t0ken")),
            Err(Refusal::Disabled)
        );
    }
}
