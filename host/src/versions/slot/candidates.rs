//! The slot's side of a candidate's shadow stage: starting it, picking
//! the requests it shadows, and ending it (promoted, refused, aborted).
//! Every decision is made under the swap lock and claimed once on the
//! candidate, so a timer, a shadow run and an operator cannot decide
//! twice.

use super::ComponentSlot;
use crate::metrics::{Decision, RolloutStage};
use crate::versions::candidate::{Candidate, Decided};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl ComponentSlot {
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
    pub(super) fn start_shadow(&self, candidate: Arc<Candidate>) {
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
        // Noted first: whoever sees the new version serving sees why.
        self.note_decision(Decided::now(
            candidate.version.digest(),
            "shadow",
            "promoted",
            why.to_owned(),
        ));
        self.metrics.decided(RolloutStage::Shadow, Decision::Passed);
        self.metrics.rollout_stage(None);
        self.install(candidate.version.clone(), candidate.bytes.clone())
            .await;
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
}
