//! The file-backed vault: the in-memory vault's semantics (`VaultState` in `soft.rs`) persisted in one
//! directory, crash-safe, shared between processes and sealed at rest.
//!
//! Layout, format and the crash-safety and locking arguments are in `docs/FILE_VAULT.md`. In
//! short:
//!
//! - every change is applied (by `VaultState::apply`, the same code as the in-memory vault)
//!   to the newest state read under an exclusive `flock` on `lock`, new key versions are
//!   written to their own files first, then the state file is replaced atomically (temporary
//!   file, fsync, rename, fsync of the directory), and only then is the call acknowledged;
//! - readers keep a decoded snapshot and the state file it came from open; one `stat` per
//!   call tells whether another handle or process has replaced the state since (the open file
//!   pins the old inode, so its number cannot be reused in between), in which case the state
//!   is re-read under a shared lock, reusing the already decrypted key versions;
//! - every file is authenticated (AES-256-GCM with the file's name and the vault id as AAD)
//!   under a key derived from the master key; anything that fails is a
//!   [`ProviderErrorKind::Corrupted`](crate::ProviderErrorKind::Corrupted) error naming the
//!   file.
//!
//! Changes (an fsync or more each), key generation and RSA private-key operations run on the
//! crate's blocking pool, off the caller's executor; reads (a `stat`, and a re-read when
//! another handle changed the state) stay on the caller's task. Opening and creating derive
//! the master key with Argon2id (hundreds of milliseconds): [`FileVault::open_async`] and
//! [`FileVault::create_async`] run that on the pool too.

mod format;
mod fsio;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;

use core::fmt;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use zeroize::{Zeroize, Zeroizing};

use self::format::{
    FileId, FileMap, KEYS_DIR, Kdf, META_FILE, Malformed, Meta, STATE_FILE, TMP_PREFIX,
};
use super::memory::VaultRng;
use super::soft::sealed::Backend;
use super::soft::{Change, Material, Storage, VaultState};
use super::soft::{SoftProvider, SoftVault};
use super::{KeyProperties, KeySpec, VaultProperties};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{Gcm, hkdf_sha256};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::{AesKey, SecretString};

/// Argon2id cost parameters for deriving a file vault's master key from a passphrase.
///
/// The default is OWASP's recommendation for Argon2id: 19 MiB of memory, 2 iterations, 1 lane.
/// They are chosen when a vault is created and stored in its `vault.meta`; opening uses the
/// stored ones. Lower them only for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Argon2Params {
    /// Memory in KiB (at least 8 × `parallelism`, at most 1 GiB).
    pub memory_kib: u32,
    /// Number of passes (1 to 64).
    pub iterations: u32,
    /// Degree of parallelism (lanes, 1 to 64).
    pub parallelism: u32,
}

impl Argon2Params {
    /// OWASP's Argon2id recommendation: m = 19 MiB, t = 2, p = 1.
    pub const OWASP: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Parameters with `memory_kib` KiB, `iterations` passes and `parallelism` lanes.
    pub const fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Self {
        Self {
            memory_kib,
            iterations,
            parallelism,
        }
    }

    fn validate(self) -> Result<Self, ProviderError> {
        let ok = (1..=format::MAX_P).contains(&self.parallelism)
            && (1..=format::MAX_T).contains(&self.iterations)
            && self.memory_kib >= 8 * self.parallelism
            && self.memory_kib <= format::MAX_M_KIB;
        if ok {
            Ok(self)
        } else {
            Err(ProviderError::new(
                K::InvalidRequest,
                format!("Argon2id parameters out of range: {self:?}"),
            ))
        }
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::OWASP
    }
}

#[derive(Clone)]
enum MasterSecret {
    Passphrase(SecretString),
    KeyFile(PathBuf),
}

/// How to unlock (and, at creation, protect) a [`FileVault`]: a passphrase stretched with
/// Argon2id, or a key file of exactly 32 random bytes; plus the clock used for creation times
/// and retention periods.
#[derive(Clone)]
pub struct FileVaultOptions {
    secret: MasterSecret,
    argon2: Argon2Params,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for FileVaultOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match &self.secret {
            MasterSecret::Passphrase(_) => "passphrase".to_owned(),
            MasterSecret::KeyFile(p) => format!("key file {}", p.display()),
        };
        f.debug_struct("FileVaultOptions")
            .field("secret", &secret)
            .field("argon2", &self.argon2)
            .finish_non_exhaustive()
    }
}

impl FileVaultOptions {
    /// Unlock with a passphrase: the master key is Argon2id(passphrase, the vault's salt)
    /// with [`Argon2Params::OWASP`] unless changed with [`FileVaultOptions::argon2`].
    pub fn from_passphrase(passphrase: SecretString) -> Self {
        Self {
            secret: MasterSecret::Passphrase(passphrase),
            argon2: Argon2Params::OWASP,
            clock: Arc::new(SystemClock),
        }
    }

    /// Unlock with a key file holding exactly 32 random bytes (the master key itself). Keep
    /// it readable by the vault's owner only, and apart from the vault directory.
    pub fn from_key_file(path: impl Into<PathBuf>) -> Self {
        Self {
            secret: MasterSecret::KeyFile(path.into()),
            argon2: Argon2Params::OWASP,
            clock: Arc::new(SystemClock),
        }
    }

    /// The Argon2id parameters for a vault about to be created (an existing vault keeps the
    /// ones stored in it).
    pub fn argon2(mut self, params: Argon2Params) -> Self {
        self.argon2 = params;
        self
    }

    /// The clock for creation times and retention periods (tests inject a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The decoded state as of one version of the `state` file.
struct Snapshot {
    state: VaultState,
    files: FileMap,
    generation: u64,
    /// `(device, inode)` of the state file this came from.
    ident: (u64, u64),
    /// That file, kept open: while it is open its inode cannot be freed and reused, so a
    /// different `(device, inode)` at the path reliably means the file was replaced.
    _pin: fs::File,
}

/// The file vault's storage: the directory, the record key, the vault's id, the clock, the
/// key-generation randomness and the last state read (opaque; see [`FileVault`]).
pub struct FileStorage {
    dir: PathBuf,
    gcm: Gcm,
    vault_id: [u8; 16],
    clock: Arc<dyn Clock>,
    rng: Mutex<VaultRng>,
    snap: RwLock<Arc<Snapshot>>,
}

/// A software key vault persisted in a directory: the same keys, versions, enable/disable,
/// soft-delete with recover and purge protection, and per-identity access policies as
/// [`crate::provider::memory::InMemoryVault`], crash-safe, shareable between processes, with every private key
/// sealed at rest under a master key from a passphrase (Argon2id) or a key file.
///
/// Clones share one handle; any number of handles, in any number of processes, may open the
/// same directory. The handle is the vault *owner* ([`VaultAdmin`](crate::VaultAdmin)); [`FileVault::provider`]
/// gives a [`KeyProvider`](crate::KeyProvider) acting as one identity. The on-disk format is documented in
/// `docs/FILE_VAULT.md`.
///
/// ```
/// # tokio_test_block_on(async {
/// use byok::{KeyProvider, SecretString, VaultAdmin};
/// use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
/// use byok::provider::file::{FileVault, FileVaultOptions};
/// # let dir = std::env::temp_dir().join(format!("byok-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let options = FileVaultOptions::from_passphrase(SecretString::from("correct horse battery"));
/// let props = VaultProperties::new("contoso.vault.example", "westeurope", "t1");
/// let vault = FileVault::create(&dir, props, &options)?;
/// vault.create_key("cmk", KeySpec::Aes256).await?;
/// let app = Identity::new("app");
/// vault.set_access(&app, Permissions::CMK).await?;
/// let wrapped = vault.provider(&app).wrap_key("cmk", None, WrapAlgorithm::A256Kw, &[7u8; 32]).await?;
/// drop(vault);
///
/// // Later, or in another process:
/// let vault = FileVault::open(&dir, &options)?;
/// assert_eq!(vault.provider(&app).unwrap_key(&wrapped).await?.expose_secret(), &[7u8; 32]);
///
/// // A wrong passphrase is refused, never turned into garbage keys.
/// let wrong = FileVaultOptions::from_passphrase(SecretString::from("wrong"));
/// assert_eq!(FileVault::open(&dir, &wrong).unwrap_err().kind(), byok::ProviderErrorKind::Forbidden);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), byok::ProviderError>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// ```
pub type FileVault = SoftVault<FileStorage>;

/// A [`KeyProvider`](crate::KeyProvider) acting as one identity on a [`FileVault`]. It sees
/// changes made by other handles and processes on its next call.
pub type FileProvider = SoftProvider<FileStorage>;

impl fmt::Debug for FileVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileVault")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// An I/O error where nothing says the vault is damaged (creation, disk full, EIO).
fn unavailable(path: &Path, e: &io::Error) -> ProviderError {
    ProviderError::new(
        K::Unavailable,
        format!("file vault {}: {e}", path.display()),
    )
    .with_source(owned(e))
}

/// An owned copy of `e` to keep as a [`ProviderError`]'s cause: the OS error number where
/// there is one (so `raw_os_error()` still answers), else the kind and message.
fn owned(e: &io::Error) -> io::Error {
    e.raw_os_error()
        .map(io::Error::from_raw_os_error)
        .unwrap_or_else(|| io::Error::new(e.kind(), e.to_string()))
}

/// An I/O error on a file or directory of an existing vault: a missing entry is `Corrupted`
/// (naming it), so is one another user could have written (symbolic link, foreign owner,
/// group- or world-writable) and one too large to be a vault file; anything else is
/// `Unavailable`.
fn io_err(path: &Path, e: &io::Error) -> ProviderError {
    if e.kind() == io::ErrorKind::NotFound {
        return corrupted(path, "missing").with_source(owned(e));
    }
    if fsio::is_symlink_refusal(e) {
        return tampered(path, "is a symbolic link");
    }
    if let Some(u) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<fsio::Unsafe>())
    {
        return tampered(path, u);
    }
    if e.kind() == io::ErrorKind::InvalidData {
        return corrupted(path, e).with_source(owned(e));
    }
    unavailable(path, e)
}

fn tampered(path: &Path, why: impl fmt::Display) -> ProviderError {
    ProviderError::new(
        K::Corrupted,
        format!(
            "file vault file {} {why}: refusing a vault another user could have tampered with \
             (every file and directory must be owned by this process's user, not group- or \
             world-writable, and not a symbolic link)",
            path.display()
        ),
    )
}

fn corrupted(path: &Path, what: impl fmt::Display) -> ProviderError {
    ProviderError::new(
        K::Corrupted,
        format!("file vault file {} is corrupted: {what}", path.display()),
    )
}

fn malformed(path: &Path, m: Malformed) -> ProviderError {
    match m {
        Malformed::UnknownVersion(_) => ProviderError::new(
            K::Unsupported,
            format!("file vault file {}: {m}", path.display()),
        ),
        other => corrupted(path, other),
    }
}

fn invalid(msg: impl Into<String>) -> ProviderError {
    ProviderError::new(K::InvalidRequest, msg)
}

/// Refuses a string the file format cannot store (a `u16` byte length), before anything is
/// written: never truncated.
fn check_stored_len(what: &str, s: &str) -> Result<(), ProviderError> {
    if s.len() > format::MAX_STR_LEN {
        return Err(invalid(format!(
            "{what} is {} bytes long; a file vault stores at most {} bytes",
            s.len(),
            format::MAX_STR_LEN
        )));
    }
    Ok(())
}

/// Tells "no vault here" (`VaultNotFound`: the directory does not exist, or holds none of a
/// vault's entries) from a damaged or unsafe vault (`Corrupted`, naming the entry that is
/// missing, of the wrong type, a symbolic link, owned by another user or writable by others).
fn check_layout(dir: &Path) -> Result<(), ProviderError> {
    let not_found = |why: &str| {
        ProviderError::new(
            K::VaultNotFound,
            format!("no file vault at {}: {why}", dir.display()),
        )
    };
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_found("the directory does not exist"));
        }
        Err(e) => return Err(unavailable(dir, &e)),
        Ok(md) if !md.is_dir() => return Err(not_found("it is not a directory")),
        Ok(_) => {}
    }
    let entries = [META_FILE, STATE_FILE, format::LOCK_FILE, KEYS_DIR];
    let present: Vec<bool> = entries
        .iter()
        .map(|e| fs::symlink_metadata(dir.join(e)).is_ok())
        .collect();
    if !present.contains(&true) {
        return Err(not_found("it holds no vault.meta, state, lock or keys/"));
    }
    for (name, here) in entries.iter().zip(&present) {
        if !here {
            return Err(corrupted(&dir.join(name), "missing"));
        }
    }
    let uid = fsio::effective_uid(dir).map_err(|e| unavailable(dir, &e))?;
    fsio::check_dir(dir, true, uid).map_err(|e| io_err(dir, &e))?;
    let keys = dir.join(KEYS_DIR);
    fsio::check_dir(&keys, false, uid).map_err(|e| io_err(&keys, &e))?;
    Ok(())
}

/// The master key from the passphrase or key file, as `meta` says it was made.
fn derive_master(
    meta: &Meta,
    secret: &MasterSecret,
    dir: &Path,
) -> Result<Zeroizing<[u8; 32]>, ProviderError> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (meta.kdf, secret) {
        (Kdf::Argon2id { m_kib, t, p }, MasterSecret::Passphrase(pass)) => {
            crate::crypto::argon2id(
                pass.expose_secret().as_bytes(),
                &meta.salt,
                (m_kib, t, p),
                &mut out,
            )
            .map_err(|e| invalid(e.to_string()))?;
        }
        (Kdf::KeyFile, MasterSecret::KeyFile(path)) => {
            let bytes = Zeroizing::new(
                fs::read(path).map_err(|e| invalid(format!("key file {}: {e}", path.display())))?,
            );
            if bytes.len() != 32 {
                return Err(invalid(format!(
                    "key file {} must hold exactly 32 bytes, it holds {}",
                    path.display(),
                    bytes.len()
                )));
            }
            out.copy_from_slice(&bytes);
        }
        (Kdf::Argon2id { .. }, MasterSecret::KeyFile(_)) => {
            return Err(ProviderError::new(
                K::Forbidden,
                format!(
                    "file vault {} is protected by a passphrase, not a key file",
                    dir.display()
                ),
            ));
        }
        (Kdf::KeyFile, MasterSecret::Passphrase(_)) => {
            return Err(ProviderError::new(
                K::Forbidden,
                format!(
                    "file vault {} is protected by a key file, not a passphrase",
                    dir.display()
                ),
            ));
        }
    }
    Ok(out)
}

/// `(check key, sealing key)` from the master key, bound to the vault id.
fn subkeys(master: &[u8; 32], vault_id: &[u8; 16]) -> (Zeroizing<[u8; 32]>, AesKey) {
    let mut check = Zeroizing::new([0u8; 32]);
    hkdf_sha256(
        vault_id,
        master,
        &[b"byok file vault v1", b"check value"],
        &mut *check,
    );
    let mut seal = [0u8; 32];
    hkdf_sha256(
        vault_id,
        master,
        &[b"byok file vault v1", b"sealing key"],
        &mut seal,
    );
    let key = AesKey::from_bytes(seal);
    seal.zeroize();
    (check, key)
}

fn state_ident(md: &fs::Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

impl FileVault {
    /// Creates a new, empty vault in the directory `dir`, which must not exist or be empty.
    ///
    /// The vault is built in a private staging directory next to `dir` and renamed into place,
    /// so a crash during creation never leaves a half-made vault at `dir`. The directory is
    /// created with mode 0700 and every file with mode 0600.
    ///
    /// # Errors
    /// `Conflict` if `dir` exists and is not empty; `InvalidRequest` for an empty passphrase,
    /// out-of-range Argon2 parameters or an unreadable key file; `Unavailable` for I/O errors.
    pub fn create(
        dir: impl AsRef<Path>,
        props: VaultProperties,
        options: &FileVaultOptions,
    ) -> Result<Self, ProviderError> {
        crate::crypto::warm_up();
        let dir = dir.as_ref();
        let kdf = match &options.secret {
            MasterSecret::Passphrase(p) => {
                if p.expose_secret().is_empty() {
                    return Err(invalid("a file vault's passphrase must not be empty"));
                }
                let a = options.argon2.validate()?;
                Kdf::Argon2id {
                    m_kib: a.memory_kib,
                    t: a.iterations,
                    p: a.parallelism,
                }
            }
            MasterSecret::KeyFile(_) => Kdf::KeyFile,
        };
        check_stored_len("the vault host", &props.host)?;
        check_stored_len("the region", &props.region)?;
        check_stored_len("the tenant", &props.tenant)?;
        let meta = Meta::new(kdf);
        let master = derive_master(&meta, &options.secret, dir)?;
        let (check, seal) = subkeys(&master, &meta.vault_id);
        let gcm = Gcm::new(&seal);
        let name = dir
            .file_name()
            .ok_or_else(|| invalid(format!("{} cannot name a vault directory", dir.display())))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(mut entries) = fs::read_dir(dir)
            && entries.next().is_some()
        {
            return Err(ProviderError::new(
                K::Conflict,
                format!("{} exists and is not empty", dir.display()),
            ));
        }
        let mut rnd = [0u8; 8];
        crate::crypto::fill_random(&mut rnd);
        let staging = parent.join(format!(
            ".{}{TMP_PREFIX}{}",
            name.to_string_lossy(),
            crate::util::hex(&rnd)
        ));
        let built = (|| -> Result<(), ProviderError> {
            let io = |e: io::Error| unavailable(&staging, &e);
            fsio::mkdir_private(&staging).map_err(io)?;
            fsio::mkdir_private(&staging.join(KEYS_DIR)).map_err(io)?;
            let write = |name: &str, bytes: &[u8]| -> Result<(), ProviderError> {
                use std::io::Write;
                let mut f = fsio::create_private(&staging.join(name)).map_err(io)?;
                f.write_all(bytes).map_err(io)?;
                f.sync_all().map_err(io)
            };
            write(META_FILE, &meta.encode(&check))?;
            write(format::LOCK_FILE, b"")?;
            let state = format::write_state(
                &gcm,
                &meta.vault_id,
                1,
                &VaultState::new(props),
                &FileMap::new(),
            )
            .map_err(|m| malformed(&staging.join(STATE_FILE), m))?;
            write(STATE_FILE, &state)?;
            fsio::sync_dir(&staging.join(KEYS_DIR)).map_err(io)?;
            fsio::sync_dir(&staging).map_err(io)?;
            fs::rename(&staging, dir).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
                ) {
                    ProviderError::new(
                        K::Conflict,
                        format!("{} exists and is not empty", dir.display()),
                    )
                } else {
                    unavailable(dir, &e)
                }
            })?;
            fsio::sync_dir(&parent).map_err(|e| unavailable(&parent, &e))
        })();
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Self::finish_open(dir, gcm, meta.vault_id, options)
    }

    /// Opens the vault in `dir`, unlocking it with the options' passphrase or key file.
    ///
    /// Under the exclusive lock, removes temporary files left by a crash and key files that no
    /// state refers to (versions written by a change that crashed before its commit); then
    /// reads and authenticates the state and every key version.
    ///
    /// # Errors
    /// `VaultNotFound` if `dir` holds no vault; `Forbidden` for a wrong passphrase or key file
    /// (detected by the authenticated check value in `vault.meta`); `Corrupted`, naming the
    /// file, for any file that is truncated, altered or missing; `Unsupported` for a newer
    /// format version; `InvalidRequest` for an unreadable key file; `Unavailable` for I/O
    /// errors.
    pub fn open(dir: impl AsRef<Path>, options: &FileVaultOptions) -> Result<Self, ProviderError> {
        crate::crypto::warm_up();
        let dir = dir.as_ref();
        let meta_path = dir.join(META_FILE);
        check_layout(dir)?;
        let (_, bytes) =
            fsio::read_file(&meta_path, fsio::MAX_META_LEN).map_err(|e| io_err(&meta_path, &e))?;
        let meta = Meta::decode(&bytes).map_err(|m| malformed(&meta_path, m))?;
        let master = derive_master(&meta, &options.secret, dir)?;
        let (check, seal) = subkeys(&master, &meta.vault_id);
        if !meta.verify(&check) {
            return Err(ProviderError::new(
                K::Forbidden,
                format!(
                    "wrong passphrase or key file for file vault {}: the authenticated check \
                     value in vault.meta does not verify",
                    dir.display()
                ),
            ));
        }
        Self::finish_open(dir, Gcm::new(&seal), meta.vault_id, options)
    }

    fn finish_open(
        dir: &Path,
        gcm: Gcm,
        vault_id: [u8; 16],
        options: &FileVaultOptions,
    ) -> Result<Self, ProviderError> {
        let keys_dir = dir.join(KEYS_DIR);
        let _lock =
            fsio::lock_exclusive(dir).map_err(|e| io_err(&dir.join(format::LOCK_FILE), &e))?;
        fsio::remove_temp_files(dir).map_err(|e| io_err(dir, &e))?;
        fsio::remove_temp_files(&keys_dir).map_err(|e| io_err(&keys_dir, &e))?;
        let mut partial = FileStorage {
            dir: dir.to_path_buf(),
            gcm,
            vault_id,
            clock: Arc::clone(&options.clock),
            rng: Mutex::new(VaultRng::Os),
            snap: RwLock::new(Arc::new(Snapshot {
                state: VaultState::new(VaultProperties::new("", "", "")),
                files: FileMap::new(),
                generation: 0,
                ident: (u64::MAX, u64::MAX),
                _pin: fs::File::open(dir).map_err(|e| io_err(dir, &e))?,
            })),
        };
        let snap = Self::load(&partial, None)?;
        // Key files nothing refers to: versions whose change crashed before the state
        // committed (never acknowledged), or purged versions whose removal was interrupted.
        let referenced: HashSet<FileId> = snap
            .files
            .values()
            .flat_map(|m| m.values().copied())
            .collect();
        let mut removed = 0;
        for entry in fs::read_dir(&keys_dir).map_err(|e| io_err(&keys_dir, &e))? {
            let entry = entry.map_err(|e| io_err(&keys_dir, &e))?;
            if let Some(id) = FileId::from_file_name(&entry.file_name().to_string_lossy())
                && !referenced.contains(&id)
            {
                fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), &e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsio::sync_dir(&keys_dir).map_err(|e| io_err(&keys_dir, &e))?;
        }
        partial.snap = RwLock::new(Arc::new(snap));
        Ok(Self {
            inner: Arc::new(partial),
        })
    }

    /// [`create`](Self::create) on the crate's blocking pool: Argon2id and the fsyncs run off
    /// the caller's executor (runtime-agnostic: no runtime is needed to poll the future).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub async fn create_async(
        dir: impl Into<PathBuf>,
        props: VaultProperties,
        options: FileVaultOptions,
    ) -> Result<Self, ProviderError> {
        let dir = dir.into();
        crate::blocking::spawn(move || Self::create(&dir, props, &options)).await
    }

    /// [`open`](Self::open) on the crate's blocking pool: Argon2id runs off the caller's
    /// executor.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_async(
        dir: impl Into<PathBuf>,
        options: FileVaultOptions,
    ) -> Result<Self, ProviderError> {
        let dir = dir.into();
        crate::blocking::spawn(move || Self::open(&dir, &options)).await
    }

    /// The vault's directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    fn snap(&self) -> Arc<Snapshot> {
        Arc::clone(&self.inner.snap.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn state_path(&self) -> PathBuf {
        self.inner.dir.join(STATE_FILE)
    }

    /// Whether `snap` still describes the state file on disk (one `stat`).
    fn is_current(&self, snap: &Snapshot) -> Result<bool, ProviderError> {
        let path = self.state_path();
        match fs::metadata(&path) {
            Ok(md) => Ok(state_ident(&md) == snap.ident),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(corrupted(&path, "missing")),
            Err(e) => Err(io_err(&path, &e)),
        }
    }

    /// The current state: the cached snapshot unless another handle or process replaced the
    /// state file, in which case it is re-read under the shared lock.
    fn current(&self) -> Result<Arc<Snapshot>, ProviderError> {
        let snap = self.snap();
        if self.is_current(&snap)? {
            return Ok(snap);
        }
        let _lock = fsio::lock_shared(&self.inner.dir)
            .map_err(|e| io_err(&self.inner.dir.join(format::LOCK_FILE), &e))?;
        self.reload(&snap)
    }

    /// Re-reads the state (the caller holds a lock) and installs it.
    fn reload(&self, prev: &Snapshot) -> Result<Arc<Snapshot>, ProviderError> {
        let fresh = Arc::new(Self::load(&self.inner, Some(prev))?);
        let mut slot = self.inner.snap.write().unwrap_or_else(|p| p.into_inner());
        if fresh.generation < slot.generation {
            return Err(corrupted(
                &self.state_path(),
                format!(
                    "its generation went back from {} to {}: it was replaced by an older copy",
                    slot.generation, fresh.generation
                ),
            ));
        }
        *slot = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Reads and authenticates the state file and every key version it names that `prev`
    /// does not already hold (key files are immutable, so those are reused).
    fn load(inner: &FileStorage, prev: Option<&Snapshot>) -> Result<Snapshot, ProviderError> {
        let path = inner.dir.join(STATE_FILE);
        let (file, bytes) =
            fsio::read_file(&path, fsio::MAX_STATE_LEN).map_err(|e| io_err(&path, &e))?;
        let ident = state_ident(&file.metadata().map_err(|e| io_err(&path, &e))?);
        let rec = match format::read_state(&inner.gcm, &inner.vault_id, &bytes) {
            Ok(rec) => rec,
            Err(Malformed::Unauthentic) if prev.is_none() && Self::meta_is_foreign(inner) => {
                return Err(corrupted(
                    &inner.dir.join(META_FILE),
                    "it belongs to another vault (copied from one?): neither the state nor any \
                     key file authenticates under its vault id",
                ));
            }
            Err(m) => return Err(malformed(&path, m)),
        };
        let generation = rec.generation;
        let mut reuse: HashMap<FileId, Material> = HashMap::new();
        if let Some(prev) = prev {
            for (name, entry) in &prev.state.keys {
                for v in &entry.versions {
                    if let Some(id) = prev.files.get(name).and_then(|m| m.get(&v.version)) {
                        reuse.insert(*id, v.material.clone());
                    }
                }
            }
        }
        let (state, files) = format::assemble(
            rec,
            |name, v| {
                if let Some(m) = reuse.get(&v.file) {
                    return Ok(m.clone());
                }
                let kpath = inner.dir.join(v.file.rel_path());
                let (_, bytes) = fsio::read_file(&kpath, fsio::MAX_KEY_FILE_LEN).map_err(|e| {
                    match e.kind() {
                        io::ErrorKind::NotFound => {
                            corrupted(&kpath, "missing, yet the state refers to it")
                        }
                        _ => io_err(&kpath, &e),
                    }
                })?;
                let (rec, key_type) = format::read_key(&inner.gcm, &inner.vault_id, v.file, &bytes)
                    .map_err(|m| malformed(&kpath, m))?;
                // Names are case-insensitive (files of earlier versions may keep capitals).
                if !rec.name.eq_ignore_ascii_case(name)
                    || rec.version != v.version
                    || key_type != v.key_type
                {
                    return Err(corrupted(
                        &kpath,
                        format!(
                            "it holds {} version {} ({key_type}), the state expects {name} version {} \
                         ({})",
                            rec.name, rec.version, v.version, v.key_type
                        ),
                    ));
                }
                Ok(rec.material)
            },
            |clashing| {
                corrupted(
                    &path,
                    format!(
                        "it records keys whose names differ only in case ({clashing:?}); key \
                         names are case-insensitive: rename one with an earlier version of byok"
                    ),
                )
            },
        )?;
        Ok(Snapshot {
            state,
            files,
            generation,
            ident,
            _pin: file,
        })
    }

    /// Whether `vault.meta` rather than the state is the odd one out, once the state failed
    /// to authenticate: there are key files, and not one authenticates under the vault id of
    /// `vault.meta` either (a damaged state leaves the key files authentic).
    fn meta_is_foreign(inner: &FileStorage) -> bool {
        let Ok(entries) = fs::read_dir(inner.dir.join(KEYS_DIR)) else {
            return false;
        };
        let mut tried = 0;
        for entry in entries.flatten().take(64) {
            let Some(id) = FileId::from_file_name(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok((_, bytes)) = fsio::read_file(&entry.path(), fsio::MAX_KEY_FILE_LEN) else {
                continue;
            };
            tried += 1;
            if format::read_key(&inner.gcm, &inner.vault_id, id, &bytes).is_ok() {
                return false;
            }
        }
        tried > 0
    }

    /// Applies `change` to the newest state under the exclusive lock and persists it: new key
    /// versions first, then the state file, each atomically and durably. Returns only once
    /// the change is on disk.
    fn commit_change(&self, change: Change) -> Result<Option<KeyProperties>, ProviderError> {
        let dir = &self.inner.dir;
        let keys_dir = dir.join(KEYS_DIR);
        let _lock =
            fsio::lock_exclusive(dir).map_err(|e| io_err(&dir.join(format::LOCK_FILE), &e))?;
        let base = {
            let snap = self.snap();
            if self.is_current(&snap)? {
                snap
            } else {
                self.reload(&snap)?
            }
        };
        if let Change::SetAccess { identity, .. } = &change {
            check_stored_len("an identity name", identity.as_str())?;
        }
        let mut state = base.state.clone();
        let out = state.apply(change)?;
        let mut files = base.files.clone();
        for (name, entry) in &state.keys {
            let known = files.entry(name.clone()).or_default();
            for v in &entry.versions {
                if known.contains_key(&v.version) {
                    continue;
                }
                let id = FileId::random();
                let bytes = format::write_key(
                    &self.inner.gcm,
                    &self.inner.vault_id,
                    id,
                    name,
                    &v.version,
                    v.created,
                    &v.material,
                )
                .map_err(|m| invalid(format!("cannot store key {name}: {m}")))?;
                let rel = id.rel_path();
                let file_name = rel.rsplit('/').next().unwrap_or(&rel);
                fsio::write_atomic(&keys_dir, file_name, &bytes)
                    .map_err(|e| io_err(&dir.join(&rel), &e))?;
                known.insert(v.version.clone(), id);
            }
        }
        // Versions that are gone (purge, or delete without soft-delete): their files are
        // removed once the state no longer refers to them.
        let mut dropped = Vec::new();
        files.retain(|name, known| match state.keys.get(name) {
            None => {
                dropped.extend(known.values().copied());
                false
            }
            Some(entry) => {
                if known.len() != entry.versions.len() {
                    let live: HashSet<&str> =
                        entry.versions.iter().map(|v| v.version.as_str()).collect();
                    known.retain(|version, id| {
                        let keep = live.contains(version.as_str());
                        if !keep {
                            dropped.push(*id);
                        }
                        keep
                    });
                }
                true
            }
        });
        let generation = base.generation + 1;
        let bytes = format::write_state(
            &self.inner.gcm,
            &self.inner.vault_id,
            generation,
            &state,
            &files,
        )
        .map_err(|m| invalid(format!("cannot store the vault state: {m}")))?;
        let file = fsio::write_atomic(dir, STATE_FILE, &bytes)
            .map_err(|e| io_err(&self.state_path(), &e))?;
        let ident = state_ident(
            &file
                .metadata()
                .map_err(|e| io_err(&self.state_path(), &e))?,
        );
        *self.inner.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot {
            state,
            files,
            generation,
            ident,
            _pin: file,
        });
        // The change is committed. Purged versions' files go now (a crash here leaves them
        // unreferenced, and the next open removes them).
        if !dropped.is_empty() {
            for id in dropped {
                let p = dir.join(id.rel_path());
                if let Err(e) = fs::remove_file(&p)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    return Err(io_err(&p, &e));
                }
            }
            fsio::sync_dir(&keys_dir).map_err(|e| io_err(&keys_dir, &e))?;
        }
        Ok(out)
    }
}

impl Storage for FileStorage {}

impl Backend for FileStorage {
    const COMMIT_BLOCKS: bool = true;

    fn with_state<T>(
        vault: &FileVault,
        f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        f(&vault.current()?.state)
    }

    fn commit(vault: &FileVault, change: Change) -> Result<Option<KeyProperties>, ProviderError> {
        vault.commit_change(change)
    }

    fn generate(vault: &FileVault, spec: KeySpec) -> Result<Material, ProviderError> {
        // Outside the vault lock: RSA 4096 generation takes a while.
        let mut rng = vault.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        Material::generate(spec, &mut rng)
    }

    fn now(vault: &FileVault) -> SystemTime {
        vault.inner.clock.now()
    }
}
