//! Account keys as this layer receives them, and their prepared (scheduled) form.

use core::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use zeroize::Zeroize;

use super::format::{MAX_ID_LEN, WRAPPED_LEN};
use crate::crypto::{Gcm, Kek, fill_random, hkdf_sha256};
use crate::error::{Error, ProviderErrorKind};
use crate::secret::AesKey;

/// An account-level key as the account layer hands it over: the key's id, its version and
/// the unwrapped AES-256 key.
///
/// The same type serves both layers: the account key (layer 1) and, for double encryption,
/// the infrastructure account key (layer 2), which must be an independent key.
pub struct AccountKey {
    id: String,
    version: u32,
    key: AesKey,
}

impl AccountKey {
    /// An account key with id `id` (1 to 255 bytes of UTF-8) and version `version`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `id` is empty or longer than 255 bytes.
    pub fn new(id: impl Into<String>, version: u32, key: AesKey) -> Result<Self, Error> {
        let id = id.into();
        check_id("key id", &id)?;
        Ok(Self { id, version, key })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Salt of the HKDF that derives the sealed-field key from an account key.
const FIELD_KDF_SALT: &[u8] = b"byok sealed fields v1";

/// An account key ready for use: the AES key-wrap schedule and the sealed-field key are
/// computed once, so sealing an object costs no key schedule of the account key. Build it
/// when the account key is unwrapped and cache it with the account.
///
/// New objects' data keys are generated and wrapped eight at a time, their AES key wraps
/// interleaved; the batch lives in this value, each key is wiped from it as it is used, and the
/// rest when the value is dropped. A batch made by another process (a `fork` parent) is never
/// used. Threads are spread over four batches (each on its own cache lines), so threads sealing
/// on one account rarely meet. Keep one `PreparedKey` per account key and share it (`Arc`)
/// rather than rebuilding it.
pub struct PreparedKey {
    account_id: String,
    key_id: String,
    key_version: u32,
    pub(crate) kek: Kek,
    /// The sealed-field key `FK` (version-2 fields derive a key per value from it).
    pub(crate) field_key: AesKey,
    /// AES-256-GCM under `FK` itself: opens version-1 fields.
    pub(crate) fields: Gcm,
    ahead: [Shard; SHARDS],
    liveness: Liveness,
    /// `SHA-256("byok key fingerprint v1" || AK)`: tells two handles on the same key material
    /// apart from independent keys (never leaves the process).
    fingerprint: [u8; 32],
}

/// Why a key handle stopped working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// The account's customer key became inaccessible, with the kind of failure observed.
    KeyInaccessible(Option<ProviderErrorKind>),
    /// The account was deleted.
    Deleted,
}

/// Flag values: `LIVE`, `INACCESSIBLE + 1 + kind code` (or `INACCESSIBLE` for an unknown
/// kind), `DELETED` — the largest, so that deletion stays final under `fetch_max`.
const LIVE: u8 = 0;
const INACCESSIBLE: u8 = 1;
const DELETED: u8 = u8::MAX;

impl Revoked {
    fn flag(self) -> u8 {
        match self {
            Self::KeyInaccessible(None) => INACCESSIBLE,
            Self::KeyInaccessible(Some(kind)) => INACCESSIBLE + 1 + kind.code(),
            Self::Deleted => DELETED,
        }
    }
}

/// A revocation flag shared by a [`PreparedKey`] and every stream started from it: the account
/// layer sets it when the account's key is revoked or the account deleted, and every seal,
/// open and chunk checks it (one atomic load).
#[derive(Clone, Debug, Default)]
pub(crate) struct Liveness {
    account_id: Arc<str>,
    flag: Arc<AtomicU8>,
}

impl Liveness {
    /// A live flag for keys of `account_id`.
    pub(crate) fn new(account_id: &str) -> Self {
        Self {
            account_id: Arc::from(account_id),
            flag: Arc::new(AtomicU8::new(LIVE)),
        }
    }

    /// `Ok` while the key is live.
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] after a revocation, [`Error::AccountNotFound`] after a
    /// deletion.
    #[inline]
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.flag.load(Ordering::Acquire) {
            LIVE => Ok(()),
            DELETED => Err(Error::AccountNotFound(self.account_id.to_string())),
            flag => Err(Error::KeyInaccessible {
                account: self.account_id.to_string(),
                kind: flag
                    .checked_sub(INACCESSIBLE + 1)
                    .and_then(ProviderErrorKind::from_code),
                reason: "the key handle was revoked: the customer key became inaccessible".into(),
            }),
        }
    }

    pub(crate) fn revoke(&self, why: Revoked) {
        // Deletion is final: a later revocation does not turn it back into KeyInaccessible.
        self.flag.fetch_max(why.flag(), Ordering::AcqRel);
    }
}

/// How many data keys are generated and wrapped at once.
const DATA_KEY_BATCH: usize = 8;

/// Batches per prepared key: threads are spread over them (by a per-thread index), so threads
/// sealing on one account do not contend for one batch.
const SHARDS: usize = 4;

/// One batch on its own cache lines (no false sharing between threads).
#[repr(align(128))]
struct Shard(Mutex<DataKeys>);

impl Shard {
    fn new() -> Self {
        Self(Mutex::new(DataKeys {
            fork: crate::crypto::fork_guard(),
            #[cfg(test)]
            forked: false,
            left: 0,
            keys: [[0; 32]; DATA_KEY_BATCH],
            wrapped: [[0; WRAPPED_LEN]; DATA_KEY_BATCH],
        }))
    }
}

thread_local! {
    /// The batch this thread last got without waiting (threads start round robin and move on
    /// when they meet another thread, so concurrent threads settle on different batches).
    static SHARD: std::cell::Cell<usize> = std::cell::Cell::new({
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    });
}

/// This thread's preferred batch index.
fn shard() -> usize {
    SHARD.with(std::cell::Cell::get)
}

/// Fresh data keys, already wrapped, for the next objects sealed under one account key.
///
/// A forked child must never use its parent's keys: a fork guard (a `pthread_atfork` child
/// handler; one atomic load per key) discards the batch in the child — also in a child that
/// got its parent's pid, as one forked into a new PID namespace does (`tests/fork_rng.rs`),
/// where the `getpid()` comparison this replaced failed. (That comparison was also a system
/// call per object: ≈ 0.16 µs of a 1 KiB seal's ≈ 0.87 µs under aws-lc.)
struct DataKeys {
    /// Reports a fork since the last refill.
    fork: crate::crypto::ForkGuard,
    /// Set by tests to act as a forked child.
    #[cfg(test)]
    forked: bool,
    /// Keys `0..left` are unused.
    left: usize,
    keys: [[u8; 32]; DATA_KEY_BATCH],
    wrapped: [[u8; WRAPPED_LEN]; DATA_KEY_BATCH],
}

impl DataKeys {
    fn refill(&mut self, kek: &Kek) {
        fill_random(self.keys.as_flattened_mut());
        self.wrapped = kek.wrap_32_many(&self.keys);
        self.left = DATA_KEY_BATCH;
    }

    fn take(&mut self) -> (AesKey, [u8; WRAPPED_LEN]) {
        self.left -= 1;
        let i = self.left;
        let key = AesKey::from_bytes(self.keys[i]);
        self.keys[i].zeroize();
        (key, self.wrapped[i])
    }
}

impl Drop for DataKeys {
    fn drop(&mut self) {
        self.keys.zeroize();
    }
}

impl PreparedKey {
    /// Prepares `key` for the account `account_id` (1 to 255 bytes of UTF-8).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `account_id` is empty or longer than 255 bytes.
    pub fn new(account_id: &str, key: &AccountKey) -> Result<Self, Error> {
        Self::with_liveness(account_id, key, Liveness::new(account_id))
    }

    /// [`new`](Self::new) sharing `liveness` with other keys (the account layer gives every
    /// key of one account slot the same flag, so a revocation reaches all of them).
    pub(crate) fn with_liveness(
        account_id: &str,
        key: &AccountKey,
        liveness: Liveness,
    ) -> Result<Self, Error> {
        check_id("account id", account_id)?;
        crate::crypto::warm_up();
        let mut fk = [0u8; 32];
        hkdf_sha256(
            FIELD_KDF_SALT,
            key.key.expose_secret(),
            &[
                &[account_id.len() as u8],
                account_id.as_bytes(),
                &key.version.to_be_bytes(),
            ],
            &mut fk,
        );
        let field_key = AesKey::from_bytes(fk);
        fk.zeroize();
        Ok(Self {
            account_id: account_id.to_owned(),
            key_id: key.id.clone(),
            key_version: key.version,
            kek: Kek::new(&key.key),
            fields: Gcm::new(&field_key),
            field_key,
            ahead: std::array::from_fn(|_| Shard::new()),
            liveness,
            fingerprint: crate::crypto::sha256_parts(&[
                b"byok key fingerprint v1",
                key.key.expose_secret(),
            ]),
        })
    }

    /// `Ok` while the key has not been revoked by its account.
    ///
    /// # Errors
    /// As [`Liveness::check`].
    #[inline]
    pub(crate) fn check_live(&self) -> Result<(), Error> {
        self.liveness.check()
    }

    /// Whether `other` is this very key: the same handle, the same key id and version, or
    /// the same key material under another name (compared by fingerprint, in constant time).
    pub(crate) fn same_key(&self, other: &PreparedKey) -> bool {
        core::ptr::eq(self, other)
            || (self.key_id == other.key_id && self.key_version == other.key_version)
            || crate::crypto::ct_eq_32(&self.fingerprint, &other.fingerprint)
    }

    pub(crate) fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// A fresh data key for a new object, and the key wrapped under this account key.
    ///
    /// Keys come from a batch of [`DATA_KEY_BATCH`] generated by one CSPRNG draw and wrapped
    /// together, their AES-KW computations interleaved (eight wraps cost about 1.4 times one);
    /// each key is handed out once and wiped from the batch as it leaves. The batch is
    /// discarded after a `fork` (see [`DataKeys`]), and a caller that finds it in use
    /// by another thread gets a key of its own rather than waiting — so no caller ever blocks
    /// here, not even in a child forked while another thread held the batch.
    pub(crate) fn data_key(&self) -> (AesKey, [u8; WRAPPED_LEN]) {
        let preferred = shard();
        let mut found = None;
        for k in 0..SHARDS {
            let i = (preferred + k) % SHARDS;
            let batch = &self.ahead[i].0;
            match batch.try_lock() {
                Ok(guard) => {
                    found = Some((i, guard));
                    break;
                }
                Err(TryLockError::Poisoned(poisoned)) => {
                    // A panic (the OS RNG failing) interrupted a refill: start a new batch.
                    batch.clear_poison();
                    let mut guard = poisoned.into_inner();
                    guard.left = 0;
                    found = Some((i, guard));
                    break;
                }
                // Another thread is there: try the next batch.
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let Some((i, mut ahead)) = found else {
            // Every batch is busy: a key of its own.
            let mut key = [0u8; 32];
            fill_random(&mut key);
            let wrapped = self.kek.wrap_32(&key);
            let dk = AesKey::from_bytes(key);
            key.zeroize();
            return (dk, wrapped);
        };
        if i != preferred {
            SHARD.with(|s| s.set(i));
        }
        // The guard sees every check (it is evaluated first), so that the fork it reports is
        // the one this refill answers.
        let forked = ahead.fork.detected_fork();
        #[cfg(test)]
        let forked = forked | std::mem::take(&mut ahead.forked);
        if forked || ahead.left == 0 {
            ahead.refill(&self.kek);
        }
        ahead.take()
    }

    /// The account this key belongs to.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key's version.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedKey")
            .field("account_id", &self.account_id)
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn prepared() -> PreparedKey {
        let ak = AccountKey::new("ak", 1, AesKey::from_bytes([7; 32])).unwrap();
        PreparedKey::new("acct", &ak).unwrap()
    }

    /// The key unwraps from what was handed out with it.
    fn assert_pair(key: &PreparedKey, (dk, wrapped): &(AesKey, [u8; WRAPPED_LEN])) {
        let back = key.kek.unwrap_32(wrapped).unwrap();
        assert_eq!(back.expose_secret(), dk.expose_secret());
    }

    #[test]
    fn data_keys_are_distinct_wrapped_and_wiped_from_the_batch() {
        let key = prepared();
        let mut seen = HashSet::new();
        for n in 0..5 * DATA_KEY_BATCH + 3 {
            let pair = key.data_key();
            assert_pair(&key, &pair);
            assert!(seen.insert(*pair.0.expose_secret()), "key {n} repeated");
            let ahead = key.ahead[shard()].0.lock().unwrap();
            assert_eq!(ahead.left, DATA_KEY_BATCH - 1 - n % DATA_KEY_BATCH);
            // Handed-out keys are no longer in memory; the unused ones are.
            for (i, k) in ahead.keys.iter().enumerate() {
                assert_eq!(*k == [0; 32], i >= ahead.left, "slot {i} after key {n}");
            }
        }
    }

    #[test]
    fn a_batch_from_another_process_is_discarded() {
        let key = prepared();
        let _ = key.data_key();
        let next = {
            let mut ahead = key.ahead[shard()].0.lock().unwrap();
            // As a forked child sees its parent's batch: the same keys, and a fork reported.
            ahead.forked = true;
            ahead.keys[..ahead.left].to_vec()
        };
        let pair = key.data_key();
        assert_pair(&key, &pair);
        assert!(!next.contains(pair.0.expose_secret()));
        let ahead = key.ahead[shard()].0.lock().unwrap();
        assert!(!ahead.forked);
        assert_eq!(ahead.left, DATA_KEY_BATCH - 1);
    }

    #[test]
    fn a_busy_or_poisoned_batch_still_gives_fresh_keys() {
        let key = prepared();
        let first = key.data_key();
        let before = key.ahead[shard()].0.lock().unwrap().keys;
        {
            // Other threads hold every batch: the caller gets a key of its own.
            let _held: Vec<_> = key.ahead.iter().map(|b| b.0.lock().unwrap()).collect();
            std::thread::scope(|s| {
                let pair = s.spawn(|| key.data_key()).join().unwrap();
                assert_pair(&key, &pair);
                assert!(!before.contains(pair.0.expose_secret()));
                assert_ne!(pair.0.expose_secret(), first.0.expose_secret());
            });
        }
        assert_eq!(
            key.ahead[shard()].0.lock().unwrap().keys,
            before,
            "batch untouched"
        );

        // A panic while holding the batch poisons it; the next call starts a new batch.
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let _g: Vec<_> = key.ahead.iter().map(|b| b.0.lock().unwrap()).collect();
                panic!("poison");
            })
            .join()
        });
        assert!(r.is_err() && key.ahead[shard()].0.is_poisoned());
        let pair = key.data_key();
        assert_pair(&key, &pair);
        assert!(!before.contains(pair.0.expose_secret()));
        assert!(!key.ahead[shard()].0.is_poisoned());
        assert_eq!(
            key.ahead[shard()].0.lock().unwrap().left,
            DATA_KEY_BATCH - 1
        );
    }

    #[test]
    fn threads_sharing_a_key_never_get_the_same_data_key() {
        let key = prepared();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..2000)
                            .map(|_| {
                                let pair = key.data_key();
                                assert_pair(&key, &pair);
                                *pair.0.expose_secret()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let distinct: HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
