//! The slot's side of a candidate's weighted canary ([`crate::canary`]):
//! which version serves each request, and the timer that judges each
//! step and begins the next, rolls the candidate back, or makes it serve.

use super::ComponentSlot;
use crate::canary::judge::{Verdict, judge};
use crate::canary::step::Step;
use crate::canary::tally::Tally;
use crate::metrics::VersionRole;
use crate::versions::candidate::{Candidate, Stage};
use crate::versions::version::Version;
use std::sync::Arc;

/// The version a request runs on, and where it is counted.
pub struct Picked {
    /// The version.
    pub version: Arc<Version>,
    /// Its role: the serving version, or a candidate in a canary step.
    pub role: VersionRole,
    /// The canary step's counts for it, during a canary.
    pub tally: Option<Arc<Tally>>,
}

impl ComponentSlot {
    /// The version the next request runs on: the serving one, or, during a
    /// canary step, the candidate for its step's share of requests.
    /// Lock-free, as [`ComponentSlot::current`] is.
    pub fn pick(&self) -> Picked {
        let candidate = self.candidate.load();
        if let Some(candidate) = candidate.as_ref()
            && let Some(step) = candidate.step()
            && !candidate.is_decided()
        {
            if step.picks_candidate() {
                return Picked {
                    version: candidate.version.clone(),
                    role: VersionRole::Candidate,
                    tally: Some(step.candidate.clone()),
                };
            }
            return Picked {
                version: self.current(),
                role: VersionRole::Serving,
                tally: Some(step.serving.clone()),
            };
        }
        Picked {
            version: self.current(),
            role: VersionRole::Serving,
            tally: None,
        }
    }

    /// What the log says as step `index` begins.
    pub(super) fn step_begins(&self, index: usize) -> String {
        let steps = &self.admission.canary.steps;
        format!(
            "canary step {} of {}: the candidate serves {}% of requests for {}",
            index + 1,
            steps.len(),
            steps[index] * 100.0,
            humantime::format_duration(self.admission.canary.step_duration)
        )
    }

    /// Judges `candidate`'s steps as each one ends, until it is decided.
    pub(super) fn run_steps(&self, candidate: Arc<Candidate>) {
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        let duration = self.admission.canary.step_duration;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(duration).await;
                let Some(slot) = me.upgrade() else {
                    return;
                };
                if !slot.end_step(&candidate).await {
                    return;
                }
            }
        });
    }

    /// Judges `candidate`'s step that just ended: worse than the serving
    /// version, it is rolled back; else the next step begins, or, after
    /// the last, it serves. Whether another step began.
    async fn end_step(&self, candidate: &Arc<Candidate>) -> bool {
        let Some(step) = candidate.step() else {
            return false;
        };
        if candidate.is_decided() {
            return false;
        }
        let steps = &self.admission.canary.steps;
        let serving = step.serving.summary();
        let tried = step.candidate.summary();
        let at = format!(
            "step {} of {} ({}%)",
            step.index + 1,
            steps.len(),
            step.weight * 100.0
        );
        match judge(&serving, &tried, &self.admission.canary.margins) {
            Verdict::Worse(why) => {
                let why = format!("rolled back at canary {at}: {why}");
                self.refuse(candidate, Stage::Canary, &why).await;
                false
            }
            Verdict::Fine(how) if step.index + 1 < steps.len() => {
                self.next_step(candidate, &step, &how).await
            }
            Verdict::Fine(how) => {
                let why = format!(
                    "it did no worse than the serving version over {} canary steps; the last: {how}",
                    steps.len()
                );
                self.passed(candidate, Stage::Canary, &why).await;
                false
            }
        }
    }

    /// Begins the step after `ended`, if `candidate` is still in it.
    async fn next_step(&self, candidate: &Arc<Candidate>, ended: &Step, how: &str) -> bool {
        let _one_at_a_time = self.swapping.lock().await;
        let still = candidate
            .step()
            .is_some_and(|step| step.index == ended.index);
        if !self.is_waiting(candidate) || !still {
            return false;
        }
        let next = ended.index + 1;
        candidate.begin_step(Step::new(next, self.admission.canary.steps[next]));
        tracing::info!(
            digest = candidate.version.digest(),
            how,
            "the candidate did no worse over canary step {}; {}",
            ended.index + 1,
            self.step_begins(next)
        );
        true
    }
}
