//! The slot's side of a candidate's stages: starting them, picking the
//! requests it shadows, and ending them (passed, refused, aborted). The
//! weighted steps are in `canary.rs`. Every decision is made under the
//! swap lock and claimed once on the candidate, so a timer, a shadow run
//! and an operator cannot decide twice.

use super::ComponentSlot;
use crate::canary::step::Step;
use crate::metrics::{Decision, RolloutStage};
use crate::versions::candidate::{Candidate, CandidateStatus, Decided, Stage};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Stage {
    /// As `keybust_rollout_*` names it.
    pub(super) fn metric(self) -> RolloutStage {
        match self {
            Stage::Shadow => RolloutStage::Shadow,
            Stage::Canary => RolloutStage::Canary,
        }
    }
}

impl ComponentSlot {
    /// Lets the slot end a candidate's stages by itself: it needs a handle
    /// on itself for their timers. [`Endpoint::new`](crate::serve::endpoint::Endpoint::new)
    /// calls it; a slot never shared waits for requests (or an operator)
    /// to end a shadow window, and its canary steps never end.
    pub fn share(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// The version earning its traffic, if any.
    pub fn candidate(&self) -> Option<Arc<Candidate>> {
        self.candidate.load_full()
    }

    /// What the admin API shows of the candidate, if there is one.
    pub fn candidate_status(&self) -> Option<CandidateStatus> {
        let canary = &self.admission.canary;
        self.candidate()
            .map(|candidate| candidate.status(canary.steps.len(), canary.step_duration))
    }

    /// How the last candidate's stage ended, if one did.
    pub fn last_decision(&self) -> Option<Decided> {
        self.last_decision
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The candidate, when it shadows this request: the share of requests
    /// it asked for, spread evenly, while it is in its shadow stage.
    pub fn shadow_pick(&self) -> Option<Arc<Candidate>> {
        let candidate = self.candidate.load();
        let candidate = candidate.as_ref()?;
        if candidate.stage() != Stage::Shadow {
            return None;
        }
        let n = self.shadow_count.fetch_add(1, Ordering::Relaxed) as f64;
        let share = candidate.share();
        ((n * share).floor() != ((n + 1.0) * share).floor()).then(|| candidate.clone())
    }

    /// Makes `candidate` the one earning its traffic, in place of any
    /// earlier one (which is dropped undecided: a newer version superseded
    /// it), and starts its first stage: the shadow, else the canary's
    /// first step. Under the swap lock.
    pub(super) fn start_candidate(&self, candidate: Arc<Candidate>) {
        if !self.admission.shadow.enabled {
            candidate.begin_step(Step::new(0, self.admission.canary.steps[0]));
        }
        let earlier = self.candidate.swap(Some(candidate.clone()));
        if let Some(earlier) = earlier
            && earlier.decide()
        {
            earlier.version.plugin.retire_instances();
            tracing::info!(
                digest = earlier.version.digest(),
                "the candidate earning its traffic is superseded by a newer version"
            );
        }
        self.metrics.rollout_stage(Some(candidate.stage().metric()));
        if candidate.stage() == Stage::Canary {
            tracing::info!(
                digest = candidate.version.digest(),
                source = candidate.provenance.source,
                "the new version passed the contract gate; {}",
                self.step_begins(0)
            );
            self.run_steps(candidate);
            return;
        }
        tracing::info!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            share = candidate.share(),
            "the new version passed the contract gate and runs in the shadow of the serving one"
        );
        if let Some(me) = self.me.get().cloned() {
            let window = self.admission.shadow.window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let Some(slot) = me.upgrade() else {
                    return;
                };
                let agreed = candidate.agreements();
                slot.passed(
                    &candidate,
                    Stage::Shadow,
                    &format!("its shadow window passed: {agreed} agreeing requests, no divergence"),
                )
                .await;
            });
        }
    }

    /// Notes that `candidate` passed `stage`, if it is still there: it
    /// goes on to the canary's steps when it passed the shadow and steps
    /// are set, else it serves. `why` goes to the log and the decision.
    pub async fn passed(&self, candidate: &Arc<Candidate>, stage: Stage, why: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        if !self.is_waiting(candidate) || candidate.stage() != stage {
            return false;
        }
        self.metrics.decided(stage.metric(), Decision::Passed);
        if stage == Stage::Shadow && self.admission.canary.enabled() {
            candidate.begin_step(Step::new(0, self.admission.canary.steps[0]));
            self.metrics.rollout_stage(Some(RolloutStage::Canary));
            tracing::info!(
                digest = candidate.version.digest(),
                why,
                "the candidate passed its shadow stage; {}",
                self.step_begins(0)
            );
            self.run_steps(candidate.clone());
            return true;
        }
        self.serve_candidate(candidate, stage.as_str(), why).await
    }

    /// An operator's promotion (`POST /admin/rollout/promote`): the
    /// waiting candidate serves now, whatever its stage.
    pub async fn promote(&self, candidate: &Arc<Candidate>, why: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        self.serve_candidate(candidate, "operator", why).await
    }

    /// Makes `candidate` the serving version, if it still waits. Under
    /// the swap lock.
    async fn serve_candidate(&self, candidate: &Arc<Candidate>, stage: &str, why: &str) -> bool {
        if !self.take_candidate(candidate) {
            return false;
        }
        // Noted first: whoever sees the new version serving sees why.
        self.note_decision(Decided::now(
            candidate.version.digest(),
            stage,
            "promoted",
            why.to_owned(),
        ));
        self.metrics.rollout_stage(None);
        self.install(candidate.version.clone(), candidate.bytes.clone())
            .await;
        tracing::info!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            stage,
            why,
            "the candidate serves"
        );
        true
    }

    /// Refuses `candidate` at `stage`, if it still waits: it is recorded
    /// like a gate refusal, so no source takes it again.
    pub async fn refuse(&self, candidate: &Arc<Candidate>, stage: Stage, why: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        if !self.take_candidate(candidate) {
            return false;
        }
        let stage_name = stage.as_str();
        candidate.version.plugin.retire_instances();
        self.forget_candidate().await;
        self.admission.refused.record(
            candidate.version.digest(),
            stage_name,
            why,
            &candidate.provenance.source,
        );
        self.metrics.decided(stage.metric(), Decision::Refused);
        self.metrics.swap_failed();
        self.metrics.rollout_stage(None);
        self.note_decision(Decided::now(
            candidate.version.digest(),
            stage_name,
            "refused",
            why.to_owned(),
        ));
        tracing::error!(
            digest = candidate.version.digest(),
            source = candidate.provenance.source,
            stage = stage_name,
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
        self.forget_candidate().await;
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

    /// Whether `candidate` is the one waiting, undecided. Under the swap
    /// lock.
    pub(super) fn is_waiting(&self, candidate: &Arc<Candidate>) -> bool {
        self.candidate
            .load()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, candidate) && !candidate.is_decided())
    }

    /// Takes `candidate` out of the slot and claims its decision; `false`
    /// when it is not the waiting one any more, or was decided.
    fn take_candidate(&self, candidate: &Arc<Candidate>) -> bool {
        if self.is_waiting(candidate) && candidate.decide() {
            self.candidate.store(None);
            true
        } else {
            false
        }
    }

    /// Records that no candidate waits, for a restart. Under the swap
    /// lock.
    async fn forget_candidate(&self) {
        if let Some(history) = &self.history {
            history.record_candidate(None).await;
        }
    }

    fn note_decision(&self, decided: Decided) {
        *self
            .last_decision
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(decided);
    }
}
