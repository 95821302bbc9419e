//! Noticing that files changed on disk: the component file, the TLS
//! certificate pair.
//!
//! Deploy tools and editors rarely write a file in place: they write a new
//! file and rename it over the old one, which replaces the inode a watch on
//! the file itself would follow. Kubernetes ConfigMap and Secret mounts go
//! further: the file's name is a symbolic link through `..data`, and an
//! update renames a new `..data` link into place without touching that name.
//! So the watch is on each file's parent directory, takes any change in it,
//! and is debounced: a burst of writes and renames becomes one call once the
//! directories have been quiet for [`DEBOUNCE`]. Callers re-read and compare,
//! so a change to some other file in the same directory costs one read.

use notify::{RecursiveMode, Watcher};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Quiet time after the last change before the files are re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Calls `changed` after each burst of changes in the directories that hold
/// `files`. The returned watcher must be kept alive for as long as the
/// watch should last. Calls never overlap: the next burst waits for the
/// previous call to finish.
pub fn on_change<F, Fut>(
    files: &[PathBuf],
    changed: F,
) -> notify::Result<notify::RecommendedWatcher>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() {
            let _ = tx.send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = files.iter().map(|file| parent(file)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event has arrived for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            changed().await;
        }
    });
    Ok(watcher)
}

/// The directory a file's changes show up in.
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
