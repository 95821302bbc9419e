//! Following a tag: every instance of a fleet polls the tag it serves and
//! swaps in what it points to when it moves.
//!
//! Each poll is one `HEAD` of the tag's manifest. Polls are spread: each
//! waits the interval give or take a fifth, at random, so a fleet started
//! together does not poll (nor pull) in step. When the digest moves, the
//! instance pulls through the new digest (so the bytes are the ones that
//! digest names, even if the tag moves again meanwhile), checks and swaps
//! like any other swap. A version that is refused is not tried again until
//! the tag moves once more; a registry that cannot be reached is tried
//! again at the next poll, and so is a version refused under
//! `--verify-key` only for having no signature at all, or none for the
//! followed tag: publishing (or moving the tag) and then signing
//! (`keybust component sign`, `cosign sign`) is two steps, and a poll may
//! fall between them. The serving version keeps serving throughout.

use super::registry::{OciReference, Registry};
use crate::digest::hex_digest;
use crate::versions::following::Following;
use crate::versions::slot::{ComponentSlot, Provenance};
use std::sync::Arc;
use std::time::Duration;

/// How one poll ended, as counted in `keybust_follow_polls_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// The tag points where it did.
    Unchanged,
    /// The tag moved and its new version serves.
    Swapped,
    /// The tag moved and its new version passed the gate; it runs in the
    /// shadow of the serving one before it serves.
    Candidate,
    /// The tag moved to a version that was refused.
    Refused,
    /// The registry could not be asked, or the pull failed, or the new
    /// version has no signature yet (under `--verify-key`).
    Failed,
}

impl PollResult {
    /// The label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            PollResult::Unchanged => "unchanged",
            PollResult::Swapped => "swapped",
            PollResult::Candidate => "candidate",
            PollResult::Refused => "refused",
            PollResult::Failed => "failed",
        }
    }
}

/// The shortest interval a follower polls at: shorter would hammer the
/// registry (a fleet of N instances makes N polls each interval).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest: a tag looked at less than once a day is not followed.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A follow interval outside [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
#[derive(Debug, thiserror::Error)]
#[error("a follow interval must be from 1s to 24h, not {0:?}")]
pub struct IntervalError(pub Duration);

/// `interval`, if a follower may poll at it.
pub fn check_interval(interval: Duration) -> Result<Duration, IntervalError> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        Ok(interval)
    } else {
        Err(IntervalError(interval))
    }
}

/// Polls `reference`'s tag every `interval` (with jitter) for as long as
/// `slot` lives, swapping in each new version. `serving` is the
/// manifest digest the tag pointed to when the serving version was pulled,
/// if known, and `component` the digest of the component it held. An
/// interval outside [`check_interval`]'s bounds is refused and nothing is
/// started. Needs a tokio runtime.
pub fn follow(
    slot: &Arc<ComponentSlot>,
    registry: Registry,
    reference: OciReference,
    interval: Duration,
    serving: Option<String>,
    component: Option<String>,
) -> Result<(), IntervalError> {
    let interval = check_interval(interval)?;
    slot.note_following(Following {
        component,
        ..Following::new(reference.to_string(), serving.clone())
    });
    let slot = Arc::downgrade(slot);
    tokio::spawn(async move {
        let mut follower = Follower {
            registry,
            reference,
            seen: serving,
        };
        loop {
            tokio::time::sleep(jittered(interval)).await;
            let Some(slot) = slot.upgrade() else {
                return;
            };
            let result = follower.poll(&slot).await;
            slot.metrics().follow_poll(result.label());
        }
    });
    Ok(())
}

struct Follower {
    registry: Registry,
    reference: OciReference,
    /// The last manifest digest tried (served or refused).
    seen: Option<String>,
}

impl Follower {
    async fn poll(&mut self, slot: &ComponentSlot) -> PollResult {
        let digest = match self.registry.resolve(&self.reference).await {
            Ok(digest) => digest,
            Err(err) => {
                tracing::warn!(reference = %self.reference, error = %err, "cannot resolve the followed tag; trying again at the next poll");
                return PollResult::Failed;
            }
        };
        if self.seen.as_deref() == Some(digest.as_str()) {
            return PollResult::Unchanged;
        }
        let pulled = match self.registry.pull(&self.reference, Some(&digest)).await {
            Ok(pulled) => pulled,
            Err(err) if err.awaits_signature() => {
                tracing::warn!(reference = %self.reference, manifest = digest, error = %err, "the followed tag's new version has no signature yet; looking again at the next poll");
                return PollResult::Failed;
            }
            Err(err) if err.is_transient() => {
                tracing::warn!(reference = %self.reference, error = %err, "cannot pull the followed tag's new version; trying again at the next poll");
                return PollResult::Failed;
            }
            Err(err) => {
                slot.note_following(Following {
                    refused: Some(err.to_string()),
                    ..Following::new(self.reference.to_string(), Some(digest.clone()))
                });
                self.seen = Some(digest);
                tracing::error!(reference = %self.reference, error = %err, "the followed tag's new version is refused; the current one keeps serving");
                slot.metrics().swap_failed();
                return PollResult::Refused;
            }
        };
        self.seen = Some(digest.clone());
        let mut following = Following {
            component: Some(hex_digest(&pulled.bytes)),
            ..Following::new(self.reference.to_string(), Some(digest.clone()))
        };
        match slot
            .replace(
                pulled.bytes,
                Provenance::checked(
                    self.reference.to_string(),
                    self.registry.requires_signatures(),
                ),
            )
            .await
        {
            Ok(swapped) => {
                slot.note_following(following);
                if swapped.candidate.is_some() {
                    tracing::info!(reference = %self.reference, manifest = digest, "followed the tag to a new version, which runs in the shadow stage first");
                    return PollResult::Candidate;
                }
                if !swapped.already_serving() {
                    tracing::info!(reference = %self.reference, manifest = digest, "followed the tag to a new version");
                }
                PollResult::Swapped
            }
            Err(err) => {
                following.refused = Some(err.to_string());
                slot.note_following(following);
                tracing::error!(reference = %self.reference, manifest = digest, error = %err, "the followed tag's new version is refused; the current one keeps serving");
                PollResult::Refused
            }
        }
    }
}

/// `interval` give or take a fifth, at random.
fn jittered(interval: Duration) -> Duration {
    let mut byte = [0u8; 1];
    // Without randomness the interval is used as is.
    let _ = aws_lc_rs::rand::fill(&mut byte);
    let fraction = 0.8 + 0.4 * f64::from(byte[0]) / 255.0;
    interval.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_from_a_second_to_a_day() {
        assert!(check_interval(Duration::from_secs(1)).is_ok());
        assert!(check_interval(Duration::from_secs(24 * 3600)).is_ok());
        assert!(check_interval(Duration::from_millis(999)).is_err());
        assert!(check_interval(Duration::from_secs(24 * 3600 + 1)).is_err());
        assert_eq!(
            check_interval(Duration::ZERO).unwrap_err().to_string(),
            "a follow interval must be from 1s to 24h, not 0ns"
        );
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let interval = std::time::Duration::from_secs(10);
        for _ in 0..100 {
            let waited = super::jittered(interval);
            assert!(waited >= interval.mul_f64(0.8) && waited <= interval.mul_f64(1.2));
        }
    }
}
