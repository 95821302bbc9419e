//! Files keybust keeps for itself (precompiled components, the key that
//! authenticates them, the record of accepted components): owner-only,
//! checked before they are trusted, and replaced atomically.
//!
//! Files are opened without following a symbolic link (`O_NOFOLLOW`), and
//! a file read is checked on the descriptor it is read through, not by its
//! path beforehand: a file swapped for another between a check and a read
//! would otherwise be trusted unchecked. New files are created exclusively
//! (`O_EXCL`), so a name planted in the directory is never written
//! through.

use std::fs;
use std::io::{self, Read, Write};
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
    check_metadata(path, &fs::symlink_metadata(path)?, dir)
}

/// Reads the file at `path` when it passes [`check_owned`], checked on the
/// open file itself (see the module docs).
pub(crate) fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    no_follow(&mut options);
    let mut file = options.open(path)?;
    check_metadata(path, &file.metadata()?, false)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn check_metadata(path: &Path, meta: &fs::Metadata, dir: bool) -> io::Result<()> {
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

/// Opens without following a symbolic link in the last component: the
/// open fails instead (`ELOOP`).
fn no_follow(options: &mut fs::OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    #[cfg(not(unix))]
    let _ = options;
}

/// Creates `path` owner-only (`0600`) for writing; it must not exist yet
/// (`O_EXCL`, which also refuses a symbolic link there).
pub(crate) fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    no_follow(&mut options);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Replaces `path` with `bytes`, owner-only (`0600`), atomically: a new
/// file is written and synced under a temporary name, renamed over `path`,
/// and the directory synced, so a crash leaves the old file or the new one,
/// never half of either.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // Left by an earlier process with this pid that stopped mid-write, or
    // planted: either way not ours to write through.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut file = create_private(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An exclusive hold on a directory of keybust's own, for as long as the
/// value lives. An advisory lock (`flock`) on a `lock` file in it: the
/// kernel drops it when the process exits, however it exits, so a stale
/// hold after a crash cannot happen.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: fs::File,
}

/// Takes the hold on `dir`, or fails at once with
/// [`io::ErrorKind::WouldBlock`] while another live process has it.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true);
    no_follow(&mut options);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(dir.join("lock"))?;
    #[cfg(unix)]
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |err| {
            if err == rustix::io::Errno::WOULDBLOCK {
                io::Error::new(io::ErrorKind::WouldBlock, "held by another process")
            } else {
                io::Error::from(err)
            }
        },
    )?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_planted_link_is_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // Reading a private file through a link to an owned file: refused.
        let link = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(read_private(&link).is_err());
        // The temporary name a write uses, planted as a link: the write
        // goes to a file of its own, and the link's target is untouched.
        let target = dir.path().join("record");
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_private(&target, b"record").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(read_private(&target).unwrap(), b"record");
        assert!(
            !fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_is_held_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
