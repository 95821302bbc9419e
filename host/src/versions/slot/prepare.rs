//! Making a version from bytes: compile (or take the precompiled code),
//! check the world, instantiate once, and pass the contract gate.

use super::{Admission, SwapError};
use crate::capabilities::Capabilities;
use crate::contract;
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::metrics::{Decision, Metrics, RolloutStage};
use crate::runtime::artifacts::{ArtifactCache, Origin};
use crate::runtime::plugin::{LoadError, Plugin};
use crate::runtime::store::RequestState;
use crate::versions::version::{Provenance, Version};
use std::sync::Arc;
use std::time::SystemTime;
use wasmtime::component::Linker;

/// Compiles, checks and instantiates `bytes` once; with `admission`, puts
/// them through the contract gate too (unless it is off), or refuses them
/// at once when the gate refused them before.
pub(super) async fn prepare(
    linker: &Arc<Linker<RequestState>>,
    artifacts: Option<&ArtifactCache>,
    capabilities: &Arc<Capabilities>,
    limits: &Arc<Limits>,
    bytes: Vec<u8>,
    provenance: Provenance,
    admission: Option<(&Admission, &Metrics)>,
) -> Result<(Version, Origin, Vec<u8>), SwapError> {
    let admission = admission.filter(|(admission, _)| admission.gate.is_on());
    if let Some((admission, metrics)) = admission
        && let Some(before) = admission.refused.get(&hex_digest(&bytes))
    {
        metrics.decided(RolloutStage::Gate, Decision::Refused);
        return Err(SwapError::RefusedBefore(before));
    }
    let limits = limits.clone();
    let capabilities = capabilities.clone();
    let compile_linker = linker.clone();
    let artifacts = artifacts.cloned();
    // Compiling takes hundreds of milliseconds of CPU: keep it off the
    // threads that serve requests. The bytes come back for the history.
    let (loaded, bytes) = tokio::task::spawn_blocking(move || {
        let loaded = Plugin::load(
            &compile_linker,
            artifacts.as_ref(),
            &bytes,
            capabilities,
            limits,
        );
        (loaded, bytes)
    })
    .await
    .map_err(|err| {
        LoadError::Compile(wasmtime::Error::from(err).context("compilation did not finish"))
    })?;
    let (plugin, origin) = loaded?;
    plugin.probe().await?;
    if let Some((admission, metrics)) = admission {
        match contract::check(&plugin).await {
            Ok(passed) => {
                metrics.decided(RolloutStage::Gate, Decision::Passed);
                tracing::info!(
                    digest = plugin.digest(),
                    rows = passed.rows,
                    took_ms = passed.took.as_secs_f64() * 1000.0,
                    "the new version passed the contract gate"
                );
            }
            Err(refusal) => {
                metrics.decided(RolloutStage::Gate, Decision::Refused);
                tracing::error!(
                    digest = plugin.digest(),
                    source = provenance.source,
                    stage = "gate",
                    rule = refusal.rule,
                    reason = %refusal,
                    "the new version is refused at the contract gate"
                );
                admission.refused.record(
                    plugin.digest(),
                    "gate",
                    &refusal.to_string(),
                    &provenance.source,
                );
                plugin.retire_instances();
                return Err(SwapError::Contract(refusal));
            }
        }
    }
    Ok((
        Version {
            plugin,
            source: provenance.source,
            loaded_at: SystemTime::now(),
            signed: provenance.signed,
        },
        origin,
        bytes,
    ))
}
