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
use crate::shadow::ShadowSettings;
use crate::versions::candidate::{Candidate, Decided};
use crate::versions::following::Following;
use crate::versions::history::{Accepted, History};
use crate::versions::refused::{self, Refused};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
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
    /// From bytes in hand to the new version serving (or, with a
    /// candidate, to its shadow stage starting).
    pub took: Duration,
    /// The version waiting in its shadow stage, when the new bytes did not
    /// go straight into service: `version` is still the one serving.
    pub candidate: Option<Arc<Candidate>>,
}

impl Swapped {
    /// Whether the bytes were those serving (or waiting as the
    /// candidate) already: a retried upload, or the file watch and a
    /// SIGHUP reading the same file. Nothing changed, and the rollback
    /// target is still the version before.
    pub fn already_serving(&self) -> bool {
        self.origin.is_none()
    }
}

/// How a new version is judged before it serves: whether the contract
/// gate runs, the shadow stage after it, and the record of the versions
/// refused.
#[derive(Clone, Default)]
pub struct Admission {
    /// `--contract-gate`.
    pub gate: ContractGate,
    /// `--shadow*`: off by default in the library.
    pub shadow: ShadowSettings,
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

/// How a refusal's stage is said: `gate` is the contract gate.
pub fn stage_name(stage: &str) -> &str {
    match stage {
        "gate" => "contract gate",
        "shadow" => "shadow stage",
        "operator" => "operator's abort",
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
    /// The version in its shadow stage, if any. Set and cleared under the
    /// swap lock; read by every request (lock-free, as `current` is) to
    /// pick the ones it shadows.
    candidate: arc_swap::ArcSwapOption<Candidate>,
    /// Which requests a candidate shadows: request n is picked when
    /// `floor(n * share)` steps, so exactly the share is, spread evenly.
    shadow_count: AtomicU64,
    /// How the last candidate's stage ended.
    last_decision: Mutex<Option<Decided>>,
    /// The slot itself, for the task that ends a candidate's window; set
    /// once the slot is shared ([`ComponentSlot::share`]).
    me: OnceLock<Weak<ComponentSlot>>,
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
            candidate: arc_swap::ArcSwapOption::empty(),
            shadow_count: AtomicU64::new(0),
            last_decision: Mutex::new(None),
            me: OnceLock::new(),
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
        let digest = hex_digest(&bytes);
        let waiting = self.candidate();
        if digest == current.digest()
            || waiting
                .as_ref()
                .is_some_and(|candidate| candidate.version.digest() == digest)
        {
            tracing::debug!(
                digest = current.digest(),
                source = provenance.source,
                "component already serving or waiting; nothing swapped"
            );
            return Ok(Swapped {
                version: current,
                origin: None,
                took: started.elapsed(),
                candidate: waiting,
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
        if self.admission.shadow.enabled && self.admission.gate.is_on() {
            let provenance = Provenance::checked(version.source.clone(), version.signed);
            let candidate = Arc::new(Candidate::new(
                version,
                bytes,
                provenance,
                self.admission.shadow,
            ));
            self.start_shadow(candidate.clone());
            return Ok(Swapped {
                version: current,
                origin: Some(origin),
                took: started.elapsed(),
                candidate: Some(candidate),
            });
        }
        self.install(version.clone(), bytes).await;
        let took = started.elapsed();
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
            candidate: None,
        })
    }

    /// Makes `version` the serving one; the one it replaces becomes the
    /// rollback target. Under the swap lock.
    async fn install(&self, version: Arc<Version>, bytes: Vec<u8>) {
        let old = self.current.swap(version.clone());
        old.plugin.retire_instances();
        *self.lock_previous() = Some(old.clone());
        if let Some(history) = &self.history {
            history
                .record(&version, Some(bytes), Some(&old), true)
                .await;
        }
        self.metrics.swapped(version.digest());
    }

    /// Lets the slot end a candidate's window by itself: it needs a handle
    /// on itself for the timer. [`Endpoint::new`](crate::serve::endpoint::Endpoint::new)
    /// calls it; a slot never shared waits for requests (or an operator)
    /// to end a window.
    pub fn share(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// The version in its shadow stage, if any.
    pub fn candidate(&self) -> Option<Arc<Candidate>> {
        self.candidate.load_full()
    }

    /// How the last candidate's stage ended, if one did.
    pub fn last_decision(&self) -> Option<Decided> {
        self.last_decision
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The candidate, when it shadows this request: the share of requests
    /// it asked for, spread evenly.
    pub fn shadow_pick(&self) -> Option<Arc<Candidate>> {
        let candidate = self.candidate.load();
        let candidate = candidate.as_ref()?;
        let n = self.shadow_count.fetch_add(1, Ordering::Relaxed) as f64;
        let share = candidate.share();
        ((n * share).floor() != ((n + 1.0) * share).floor()).then(|| candidate.clone())
    }

    /// Puts `candidate` in its shadow stage, in place of any earlier one
    /// (which is dropped undecided: a newer version superseded it), and
    /// starts the timer that ends its window. Under the swap lock.
    fn start_shadow(&self, candidate: Arc<Candidate>) {
        let earlier = self.candidate.swap(Some(candidate.clone()));
        if let Some(earlier) = earlier
            && earlier.decide()
        {
            earlier.version.plugin.retire_instances();
            tracing::info!(
                digest = earlier.version.digest(),
                "the candidate in its shadow stage is superseded by a newer version"
            );
        }
        self.metrics.rollout_stage(Some(RolloutStage::Shadow));
        tracing::info!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            share = candidate.share(),
            "the new version passed the contract gate and runs in the shadow of the serving one"
        );
        if let Some(me) = self.me.get().cloned() {
            let candidate = candidate.clone();
            let window = self.admission.shadow.window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let Some(slot) = me.upgrade() else {
                    return;
                };
                let agreed = candidate.agreements();
                slot.promote(
                    &candidate,
                    &format!("its shadow window passed: {agreed} agreeing requests, no divergence"),
                )
                .await;
            });
        }
    }

    /// Makes `candidate` the serving version, if it still waits; `why`
    /// goes to the log and the last decision.
    pub async fn promote(&self, candidate: &Arc<Candidate>, why: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        if !self.take_candidate(candidate) {
            return false;
        }
        self.install(candidate.version.clone(), candidate.bytes.clone())
            .await;
        self.metrics.decided(RolloutStage::Shadow, Decision::Passed);
        self.metrics.rollout_stage(None);
        self.note_decision(Decided::now(
            candidate.version.digest(),
            "shadow",
            "promoted",
            why.to_owned(),
        ));
        tracing::info!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            why,
            "the candidate serves"
        );
        true
    }

    /// Refuses `candidate` at `stage`, if it still waits: it is recorded
    /// like a gate refusal, so no source takes it again.
    pub async fn refuse(&self, candidate: &Arc<Candidate>, stage: &str, why: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        if !self.take_candidate(candidate) {
            return false;
        }
        candidate.version.plugin.retire_instances();
        self.admission.refused.record(
            candidate.version.digest(),
            stage,
            why,
            &candidate.provenance.source,
        );
        self.metrics
            .decided(RolloutStage::Shadow, Decision::Refused);
        self.metrics.swap_failed();
        self.metrics.rollout_stage(None);
        self.note_decision(Decided::now(
            candidate.version.digest(),
            stage,
            "refused",
            why.to_owned(),
        ));
        tracing::error!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            stage,
            reason = why,
            "the candidate is refused; the serving version keeps serving"
        );
        true
    }

    /// An operator's abort (`POST /admin/rollout/abort`): the waiting
    /// candidate, if any, is dropped and recorded as refused, so that no
    /// source (a follower's tag still naming it) takes it again.
    pub async fn abort(&self) -> Option<Arc<Candidate>> {
        let _one_at_a_time = self.swapping.lock().await;
        let candidate = self.candidate()?;
        if !self.take_candidate(&candidate) {
            return None;
        }
        candidate.version.plugin.retire_instances();
        let why = "aborted by an operator (POST /admin/rollout/abort)";
        self.admission.refused.record(
            candidate.version.digest(),
            "operator",
            why,
            &candidate.provenance.source,
        );
        self.metrics.rollout_stage(None);
        self.note_decision(Decided::now(
            candidate.version.digest(),
            "operator",
            "aborted",
            why.to_owned(),
        ));
        tracing::warn!(
            digest = candidate.version.digest(),
            "the candidate is aborted by an operator"
        );
        Some(candidate)
    }

    /// Takes `candidate` out of the slot and claims its decision; `false`
    /// when it is not the waiting one any more, or was decided.
    fn take_candidate(&self, candidate: &Arc<Candidate>) -> bool {
        match self.candidate.load_full() {
            Some(current) if Arc::ptr_eq(&current, candidate) && candidate.decide() => {
                self.candidate.store(None);
                true
            }
            _ => false,
        }
    }

    fn note_decision(&self, decided: Decided) {
        *self
            .last_decision
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(decided);
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
