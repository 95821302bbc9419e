//! A version that passed the contract gate and now earns its traffic
//! before it serves every client: in the shadow of the serving one
//! ([`crate::shadow`]), then through weighted steps ([`crate::canary`]).
//! Its counts, its stage, and the decision that ends it.

use super::version::{Provenance, Version};
use crate::canary::step::{Step, StepStatus};
use crate::shadow::ShadowSettings;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A version waiting to serve.
pub struct Candidate {
    /// The compiled, checked version.
    pub version: Arc<Version>,
    /// Its bytes, for the history once it serves.
    pub(super) bytes: Vec<u8>,
    /// Where it came from.
    pub provenance: Provenance,
    /// When it became a candidate.
    pub since: SystemTime,
    started: Instant,
    settings: ShadowSettings,
    agreed: AtomicU64,
    shed: AtomicU64,
    /// Set once, by whichever decision comes first (promotion, refusal,
    /// abort, a newer candidate): later reports change nothing.
    decided: AtomicBool,
    /// Its canary step, once it is past the shadow stage; replaced (under
    /// the slot's swap lock) at each step, read by every request.
    step: ArcSwapOption<Step>,
}

/// The stage a candidate is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// It runs beside the serving version, answering no client.
    Shadow,
    /// It serves its step's share of clients.
    Canary,
}

impl Stage {
    /// As the admin API and the log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Shadow => "shadow",
            Stage::Canary => "canary",
        }
    }
}

impl Candidate {
    pub(super) fn new(
        version: Arc<Version>,
        bytes: Vec<u8>,
        provenance: Provenance,
        settings: ShadowSettings,
    ) -> Self {
        Candidate {
            version,
            bytes,
            provenance,
            since: SystemTime::now(),
            started: Instant::now(),
            settings,
            agreed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            decided: AtomicBool::new(false),
            step: ArcSwapOption::empty(),
        }
    }

    /// The stage it is in.
    pub fn stage(&self) -> Stage {
        if self.step.load().is_some() {
            Stage::Canary
        } else {
            Stage::Shadow
        }
    }

    /// Its canary step, once it has one.
    pub fn step(&self) -> Option<Arc<Step>> {
        self.step.load_full()
    }

    /// Begins `step`, in place of the one before. Under the swap lock.
    pub(super) fn begin_step(&self, step: Step) {
        self.step.store(Some(Arc::new(step)));
    }

    /// The share of live requests it shadows.
    pub fn share(&self) -> f64 {
        self.settings.share
    }

    /// Counts a request on which it agreed with the serving version;
    /// whether it has now agreed often enough to serve.
    pub fn agreed(&self) -> bool {
        self.agreed.fetch_add(1, Ordering::Relaxed) + 1 >= self.settings.requests
    }

    /// Counts a shadow run skipped under load.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// The requests it agreed on so far.
    pub fn agreements(&self) -> u64 {
        self.agreed.load(Ordering::Relaxed)
    }

    /// Whether its window has passed.
    pub fn window_passed(&self) -> bool {
        self.started.elapsed() >= self.settings.window
    }

    /// Claims the decision; `false` when one was made already.
    pub(super) fn decide(&self) -> bool {
        !self.decided.swap(true, Ordering::AcqRel)
    }

    /// Whether its stage is over.
    pub fn is_decided(&self) -> bool {
        self.decided.load(Ordering::Acquire)
    }

    /// What `GET /admin/rollout` shows of it; `steps` and `step_duration`
    /// are the canary's settings.
    pub fn status(&self, steps: usize, step_duration: Duration) -> CandidateStatus {
        let elapsed = self.started.elapsed();
        CandidateStatus {
            digest: self.version.digest().to_owned(),
            source: self.provenance.source.clone(),
            stage: self.stage().as_str(),
            canary: self.step().map(|step| step.status(steps, step_duration)),
            since: humantime::format_rfc3339_millis(self.since).to_string(),
            agreed: self.agreements(),
            needed: self.settings.requests,
            shed: self.shed.load(Ordering::Relaxed),
            share: self.settings.share,
            window_left_ms: self.settings.window.saturating_sub(elapsed).as_millis() as u64,
        }
    }
}

/// A candidate as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    /// SHA-256 of its bytes.
    pub digest: String,
    /// Where it came from.
    pub source: String,
    /// The stage it is in: `shadow` or `canary`.
    pub stage: &'static str,
    /// Its canary step and the counts over it, once it has one.
    pub canary: Option<StepStatus>,
    /// When it became a candidate.
    pub since: String,
    /// Requests it agreed on with the serving version.
    pub agreed: u64,
    /// Agreements after which it serves.
    pub needed: u64,
    /// Shadow runs skipped under load.
    pub shed: u64,
    /// The share of requests it shadows.
    pub share: f64,
    /// Time until it serves without more agreements.
    pub window_left_ms: u64,
}

/// How a stage ended for a version, as `GET /admin/rollout` shows the last one.
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    /// The version's digest.
    pub digest: String,
    /// The stage that decided (`gate`, `shadow`, `canary`, `operator`).
    pub stage: String,
    /// `promoted`, `refused` or `aborted`.
    pub result: &'static str,
    /// Why, without a secret.
    pub reason: String,
    /// When.
    pub at: String,
}

impl Decided {
    pub(super) fn now(digest: &str, stage: &str, result: &'static str, reason: String) -> Self {
        Decided {
            digest: digest.to_owned(),
            stage: stage.to_owned(),
            result,
            reason,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }
}
