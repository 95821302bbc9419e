//! `PUT /admin/component`: a swap from the admin API, of uploaded bytes or
//! of a component pulled by reference.

use super::policy::AdminPolicy;
use super::{MAX_REFERENCE_BODY_BYTES, component_json, error};
use crate::body::ResponseBody;
use crate::limits::MAX_COMPONENT_BYTES;
#[cfg(feature = "registry")]
use crate::rollout::registry::OciReference;
use crate::serve::endpoint::Endpoint;
use crate::versions::slot::Provenance;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

/// `PUT /admin/component`: the body is the component, or, as JSON
/// (`Content-Type: application/json`), `{"reference": "oci://…"}` naming
/// one to pull.
pub(super) async fn put_component(
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
    let signed = json && policy.requires_signatures();
    let (bytes, source) = if json {
        match pull_reference(policy, &body).await {
            Ok(pulled) => pulled,
            Err(refusal) => {
                if refusal.status() == 422 {
                    endpoint.metrics().swap_failed();
                }
                return (refusal, None);
            }
        }
    } else if policy.requires_signatures() {
        endpoint.metrics().swap_failed();
        let digest = crate::digest::hex_digest(&body);
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
    let digest = crate::digest::hex_digest(&bytes);
    // The swap runs to its end (history record included) even if the
    // client hangs up meanwhile.
    let slot_owner = endpoint.clone();
    let swapped = tokio::spawn(async move {
        slot_owner
            .slot()
            .replace(bytes, Provenance::checked(source, signed))
            .await
    })
    .await
    .unwrap_or_else(|join| {
        Err(crate::versions::slot::SwapError::Load(
            crate::runtime::plugin::LoadError::Compile(
                wasmtime::Error::from(join).context("the swap did not finish"),
            ),
        ))
    });
    match swapped {
        Ok(swapped) => (
            component_json(
                endpoint,
                // A candidate is accepted for its shadow stage, not serving yet.
                if swapped.candidate.is_some() {
                    202
                } else {
                    200
                },
                Some(json!({
                    "compiled": swapped.origin == Some(crate::runtime::artifacts::Origin::Compiled),
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
        /// Take a version signed before the newest one taken through its
        /// tag: an operator's rollback (logged to the audit target).
        #[serde(default)]
        allow_older: bool,
    }
    let upload: Upload = serde_json::from_slice(body).map_err(|_| {
        error(
            400,
            r#"expected {"reference": "oci://REGISTRY/REPOSITORY:TAG"}"#,
        )
    })?;
    #[cfg(not(feature = "registry"))]
    {
        let _ = (policy, upload.reference, upload.allow_older);
        Err(error(
            501,
            "this build pulls from no registry (feature `registry`); upload the component's bytes",
        ))
    }
    #[cfg(feature = "registry")]
    pull_by_reference(policy, &upload.reference, upload.allow_older).await
}

/// The component at `reference`, from the listener's registry.
#[cfg(feature = "registry")]
async fn pull_by_reference(
    policy: &AdminPolicy,
    reference: &str,
    allow_older: bool,
) -> Result<(Vec<u8>, String), hyper::Response<ResponseBody>> {
    let reference = OciReference::parse(reference).map_err(|err| error(400, &err.to_string()))?;
    let Some(registry) = &policy.registry else {
        return Err(error(
            501,
            "this listener pulls from no registry; upload the component's bytes",
        ));
    };
    let pulled = if allow_older {
        tracing::warn!(
            target: "keybust::audit",
            reference = %reference,
            "allow_older: a version signed before the newest one taken through its tag may be pulled"
        );
        registry.pull_allowing_older(&reference).await
    } else {
        registry.pull(&reference, None).await
    };
    match pulled {
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
