//! Reloading the `--component` file: when it changes on disk (see
//! [`crate::watch`] for how changes are noticed), and on SIGHUP (the
//! service's one handler calls [`reload_and_log`]). A reload
//! whose bytes equal the serving version does nothing.

use crate::versions::slot::{ComponentSlot, Provenance};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the file did not become the serving component.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The component file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes do not make a component that can serve, or the contract
    /// gate refused it.
    #[error("{path}: {source}")]
    Load {
        /// The component file.
        path: String,
        /// Why.
        source: crate::versions::slot::SwapError,
    },
}

/// Re-reads `path` and swaps it in if it differs from what serves now.
/// Returns whether a swap happened.
pub async fn reload(slot: &ComponentSlot, path: &Path) -> Result<bool, ReloadError> {
    let shown = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| ReloadError::Read {
            path: shown.clone(),
            source,
        })?;
    slot.replace(bytes, Provenance::unchecked(shown.clone()))
        .await
        .map(|swapped| !swapped.already_serving())
        .map_err(|source| ReloadError::Load {
            path: shown,
            source,
        })
}

/// [`reload`], with what became of it in the log: the serving version
/// keeps serving when the file does not load. `why` names the trigger
/// (`"SIGHUP"`, `"file changed"`).
pub async fn reload_and_log(slot: &ComponentSlot, path: &Path, why: &str) {
    match reload(slot, path).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(why, "component file unchanged"),
        Err(err) => {
            tracing::error!(why, error = %err, "component reload failed; the current component keeps serving")
        }
    }
}

/// Watches `path` and reloads it after each burst of changes. The returned
/// watcher must be kept alive for as long as the watch should last.
pub fn watch(
    slot: Arc<ComponentSlot>,
    path: PathBuf,
) -> notify::Result<notify::RecommendedWatcher> {
    let watched = path.clone();
    crate::watch::on_change(&[watched], move || {
        let slot = slot.clone();
        let path = path.clone();
        async move { reload_and_log(&slot, &path, "file changed").await }
    })
}
