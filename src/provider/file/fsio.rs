//! File-system primitives of the file vault: private files and directories, atomic
//! replacement (temporary file, fsync, rename, fsync of the directory) and the cross-process
//! lock.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::format::{LOCK_FILE, TMP_PREFIX};

/// Mode of every file the vault creates: owner read/write only.
pub(super) const FILE_MODE: u32 = 0o600;
/// Mode of the vault directory and `keys/`: owner only.
pub(super) const DIR_MODE: u32 = 0o700;
/// Largest file the vault reads (a state with many thousands of keys is far smaller).
const MAX_FILE_LEN: u64 = 64 << 20;

/// Creates a directory with mode 0700 (set at creation).
pub(super) fn mkdir_private(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates a new file with mode 0600 (set at creation, never widened afterwards); fails if it
/// exists.
pub(super) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole file, refusing implausibly large ones.
pub(super) fn read_file(path: &Path) -> io::Result<(File, Vec<u8>)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than any vault file",
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.read_to_end(&mut buf)?;
    Ok((f, buf))
}

/// Replaces `dir/name` with `bytes` atomically and durably: a temporary file in the same
/// directory (mode 0600), written and fsynced, renamed over the target, then the directory
/// fsynced. Returns the new file, still open (the caller may pin its inode).
///
/// A crash at any point leaves either the old file or the new one under `name`, plus at most
/// a temporary file that the next open removes.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<File> {
    let mut rnd = [0u8; 8];
    crate::crypto::fill_random(&mut rnd);
    let tmp = dir.join(format!("{TMP_PREFIX}{}", crate::util::hex(&rnd)));
    let result = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        Ok(f)
    })();
    match result {
        Ok(f) => {
            sync_dir(dir)?;
            Ok(f)
        }
        Err(e) => {
            // Best effort: the next open removes it anyway.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Removes leftover temporary files from `dir`; returns how many. Only called under the
/// exclusive lock, when no writer can be using one.
pub(super) fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
}

/// A held cross-process lock on `dir/lock` (released when dropped: closing the file releases
/// it, also when the process dies).
pub(super) struct LockGuard(#[allow(dead_code)] File);

fn lock_file(dir: &Path) -> io::Result<File> {
    // A fresh open file description per acquisition: `flock` locks belong to the description,
    // so this also serialises threads of one process (each has its own description).
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(dir.join(LOCK_FILE))
}

/// Takes the exclusive (writer) lock, waiting for it.
pub(super) fn lock_exclusive(dir: &Path) -> io::Result<LockGuard> {
    let f = lock_file(dir)?;
    f.lock()?;
    Ok(LockGuard(f))
}

/// Takes the shared (reader) lock, waiting for it.
pub(super) fn lock_shared(dir: &Path) -> io::Result<LockGuard> {
    let f = lock_file(dir)?;
    f.lock_shared()?;
    Ok(LockGuard(f))
}
