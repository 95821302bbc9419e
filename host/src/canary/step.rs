//! One step of a candidate's canary: its share of requests, when it
//! began, and what each version did over it.

use super::tally::{Summary, Tally};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A step in progress. A new one (fresh counts) replaces it when it ends,
/// so each step is judged on its own requests only.
pub struct Step {
    /// Its place in `--rollout-steps`, from 0.
    pub index: usize,
    /// The candidate's share of requests.
    pub weight: f64,
    started: Instant,
    /// Requests split so far: request n goes to the candidate when
    /// `floor(n * weight)` steps, so exactly the weight does, spread
    /// evenly.
    split: AtomicU64,
    /// What the serving version did over the step.
    pub serving: Arc<Tally>,
    /// What the candidate did over the step.
    pub candidate: Arc<Tally>,
}

impl Step {
    /// Step `index`, at `weight`, beginning now.
    pub fn new(index: usize, weight: f64) -> Self {
        Step {
            index,
            weight,
            started: Instant::now(),
            split: AtomicU64::new(0),
            serving: Arc::default(),
            candidate: Arc::default(),
        }
    }

    /// Whether the next request goes to the candidate.
    pub fn picks_candidate(&self) -> bool {
        let n = self.split.fetch_add(1, Ordering::Relaxed) as f64;
        (n * self.weight).floor() != ((n + 1.0) * self.weight).floor()
    }

    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What `GET /admin/rollout` shows of it.
    pub fn status(&self, steps: usize, duration: Duration) -> StepStatus {
        StepStatus {
            step: self.index + 1,
            steps,
            weight: self.weight,
            left_ms: duration.saturating_sub(self.elapsed()).as_millis() as u64,
            serving: self.serving.summary(),
            candidate: self.candidate.summary(),
        }
    }
}

/// A step as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepStatus {
    /// Which step, from 1.
    pub step: usize,
    /// Of how many (the final 100 % not counted: it is the promotion).
    pub steps: usize,
    /// The candidate's share of requests.
    pub weight: f64,
    /// Time until the step is judged.
    pub left_ms: u64,
    /// What the serving version did over it so far.
    pub serving: Summary,
    /// What the candidate did.
    pub candidate: Summary,
}

#[cfg(test)]
mod tests {
    use super::Step;

    #[test]
    fn the_weight_is_split_evenly() {
        let step = Step::new(0, 0.05);
        let picked: Vec<usize> = (0..100).filter(|_| step.picks_candidate()).collect();
        assert_eq!(picked.len(), 5);
        let step = Step::new(1, 0.25);
        let picks: Vec<bool> = (0..8).map(|_| step.picks_candidate()).collect();
        assert_eq!(
            picks,
            [false, false, false, true, false, false, false, true]
        );
    }
}
