//! Building an endpoint: what it is configured with (where precompiled
//! code goes, its bounds, its rollout stages), and the ways to start one.
//! Which version serves first is `start`'s business.

use super::Endpoint;
use crate::canary::CanarySettings;
use crate::capabilities::Capabilities;
use crate::contract::ContractGate;
use crate::limits::Limits;
use crate::runtime::artifacts::{ArtifactCache, ArtifactKey};
use crate::runtime::engine::EngineError;
use crate::shadow::ShadowSettings;
use crate::telemetry::IncomingTrace;
use crate::versions::history::HistoryError;
use crate::versions::slot::SwapError;
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
    /// Whether new versions pass the contract gate before they serve
    /// (`--contract-gate`); the versions it refuses are recorded in the
    /// history directory, when there is one.
    pub contract_gate: ContractGate,
    /// The shadow stage after the gate (`--shadow*`); off by default here.
    pub shadow: ShadowSettings,
    /// The weighted canary after the shadow stage (`--rollout-*`); no
    /// steps by default.
    pub canary: CanarySettings,
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
            contract_gate: ContractGate::default(),
            shadow: ShadowSettings::default(),
            canary: CanarySettings::default(),
        }
    }
}

impl EndpointConfig {
    /// The precompiled cache this configuration asks for, when it can be
    /// had; a cache that cannot be trusted or written is left out, with a
    /// warning, and components are compiled every time.
    pub(super) fn artifact_cache(&self, engine: &wasmtime::Engine) -> Option<ArtifactCache> {
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
        error: SwapError,
    },
    /// The state directory cannot be used: another live process holds it,
    /// or a newer keybust wrote its record.
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
}
