//! Reloading the `--component` file: when it changes on disk, and on SIGHUP.
//!
//! Deploy tools and editors rarely write a file in place: they write a new
//! file and rename it over the old one, which replaces the inode a watch on
//! the file itself would follow. Kubernetes ConfigMap and Secret mounts go
//! further: the file's name is a symbolic link through `..data`, and an
//! update renames a new `..data` link into place without touching that name.
//! So the watch is on the parent directory, takes any change in it, and is
//! debounced: a burst of writes and renames becomes one reload once the
//! directory has been quiet for [`DEBOUNCE`]. A reload whose bytes equal the
//! serving version does nothing, so changes to other files cost one read.

use crate::endpoint::Endpoint;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Quiet time after the last change before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

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
    /// The bytes do not make a component that can serve.
    #[error("{path}: {source}")]
    Load {
        /// The component file.
        path: String,
        /// Why.
        source: crate::plugin::LoadError,
    },
}

/// Re-reads `path` and swaps it in if it differs from what serves now.
/// Returns whether a swap happened.
pub async fn reload(endpoint: &Endpoint, path: &Path) -> Result<bool, ReloadError> {
    let shown = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| ReloadError::Read {
            path: shown.clone(),
            source,
        })?;
    endpoint
        .slot()
        .replace(bytes, shown.clone())
        .await
        .map(|swapped| !swapped.already_serving())
        .map_err(|source| ReloadError::Load {
            path: shown,
            source,
        })
}

async fn reload_and_log(endpoint: &Endpoint, path: &Path, why: &str) {
    match reload(endpoint, path).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(why, "component file unchanged"),
        Err(err) => {
            tracing::error!(why, error = %err, "component reload failed; the current component keeps serving")
        }
    }
}

/// Watches `path` and reloads it after each burst of changes. The returned
/// watcher must be kept alive for as long as the watch should last.
pub fn watch(endpoint: Arc<Endpoint>, path: PathBuf) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event has arrived for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            reload_and_log(&endpoint, &path, "file changed").await;
        }
    });
    Ok(watcher)
}

/// Reloads `path` on every SIGHUP.
#[cfg(unix)]
pub fn reload_on_sighup(endpoint: Arc<Endpoint>, path: PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reload_and_log(&endpoint, &path, "SIGHUP").await;
        }
    });
    Ok(())
}
