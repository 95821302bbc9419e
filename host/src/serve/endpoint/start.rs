//! Which version serves first: the configured one, or what the history
//! recorded as accepted under the same source (with the candidate that
//! waited when the process stopped, or the configured source's new
//! content, put through the stages again).

use super::Endpoint;
use super::load::{Configured, EndpointConfig, EndpointError};
use crate::capabilities::Capabilities;
use crate::contract::GATE_OFF_WARNING;
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::metrics::{Decision, RolloutStage};
use crate::runtime::artifacts::ArtifactCache;
use crate::runtime::engine;
use crate::runtime::store::RequestState;
use crate::shadow::ShadowSettings;
use crate::versions::history::{History, HistoryError, Restored, Start};
use crate::versions::refused::Refused;
use crate::versions::slot::{Admission, ComponentSlot, Provenance, SwapError};
use std::sync::Arc;
use wasmtime::component::Linker;

impl Endpoint {
    /// Like [`Endpoint::load`], for a configured source that may not be
    /// readable now (a registry that is down): without bytes, the last
    /// version accepted under its label serves, when the history has one.
    pub async fn load_configured(
        capabilities: Arc<Capabilities>,
        configured: Configured,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let Configured {
            source,
            bytes,
            signed,
        } = configured;
        let engine = engine::new_engine(&config.limits)?;
        let artifacts = config.artifact_cache(&engine);
        let linker = engine::new_linker(&engine)?;
        let limits = Arc::new(config.limits.clone());
        // A directory another live process holds stops the start: two
        // processes would each rewrite the other's record. Any other
        // trouble with it only costs the record.
        let history = match config.history_dir.as_deref().map(History::open) {
            None => None,
            Some(Ok(history)) => Some(history.verified_with(config.signed_by.clone())),
            Some(Err(err @ (HistoryError::InUse { .. } | HistoryError::NewerSchema { .. }))) => {
                return Err(EndpointError::StateInUse(err));
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "component history disabled: swaps will not survive a restart");
                None
            }
        };
        // The refusals live beside the history, under its lock.
        let refused = match (&history, config.history_dir.as_deref()) {
            (Some(_), Some(dir)) => Refused::open(dir).unwrap_or_else(|err| {
                tracing::warn!(error = %err, "the record of refused versions is unreadable: refusals will not survive a restart");
                Refused::in_memory()
            }),
            _ => Refused::in_memory(),
        };
        if !config.contract_gate.is_on() {
            tracing::warn!("{GATE_OFF_WARNING}");
        }
        let base = Base {
            linker,
            artifacts,
            capabilities,
            limits,
            admission: Admission {
                gate: config.contract_gate,
                // A contract changed on purpose (the gate off) would
                // diverge in shadow too: the stage is skipped with it.
                shadow: ShadowSettings {
                    enabled: config.shadow.enabled && config.contract_gate.is_on(),
                    ..config.shadow
                },
                canary: config.canary.clone(),
                refused: Arc::new(refused),
            },
        };
        let waits = base.admission.shadow.enabled || base.admission.canary.enabled();
        let history = history.map(|history| history.new_versions_wait(waits));
        let signed_only = config.signed_by.is_some();
        let mut bytes = bytes;
        // A configured version refused before is as good as unreadable:
        // the last one accepted under the same source serves instead.
        if base.admission.gate.is_on()
            && let Some(before) = bytes
                .as_deref()
                .and_then(|bytes| base.admission.refused.get(&hex_digest(bytes)))
        {
            tracing::warn!(
                source,
                reason = before.reason,
                "the configured component was refused before; looking for the last accepted version"
            );
            base.capabilities
                .metrics()
                .decided(RolloutStage::Gate, Decision::Refused);
            bytes = None;
        }
        let configured_digest = bytes.as_deref().map(hex_digest);
        let restore = |digest: Option<&str>| {
            history
                .as_ref()
                .and_then(|history| history.restore(&source, digest, signed_only))
        };
        // What waits as the candidate once the endpoint serves: the one
        // recorded when the process stopped, or the configured source's
        // new content.
        let mut waiting = None;
        let restored_slot = match restore(configured_digest.as_deref()) {
            Some(mut start) => {
                waiting = match (start.configured_waits, start.candidate.take()) {
                    (true, _) => bytes.clone().map(|bytes| Restored {
                        bytes,
                        source: source.clone(),
                        signed,
                    }),
                    (false, candidate) => candidate,
                };
                base.start_from(start).await
            }
            None => None,
        };
        let (mut slot, serving, restored) = match restored_slot {
            Some((slot, serving)) => (slot, serving, true),
            None => {
                let bytes = bytes.ok_or_else(|| EndpointError::Unavailable {
                    source_name: source.clone(),
                })?;
                match base
                    .new_slot(bytes.clone(), Provenance::checked(source.clone(), signed))
                    .await
                {
                    Ok(slot) => (slot, bytes, false),
                    // Refused for what it does: the last version accepted
                    // under the same source serves, if there is one.
                    Err(error) if error.is_behaviour() => {
                        let fallback = match restore(None) {
                            Some(start) => base.start_from(start).await,
                            None => None,
                        };
                        let Some((slot, serving)) = fallback else {
                            return Err(EndpointError::Load {
                                source_name: source.clone(),
                                error,
                            });
                        };
                        tracing::warn!(source, error = %error, "the configured component is refused; the last accepted version serves");
                        (slot, serving, true)
                    }
                    Err(error) => {
                        return Err(EndpointError::Load {
                            source_name: source.clone(),
                            error,
                        });
                    }
                }
            }
        };
        if let Some(history) = history {
            slot.keep_history(history, source, serving, !restored).await;
        }
        let endpoint = Endpoint::new(slot).with_incoming_trace(config.incoming_trace);
        if restored && let Some(waiting) = waiting {
            start_candidate(&endpoint, waiting).await;
        }
        Ok(endpoint)
    }
}

/// Puts the version that waited when the process stopped (or the
/// configured source's new content) through the stages again, while the
/// recorded version serves. A refusal is logged: the recorded version
/// serves on.
async fn start_candidate(endpoint: &Endpoint, waiting: Restored) {
    let digest = hex_digest(&waiting.bytes);
    tracing::info!(
        digest,
        source = waiting.source,
        "the version waiting as the candidate when keybust stopped (or new in the configured source) goes through the stages again"
    );
    let provenance = Provenance::checked(waiting.source, waiting.signed);
    if let Err(err) = endpoint.slot().replace(waiting.bytes, provenance).await {
        tracing::warn!(digest, error = %err, "the waiting version is refused; the last accepted version serves");
    }
}

/// What every version of one endpoint is built with.
struct Base {
    linker: Linker<RequestState>,
    artifacts: Option<ArtifactCache>,
    capabilities: Arc<Capabilities>,
    limits: Arc<Limits>,
    admission: Admission,
}

impl Base {
    async fn new_slot(
        &self,
        bytes: Vec<u8>,
        provenance: Provenance,
    ) -> Result<ComponentSlot, SwapError> {
        ComponentSlot::new(
            self.linker.clone(),
            self.artifacts.clone(),
            self.capabilities.clone(),
            self.limits.clone(),
            bytes,
            provenance,
            self.admission.clone(),
        )
        .await
    }

    /// A slot serving what the history recorded, with its rollback target;
    /// none, with a warning, when the recorded version no longer loads.
    async fn start_from(&self, start: Start) -> Option<(ComponentSlot, Vec<u8>)> {
        let current = start.current.bytes.clone();
        let slot = match self
            .new_slot(
                start.current.bytes,
                Provenance::checked(start.current.source, start.current.signed),
            )
            .await
        {
            Ok(slot) => slot,
            Err(err) => {
                tracing::warn!(error = %err, "the last accepted component no longer loads; serving the configured one");
                return None;
            }
        };
        if let Some(previous) = start.previous
            && let Err(err) = slot
                .set_previous(
                    previous.bytes,
                    Provenance::checked(previous.source, previous.signed),
                )
                .await
        {
            tracing::warn!(error = %err, "the recorded rollback target no longer loads; there is none");
        }
        Some((slot, current))
    }
}
