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
//! gate refused is recorded ([`Refused`](crate::versions::refused::Refused))
//! and refused again at once. With the shadow stage or the canary on, a
//! version that passed waits as a candidate before it serves every client
//! (`candidates.rs`, `canary.rs`).
//!
//! One concept, the slot, in one file with its parts beside it: how a
//! version is made (`prepare.rs`) and judged (`admission.rs`), a
//! candidate's stages (`candidates.rs`) and weighted steps (`canary.rs`),
//! the history's record
//! (`record.rs`).

use crate::capabilities::Capabilities;
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::runtime::artifacts::{ArtifactCache, Origin};
use crate::runtime::store::RequestState;
use crate::versions::candidate::{Candidate, Decided};
use crate::versions::following::Following;
use crate::versions::history::History;
pub use crate::versions::version::{Provenance, Version};
pub use admission::{Admission, SwapError, stage_name};
pub use canary::Picked;

mod admission;
mod canary;
mod candidates;
mod prepare;
mod record;

use arc_swap::ArcSwap;
use prepare::prepare;
use record::Recorder;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::Linker;

/// What a successful swap did.
pub struct Swapped {
    /// The version serving now.
    pub version: Arc<Version>,
    /// Whether compilation was skipped thanks to the artifact cache; `None`
    /// when the bytes were already serving and nothing was swapped.
    pub origin: Option<Origin>,
    /// From bytes in hand to the new version serving (or, with a
    /// candidate, to its first stage starting).
    pub took: Duration,
    /// The version earning its traffic, when the new bytes did not
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
    /// The version earning its traffic (shadow, canary), if any. Set and
    /// cleared under the swap lock; read by every request (lock-free, as
    /// `current` is) to pick the ones it shadows or serves.
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
        if self.admission.shadow.enabled || self.admission.canary.enabled() {
            let provenance = Provenance::checked(version.source.clone(), version.signed);
            let candidate = Arc::new(Candidate::new(
                version,
                bytes,
                provenance,
                self.admission.shadow,
            ));
            self.start_candidate(candidate.clone());
            if let Some(history) = &self.history {
                history
                    .record_candidate(Some((&candidate.version, candidate.bytes.clone())))
                    .await;
            }
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
