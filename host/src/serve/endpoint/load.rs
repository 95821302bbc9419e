//! Building an endpoint: where precompiled code goes, its bounds, and which
//! version serves first (the configured one, or what the history recorded
//! as accepted under the same source).

use super::Endpoint;
use crate::capabilities::Capabilities;
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::runtime::LoadError;
use crate::runtime::artifacts::{ArtifactCache, ArtifactKey};
use crate::runtime::engine::{self, EngineError};
use crate::telemetry::IncomingTrace;
use crate::versions::history::{History, HistoryError};
use crate::versions::slot::{ComponentSlot, Provenance};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How an endpoint is built: where precompiled code goes, and its bounds.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Directory for precompiled components ([`ArtifactCache`]); none: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// The file holding the key that authenticates precompiled components
    /// ([`ArtifactKey`]), outside `cache_dir`; none: a key for this process
    /// alone, so entries from earlier processes are rebuilt.
    pub artifact_key: Option<PathBuf>,
    /// The size bound of the precompiled component cache.
    pub cache_max_bytes: u64,
    /// Directory where accepted versions are recorded, so a swap survives
    /// a restart ([`History`]); none: every start serves what it is given.
    pub history_dir: Option<PathBuf>,
    /// Signatures are required (`--verify-key`), checked with the key of
    /// this identity (`VerifyKey::id`): the history restores only versions
    /// whose signature was checked with that key (and the embedded one).
    pub signed_by: Option<String>,
    /// Bounds on guests, requests and connections.
    pub limits: Limits,
    /// What a caller's `traceparent` counts for (`--trust-trace-context`).
    pub incoming_trace: IncomingTrace,
}

impl Default for EndpointConfig {
    /// No precompiled cache; the default bounds.
    fn default() -> Self {
        EndpointConfig {
            cache_dir: None,
            artifact_key: None,
            cache_max_bytes: crate::runtime::artifacts::DEFAULT_MAX_BYTES,
            history_dir: None,
            signed_by: None,
            limits: Limits::default(),
            incoming_trace: IncomingTrace::default(),
        }
    }
}

impl EndpointConfig {
    /// The precompiled cache this configuration asks for, when it can be
    /// had; a cache that cannot be trusted or written is left out, with a
    /// warning, and components are compiled every time.
    fn artifact_cache(&self, engine: &wasmtime::Engine) -> Option<ArtifactCache> {
        let dir = self.cache_dir.as_deref()?;
        let key = match &self.artifact_key {
            Some(path) => ArtifactKey::load_or_create(path),
            None => ArtifactKey::ephemeral(),
        };
        let opened = key.and_then(|key| ArtifactCache::open(dir, key, engine));
        match opened {
            Ok(cache) => Some(cache.with_max_bytes(self.cache_max_bytes)),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "precompiled component cache disabled");
                None
            }
        }
    }
}

/// The configured component (`--component`) as it reads at start.
#[derive(Debug, Clone)]
pub struct Configured {
    /// Its label: `embedded`, the file path, the `oci://` reference; the
    /// history is kept under it.
    pub source: String,
    /// Its bytes; none when it cannot be read now.
    pub bytes: Option<Vec<u8>>,
    /// Whether they were pulled with their signature checked.
    pub signed: bool,
}

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// wasmtime could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The component file cannot be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configured source cannot be read, and no version accepted
    /// under it is recorded.
    #[error("component {source_name} cannot be had, and no earlier version of it is recorded")]
    Unavailable {
        /// The configured source.
        source_name: String,
    },
    /// The component cannot serve.
    #[error("cannot load component {source_name}: {error}")]
    Load {
        /// Where the bytes came from.
        source_name: String,
        /// Why.
        error: LoadError,
    },
    /// Another live process holds the state directory.
    #[error(transparent)]
    StateInUse(HistoryError),
}

/// Building an endpoint.
impl Endpoint {
    /// Serves the component built from `guest/` and embedded in this crate
    /// (the `embedded-component` feature), with [`EndpointConfig::default`]:
    /// no precompiled cache (every load compiles, 1-2 s) and the default
    /// limits. [`Endpoint::load`] takes a config.
    #[cfg(feature = "embedded-component")]
    pub async fn embedded(capabilities: Arc<Capabilities>) -> Result<Self, EndpointError> {
        Self::load(
            capabilities,
            crate::runtime::plugin::EMBEDDED_COMPONENT.to_vec(),
            "embedded".to_owned(),
            &EndpointConfig::default(),
        )
        .await
    }

    /// Serves the component in the file at `path`, with
    /// [`EndpointConfig::default`] as `Endpoint::embedded` does. The file
    /// is read once: watching it is [`crate::rollout::reload::watch`]'s job.
    pub async fn from_file(
        capabilities: Arc<Capabilities>,
        path: &Path,
    ) -> Result<Self, EndpointError> {
        let shown = path.display().to_string();
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| EndpointError::Read {
                path: shown.clone(),
                source,
            })?;
        Self::load(capabilities, bytes, shown, &EndpointConfig::default()).await
    }

    /// Serves the component `bytes`, labelled `source`, as `config` says.
    ///
    /// With a history directory, `source` is the configured source (the
    /// `--component` value) and what [`History::restore`] decides serves:
    /// the last accepted version and its rollback target, when they were
    /// accepted under that source and it still holds `bytes`. A recorded
    /// version that no longer loads (a host whose world changed, say) is
    /// passed over, with a warning, for `bytes`.
    pub async fn load(
        capabilities: Arc<Capabilities>,
        bytes: Vec<u8>,
        source: String,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let configured = Configured {
            source,
            bytes: Some(bytes),
            signed: false,
        };
        Self::load_configured(capabilities, configured, config).await
    }

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
            Some(Err(err @ HistoryError::InUse { .. })) => {
                return Err(EndpointError::StateInUse(err));
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "component history disabled: swaps will not survive a restart");
                None
            }
        };
        let new_slot = |bytes: Vec<u8>, provenance: Provenance| {
            ComponentSlot::new(
                linker.clone(),
                artifacts.clone(),
                capabilities.clone(),
                limits.clone(),
                bytes,
                provenance,
            )
        };
        let configured_digest = bytes.as_deref().map(hex_digest);
        let restored = history.as_ref().and_then(|history| {
            history.restore(
                &source,
                configured_digest.as_deref(),
                config.signed_by.is_some(),
            )
        });
        let mut restored_slot = None;
        if let Some(start) = restored {
            let current = start.current.bytes.clone();
            match new_slot(
                start.current.bytes,
                Provenance::checked(start.current.source, start.current.signed),
            )
            .await
            {
                Ok(slot) => {
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
                    restored_slot = Some((slot, current));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the last accepted component no longer loads; serving the configured one");
                }
            }
        }
        let restored = restored_slot.is_some();
        let (mut slot, serving) = match restored_slot {
            Some(restored) => restored,
            None => {
                let bytes = bytes.ok_or_else(|| EndpointError::Unavailable {
                    source_name: source.clone(),
                })?;
                let slot = new_slot(bytes.clone(), Provenance::checked(source.clone(), signed))
                    .await
                    .map_err(|error| EndpointError::Load {
                        source_name: source.clone(),
                        error,
                    })?;
                (slot, bytes)
            }
        };
        if let Some(history) = history {
            slot.keep_history(history, source, serving, !restored).await;
        }
        Ok(Endpoint::new(slot).with_incoming_trace(config.incoming_trace))
    }
}
