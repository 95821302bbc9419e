//! Files keybust keeps for itself (precompiled components, the key that
//! authenticates them, the record of accepted components): owner-only,
//! checked before they are trusted, and replaced atomically.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Creates `dir` (and its parents) owner-only when it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Refuses `path` unless it is a directory (`dir`) or a regular file, not
/// a symbolic link, owned by this process's effective user, and not
/// writable by group or others.
pub(crate) fn check_owned(path: &Path, dir: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} {why}", path.display()),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link");
    }
    if dir && !meta.is_dir() {
        return refuse("is not a directory");
    }
    if !dir && !meta.is_file() {
        return refuse("is not a regular file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return refuse("belongs to another user");
        }
        if meta.mode() & 0o022 != 0 {
            return refuse("is writable by group or others");
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes`, owner-only (`0600`), atomically: a new
/// file is written and synced under a temporary name, renamed over `path`,
/// and the directory synced, so a crash leaves the old file or the new one,
/// never half of either.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
