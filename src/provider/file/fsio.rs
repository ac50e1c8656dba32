//! File-system primitives of the file vault: private files and directories, atomic
//! replacement (temporary file, fsync, rename, fsync of the directory) and the cross-process
//! lock.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

use super::format::{LOCK_FILE, TMP_PREFIX};

/// Mode of every file the vault creates: owner read/write only.
pub(super) const FILE_MODE: u32 = 0o600;
/// Mode of the vault directory and `keys/`: owner only.
pub(super) const DIR_MODE: u32 = 0o700;
/// Largest state file the vault reads (a state with many thousands of keys is far smaller).
pub(super) const MAX_STATE_LEN: u64 = 64 << 20;
/// Largest key file the vault reads (an RSA-4096 version is under 3 KiB).
pub(super) const MAX_KEY_FILE_LEN: u64 = 1 << 20;
/// Largest `vault.meta` the vault reads (it is [`super::format::META_LEN`] bytes).
pub(super) const MAX_META_LEN: u64 = 4096;

/// A file or directory that another user could have written: wrong owner, group- or
/// world-writable, a symbolic link or not the expected type. Carried inside an
/// [`io::Error`] so every I/O path reports it the same way.
#[derive(Debug)]
pub(super) struct Unsafe(pub(super) String);

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsafe {}

fn unsafe_err(why: String) -> io::Error {
    io::Error::other(Unsafe(why))
}

/// Whether `e` says an `O_NOFOLLOW` open met a symbolic link.
pub(super) fn is_symlink_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EMLINK))
}

/// The effective uid of this process, learnt once from the owner of a file it creates in
/// `dir` (removed at once; a crash leaves a temporary file that the next open removes). std
/// has no `geteuid`, and the crate forbids the `unsafe` a libc call would need.
pub(super) fn effective_uid(dir: &Path) -> io::Result<u32> {
    static EUID: OnceLock<u32> = OnceLock::new();
    if let Some(uid) = EUID.get() {
        return Ok(*uid);
    }
    let mut rnd = [0u8; 8];
    crate::crypto::fill_random(&mut rnd);
    let probe = dir.join(format!("{TMP_PREFIX}uid-{}", crate::util::hex(&rnd)));
    let f = create_private(&probe)?;
    let uid = f.metadata().map(|m| m.uid());
    fs::remove_file(&probe)?;
    let uid = uid?;
    Ok(*EUID.get_or_init(|| uid))
}

/// Refuses an entry another user could have written: owned by someone else, or group- or
/// world-writable. `md` must come from `lstat`/`fstat` of the entry itself.
pub(super) fn check_owned(md: &Metadata, uid: u32) -> io::Result<()> {
    if md.uid() != uid {
        return Err(unsafe_err(format!(
            "is owned by uid {}, not by this process's uid {uid}: another user could have \
             written it",
            md.uid()
        )));
    }
    if md.mode() & 0o022 != 0 {
        return Err(unsafe_err(format!(
            "has mode {:o}: it is group- or world-writable",
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Checks a directory of the vault (the vault directory itself, followed through symbolic
/// links of its path, or `keys/`, which must not be one): a directory, owned by `uid`, not
/// writable by others.
pub(super) fn check_dir(path: &Path, follow: bool, uid: u32) -> io::Result<()> {
    let md = if follow {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    if md.file_type().is_symlink() {
        return Err(unsafe_err("is a symbolic link".to_owned()));
    }
    if !md.is_dir() {
        return Err(unsafe_err("is not a directory".to_owned()));
    }
    check_owned(&md, uid)
}

/// Opens a vault file for reading (and writing when `write`), never through a symbolic link,
/// and checks what was opened: a regular file owned by the vault's user and not writable by
/// others.
fn open_checked(path: &Path, write: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(unsafe_err("is not a regular file".to_owned()));
    }
    let uid = match path.parent() {
        Some(dir) => effective_uid(dir)?,
        None => md.uid(),
    };
    check_owned(&md, uid)?;
    Ok(f)
}

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

/// Reads a whole vault file (see [`open_checked`]), refusing one larger than `max` bytes
/// before reading it.
pub(super) fn read_file(path: &Path, max: u64) -> io::Result<(File, Vec<u8>)> {
    let f = open_checked(path, false)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, larger than any such vault file ({max} bytes at most)"),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // `take`: the file may grow between the size check and the read.
    (&f).take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than any such vault file ({max} bytes at most)"),
        ));
    }
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
    // Never created here (the vault is created with it) and never through a symbolic link:
    // an attacker's link would make us open, and lock, a file of their choosing.
    open_checked(&dir.join(LOCK_FILE), true)
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
