//! The slot's link to the history: every version that starts serving is
//! recorded, and so is the candidate waiting, under the swap lock, so the
//! record follows the swaps in their order.

use crate::versions::history::{Accepted, History, HistoryError};
use crate::versions::version::Version;
use std::sync::Arc;

/// The history and the `--component` value it is kept under.
pub(super) struct Recorder {
    pub(super) history: History,
    pub(super) configured: String,
}

impl Recorder {
    /// Records `current` (with its `bytes`, when they may not be stored
    /// yet) and `previous`. A failure is logged: the swap stands, but a
    /// restart would not bring it back.
    pub(super) async fn record(
        self: &Arc<Self>,
        current: &Version,
        bytes: Option<Vec<u8>>,
        previous: Option<&Version>,
        just_read: bool,
    ) {
        let current = accepted(current);
        let previous = previous.map(accepted);
        self.write(move |history, configured| {
            history.record(configured, current, bytes.as_deref(), previous, just_read)
        })
        .await;
    }

    /// Records `candidate` (with its bytes) as the version waiting, or
    /// none now.
    pub(super) async fn record_candidate(self: &Arc<Self>, candidate: Option<(&Version, Vec<u8>)>) {
        let candidate = candidate.map(|(version, bytes)| (accepted(version), bytes));
        self.write(move |history, configured| {
            let candidate = candidate
                .as_ref()
                .map(|(entry, bytes)| (entry.clone(), bytes.as_slice()));
            history.record_candidate(configured, candidate)
        })
        .await;
    }

    /// Runs `write` off the async threads; a failure is logged.
    async fn write(
        self: &Arc<Self>,
        write: impl FnOnce(&History, &str) -> Result<(), HistoryError> + Send + 'static,
    ) {
        let recorder = self.clone();
        let written =
            tokio::task::spawn_blocking(move || write(&recorder.history, &recorder.configured))
                .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "the component history cannot be written: a restart would not bring this version back");
            }
            Err(err) => {
                tracing::error!(error = %err, "the component history was not written");
            }
        }
    }
}

/// A version as the history records it.
fn accepted(version: &Version) -> Accepted {
    Accepted::now(version.digest(), &version.source).signed(version.signed)
}
