//! The component slot: which version of the component serves now, which
//! one served before it, and how a new one gets in.
//!
//! The current version sits behind an atomic pointer ([`ArcSwap`]). A
//! request takes its own reference when it starts and runs to its end on
//! that version, even if a swap lands meanwhile; the old version is freed
//! when its last request finishes. A new version is compiled (or taken from
//! the [`ArtifactCache`]), type-checked against our world, instantiated
//! once, and (unless `--contract-gate off`) put through the contract gate
//! ([`crate::contract`]) before the swap; if any step fails, the current
//! version keeps serving and the caller gets the reason. A version the
//! gate refused is recorded ([`Refused`]) and refused again at once.

use crate::capabilities::Capabilities;
use crate::contract::{self, ContractGate};
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::metrics::{Decision, Metrics, RolloutStage};
use crate::runtime::artifacts::{ArtifactCache, Origin};
use crate::runtime::plugin::{LoadError, Plugin};
use crate::runtime::store::RequestState;
use crate::versions::following::Following;
use crate::versions::history::{Accepted, History};
use crate::versions::refused::{self, Refused};
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::Linker;

/// One loaded version of the component.
pub struct Version {
    /// The compiled, pre-instantiated component.
    pub plugin: Plugin,
    /// Where its bytes came from: `embedded`, a file path, or `admin`.
    pub source: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether it was pulled with its signature checked (`--verify-key`):
    /// only such versions (and the embedded one) are restored from the
    /// history when signatures are required.
    pub signed: bool,
}

impl Version {
    /// SHA-256 of the component's bytes.
    pub fn digest(&self) -> &str {
        self.plugin.digest()
    }
}

/// What is known about a version's bytes besides the bytes themselves:
/// where they came from, and whether their signature was checked on the
/// way in. It travels with the bytes into the slot, the history and the
/// admin API, so no call needs a twin that differs by one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Its label: `embedded`, a file path, `admin`, an `oci://` reference.
    pub source: String,
    /// Whether they were pulled with their cosign signature checked
    /// (`--verify-key`): when signatures are required, only such versions
    /// (and the embedded one) are restored from the history.
    pub signed: bool,
}

impl Provenance {
    /// Bytes nobody checked a signature of: a file, an upload, the
    /// embedded build.
    pub fn unchecked(source: impl Into<String>) -> Self {
        Provenance {
            source: source.into(),
            signed: false,
        }
    }

    /// Bytes as `signed` says: pulled with their signature checked, or not.
    pub fn checked(source: impl Into<String>, signed: bool) -> Self {
        Provenance {
            source: source.into(),
            signed,
        }
    }
}

/// What a successful swap did.
pub struct Swapped {
    /// The version serving now.
    pub version: Arc<Version>,
    /// Whether compilation was skipped thanks to the artifact cache; `None`
    /// when the bytes were already serving and nothing was swapped.
    pub origin: Option<Origin>,
    /// From bytes in hand to the new version serving.
    pub took: Duration,
}

impl Swapped {
    /// Whether the bytes were those serving already: a retried upload, or
    /// the file watch and a SIGHUP reading the same file. Nothing changed,
    /// and the rollback target is still the version before.
    pub fn already_serving(&self) -> bool {
        self.origin.is_none()
    }
}

/// How a new version is judged before it serves: whether the contract
/// gate runs, and the record of the versions it refused.
#[derive(Clone, Default)]
pub struct Admission {
    /// `--contract-gate`.
    pub gate: ContractGate,
    /// The versions refused so far, by digest.
    pub refused: Arc<Refused>,
}

/// Why a version does not serve.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// It does not compile, fit the world, or instantiate.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// It fits, but the contract gate refused it for what it does.
    #[error("refused at the contract gate: {0}")]
    Contract(#[from] contract::Refusal),
    /// The contract gate refused it before (this run or an earlier one):
    /// it is not run again.
    #[error("refused earlier at the {} (it came from {}): {}", stage_name(&.0.stage), .0.source, .0.reason)]
    RefusedBefore(refused::Refusal),
}

impl SwapError {
    /// Whether it was refused for what it does, not for what it is.
    pub fn is_behaviour(&self) -> bool {
        !matches!(self, SwapError::Load(_))
    }
}

fn stage_name(stage: &str) -> &str {
    match stage {
        "gate" => "contract gate",
        other => other,
    }
}

/// Why a rollback could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// Only one version has been loaded.
    #[error("there is no previous version to roll back to")]
    NoPrevious,
}

/// The serving version, the previous one, and the machinery to replace them.
pub struct ComponentSlot {
    linker: Arc<Linker<RequestState>>,
    artifacts: Option<ArtifactCache>,
    capabilities: Arc<Capabilities>,
    /// Where swaps, rollbacks and the serving digest are counted: the
    /// registry the capabilities count into.
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    /// The contract gate, and what it refused.
    admission: Admission,
    /// What new requests run on. Readers never block: a request loads the
    /// pointer once (a reference count, no lock) and keeps its `Arc` to the
    /// end, so a swap never waits for requests and never cuts one short.
    current: ArcSwap<Version>,
    /// The version a rollback returns to: whatever `current` held before
    /// the last swap. Keeping it alive keeps its compiled code in memory,
    /// so a rollback is a pointer swap. A `std` mutex: it is held only for
    /// a read or a replace, never across an `.await`.
    previous: Mutex<Option<Arc<Version>>>,
    /// One swap or rollback at a time, from any source (admin API, file
    /// watch, SIGHUP). Held across compilation, so two swaps cannot race
    /// and each one's "previous" is the version it really replaced. An
    /// async mutex, because it is held across the compile's `.await`;
    /// requests never take it.
    swapping: tokio::sync::Mutex<()>,
    /// What the follower last saw of its tag, when a tag is followed. A
    /// `std` mutex: held for a copy or a replace only.
    following: Mutex<Option<Following>>,
    /// Where accepted versions are recorded, to survive a restart; the
    /// record is written under the swap lock, so it follows the swaps in
    /// their order.
    history: Option<Arc<Recorder>>,
}

/// The history and the `--component` value it is kept under.
struct Recorder {
    history: History,
    configured: String,
}

impl Recorder {
    /// Records `current` (with its `bytes`, when they may not be stored
    /// yet) and `previous`, off the async threads. A failure is logged: the
    /// swap stands, but a restart would not bring it back.
    async fn record(
        self: &Arc<Self>,
        current: &Version,
        bytes: Option<Vec<u8>>,
        previous: Option<&Version>,
        just_read: bool,
    ) {
        let recorder = self.clone();
        let accepted = |version: &Version| {
            Accepted::now(version.digest(), &version.source).signed(version.signed)
        };
        let current = accepted(current);
        let previous = previous.map(accepted);
        let written = tokio::task::spawn_blocking(move || {
            recorder.history.record(
                &recorder.configured,
                current,
                bytes.as_deref(),
                previous,
                just_read,
            )
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "the component history cannot be written: a restart would not serve this version");
            }
            Err(err) => {
                tracing::error!(error = %err, "the component history was not written");
            }
        }
    }
}

impl ComponentSlot {
    /// Loads the first version, judged as `admission` says; keybust does
    /// not start without one.
    pub async fn new(
        linker: Linker<RequestState>,
        artifacts: Option<ArtifactCache>,
        capabilities: Arc<Capabilities>,
        limits: Arc<Limits>,
        bytes: Vec<u8>,
        provenance: Provenance,
        admission: Admission,
    ) -> Result<Self, SwapError> {
        let linker = Arc::new(linker);
        let metrics = capabilities.metrics().clone();
        let (version, _, _) = prepare(
            &linker,
            artifacts.as_ref(),
            &capabilities,
            &limits,
            bytes,
            provenance,
            Some((&admission, &metrics)),
        )
        .await?;
        metrics.serving(version.digest());
        Ok(ComponentSlot {
            linker,
            artifacts,
            capabilities,
            metrics,
            limits,
            admission,
            current: ArcSwap::from_pointee(version),
            previous: Mutex::new(None),
            swapping: tokio::sync::Mutex::new(()),
            following: Mutex::new(None),
            history: None,
        })
    }

    /// Loads `bytes` as the rollback target, without serving them: the
    /// previous version recorded before a restart. It served before, so
    /// the contract gate is not run again.
    pub async fn set_previous(
        &self,
        bytes: Vec<u8>,
        provenance: Provenance,
    ) -> Result<(), SwapError> {
        let _one_at_a_time = self.swapping.lock().await;
        let (version, _, _) = prepare(
            &self.linker,
            self.artifacts.as_ref(),
            &self.capabilities,
            &self.limits,
            bytes,
            provenance,
            None,
        )
        .await?;
        *self.lock_previous() = Some(Arc::new(version));
        Ok(())
    }

    /// Records every version that serves from now on in `history`, under
    /// the `--component` value `configured`, and records the serving one
    /// (whose bytes are `bytes`) and the rollback target now. `just_read`:
    /// the serving version is what `configured` holds now, not a version
    /// restored from the history (which may be a rollback away from it).
    pub async fn keep_history(
        &mut self,
        history: History,
        configured: String,
        bytes: Vec<u8>,
        just_read: bool,
    ) {
        let recorder = Arc::new(Recorder {
            history,
            configured,
        });
        let previous = self.previous();
        recorder
            .record(&self.current(), Some(bytes), previous.as_deref(), just_read)
            .await;
        self.history = Some(recorder);
    }

    /// The version new requests run on.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// The version a rollback would return to.
    pub fn previous(&self) -> Option<Arc<Version>> {
        self.lock_previous().clone()
    }

    /// What the follower last saw of its tag, if a tag is followed.
    pub fn following(&self) -> Option<Following> {
        self.following
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Notes what the follower sees of its tag now.
    pub fn note_following(&self, following: Following) {
        *self
            .following
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(following);
    }

    /// How new versions are judged before they serve.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The bounds every version runs under.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// The capabilities every version runs with.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        &self.capabilities
    }

    /// The registry swaps, follow polls and the requests served are
    /// counted into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn lock_previous(&self) -> std::sync::MutexGuard<'_, Option<Arc<Version>>> {
        self.previous
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Validates `bytes` and, if they pass, makes them the serving version.
    /// Bytes whose digest is the serving one change nothing: the check is
    /// made under the swap lock, so two sources swapping the same bytes at
    /// once cannot make the serving version its own rollback target.
    pub async fn replace(
        &self,
        bytes: Vec<u8>,
        provenance: Provenance,
    ) -> Result<Swapped, SwapError> {
        let _one_at_a_time = self.swapping.lock().await;
        let started = Instant::now();
        let current = self.current();
        if hex_digest(&bytes) == current.digest() {
            tracing::debug!(
                digest = current.digest(),
                source = provenance.source,
                "component already serving; nothing swapped"
            );
            return Ok(Swapped {
                version: current,
                origin: None,
                took: started.elapsed(),
            });
        }
        let prepared = prepare(
            &self.linker,
            self.artifacts.as_ref(),
            &self.capabilities,
            &self.limits,
            bytes,
            provenance,
            Some((&self.admission, &self.metrics)),
        )
        .await;
        let (version, origin, bytes) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                self.metrics.swap_failed();
                return Err(err);
            }
        };
        let version = Arc::new(version);
        let old = self.current.swap(version.clone());
        old.plugin.retire_instances();
        *self.lock_previous() = Some(old.clone());
        if let Some(history) = &self.history {
            history
                .record(&version, Some(bytes), Some(&old), true)
                .await;
        }
        let took = started.elapsed();
        self.metrics.swapped(version.digest());
        tracing::info!(
            digest = version.digest(),
            source = version.source,
            ?origin,
            took_ms = took.as_secs_f64() * 1000.0,
            "component swapped in"
        );
        Ok(Swapped {
            version,
            origin: Some(origin),
            took,
        })
    }

    /// Puts the previous version back; the replaced one becomes "previous".
    pub async fn rollback(&self) -> Result<Arc<Version>, RollbackError> {
        let _one_at_a_time = self.swapping.lock().await;
        let (back, replaced) = {
            let mut previous = self.lock_previous();
            let back = previous.take().ok_or(RollbackError::NoPrevious)?;
            let replaced = self.current.swap(back.clone());
            replaced.plugin.retire_instances();
            *previous = Some(replaced.clone());
            (back, replaced)
        };
        if let Some(history) = &self.history {
            history.record(&back, None, Some(&replaced), false).await;
        }
        self.metrics.swapped(back.digest());
        tracing::info!(digest = back.digest(), "rolled back");
        Ok(back)
    }
}

/// Compiles, checks and instantiates `bytes` once; with `admission`, puts
/// them through the contract gate too (unless it is off), or refuses them
/// at once when the gate refused them before.
async fn prepare(
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
