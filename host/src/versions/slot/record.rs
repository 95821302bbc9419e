//! The slot's link to the history: every version that starts serving is
//! recorded, under the swap lock, so the record follows the swaps in their
//! order.

use crate::versions::history::{Accepted, History};
use crate::versions::version::Version;
use std::sync::Arc;

/// The history and the `--component` value it is kept under.
pub(super) struct Recorder {
    pub(super) history: History,
    pub(super) configured: String,
}

impl Recorder {
    /// Records `current` (with its `bytes`, when they may not be stored
    /// yet) and `previous`, off the async threads. A failure is logged: the
    /// swap stands, but a restart would not bring it back.
    pub(super) async fn record(
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
