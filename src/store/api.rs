//! The account store interface, its change hints, and the in-memory store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, RwLock, Weak};
use std::time::SystemTime;

use async_trait::async_trait;

use crate::account::{AccountId, AccountRecord, AccountState};
use crate::error::Error;

/// A hint that account records changed, delivered by a store that can notify
/// ([`AccountStore::subscribe`]). Hints are never data: the manager re-reads the record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChange {
    /// The record of `id` was committed at `revision` (or later).
    Account {
        /// The account.
        id: AccountId,
        /// The revision committed.
        revision: u64,
    },
    /// Changes may have been missed (the notification channel was down): every record may
    /// have changed.
    Unknown,
}

/// Receives [`StoreChange`] hints. Called on the store's own thread or task: return quickly
/// (the manager only marks its copy stale).
pub trait ChangeListener: Send + Sync {
    /// One hint.
    fn changed(&self, change: StoreChange);
}

/// Persistence for account records, with optimistic concurrency: an update names the revision
/// it was based on and fails with [`Error::Conflict`] if the stored record moved on — never a
/// lost update.
///
/// The record in the store is the authority for an account's key source, wrapping and state
/// when several replicas share it; each manager's copy has a bounded age
/// (`AccountManagerBuilder::record_max_age`) and is re-read at once on a change hint from
/// [`subscribe`](Self::subscribe).
///
/// Errors: storage failures are [`Error::Store`] (transient, 503); they never change an
/// account's state.
#[async_trait]
pub trait AccountStore: Send + Sync + fmt::Debug {
    /// The record of `id`, if any (deleted accounts' tombstones included).
    ///
    /// # Errors
    /// [`Error::Store`] for storage failures.
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error>;

    /// Every record, tombstones included, in id order.
    ///
    /// # Errors
    /// [`Error::Store`].
    async fn list(&self) -> Result<Vec<AccountRecord>, Error>;

    /// Up to `limit` records with ids after `after` (all from the start for `None`), in id
    /// order: page through a large store without holding it in memory. The default reads
    /// [`list`](Self::list) and slices it.
    ///
    /// # Errors
    /// [`Error::Store`].
    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.id > *a))
            .take(limit)
            .collect())
    }

    /// Stores a new record.
    ///
    /// # Errors
    /// [`Error::Conflict`] if a record with that id exists (a tombstone included, until
    /// [`purge_deleted`](Self::purge_deleted) removes it); [`Error::Store`].
    async fn create(&self, record: &AccountRecord) -> Result<(), Error>;

    /// Replaces the record whose stored revision is `record.revision - 1`.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the stored revision differs (a concurrent update won);
    /// [`Error::AccountNotFound`] if there is no such record; [`Error::Store`].
    async fn update(&self, record: &AccountRecord) -> Result<(), Error>;

    /// As [`update`](Self::update), and refused with [`Error::Conflict`] as well when the
    /// stored probe time (`last_probed`, [`record_probe`](Self::record_probe)) is later than
    /// `after`. The manager commits a revocation this way: only if no successful probe began
    /// after the operation that observed the failure. It must be one atomic conditional
    /// write (`… WHERE id = $1 AND revision = $2 AND (last_probed IS NULL OR last_probed <=
    /// $3)`), so that a probe by another replica cannot slip between the check and the write;
    /// a wrapper around another store forwards it. The conformance suite checks it.
    ///
    /// # Errors
    /// As [`update`](Self::update).
    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error>;

    /// Ids of the accounts whose account key is wrapped by the customer key `name` at
    /// `version` in `vault` ([`WrappedAccountKey::is_customer_key`](crate::account::WrappedAccountKey::is_customer_key)).
    /// Tombstones hold no wrapping and never match. The default scans
    /// [`list`](Self::list); a database answers from an index.
    ///
    /// # Errors
    /// [`Error::Store`].
    async fn accounts_using(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<AccountId>, Error> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| {
                r.account_key
                    .as_ref()
                    .is_some_and(|w| w.is_customer_key(vault, name, version))
            })
            .map(|r| r.id)
            .collect())
    }

    /// Records that `id` was probed at `at`, without a revision change (so concurrent probes
    /// by several replicas never conflict with each other or with real updates). Monitors skip
    /// accounts probed recently by any replica. The default records nothing.
    ///
    /// # Errors
    /// [`Error::Store`]. A missing account is not an error.
    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        let _ = (id, at);
        Ok(())
    }

    /// Removes the tombstones of accounts deleted before `before`, so their ids can be
    /// reused; returns how many were removed. The default removes nothing.
    ///
    /// # Errors
    /// [`Error::Store`].
    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        let _ = before;
        Ok(0)
    }

    /// Registers `listener` for change hints. Returns `false` (the default) when the store
    /// cannot notify: managers then rely on `record_max_age` alone. A store that notifies
    /// sends a hint for every committed `create`/`update` (its own and other processes'),
    /// and [`StoreChange::Unknown`] whenever hints may have been lost (e.g. after its
    /// listening connection reconnects). The listener is held weakly: it stops receiving
    /// when dropped.
    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        let _ = listener;
        false
    }
}

/// The conflict of [`AccountStore::update_unless_probed_after`].
pub(crate) fn probed_after(id: &AccountId) -> Error {
    Error::Conflict(format!(
        "account {id} was probed successfully after the change was observed"
    ))
}

/// An [`AccountStore`] in process memory: the demo default, and the store for tests with
/// several managers in one process (it notifies every subscribed manager of each commit).
#[derive(Default)]
pub struct InMemoryAccountStore {
    records: RwLock<BTreeMap<AccountId, AccountRecord>>,
    listeners: Mutex<Vec<Weak<dyn ChangeListener>>>,
}

impl fmt::Debug for InMemoryAccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryAccountStore")
            .finish_non_exhaustive()
    }
}

impl InMemoryAccountStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn notify(&self, id: &AccountId, revision: u64) {
        let listeners: Vec<_> = {
            let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            l.retain(|w| w.strong_count() > 0);
            l.iter().filter_map(Weak::upgrade).collect()
        };
        for l in listeners {
            l.changed(StoreChange::Account {
                id: id.clone(),
                revision,
            });
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<AccountId, AccountRecord>> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<AccountId, AccountRecord>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AccountStore for InMemoryAccountStore {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        Ok(self.map().get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        Ok(self.map().values().cloned().collect())
    }

    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        use std::ops::Bound;
        let m = self.map();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(m.range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        {
            let mut m = self.map_mut();
            if m.contains_key(&record.id) {
                return Err(Error::Conflict(format!(
                    "account {} already exists",
                    record.id
                )));
            }
            m.insert(record.id.clone(), record.clone());
        }
        self.notify(&record.id, record.revision);
        Ok(())
    }

    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.update_guarded(record, None)
    }

    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.update_guarded(record, Some(after))
    }

    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        if let Some(r) = self.map_mut().get_mut(id) {
            r.last_probed = Some(r.last_probed.map_or(at, |p| p.max(at)));
        }
        Ok(())
    }

    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        let mut m = self.map_mut();
        let n = m.len();
        m.retain(|_, r| !matches!(r.state, AccountState::Deleted { at } if at < before));
        Ok((n - m.len()) as u64)
    }

    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
        true
    }
}

impl InMemoryAccountStore {
    /// The compare-and-swap of `update`, with the probe-time guard when `after` is given.
    fn update_guarded(
        &self,
        record: &AccountRecord,
        after: Option<SystemTime>,
    ) -> Result<(), Error> {
        {
            let mut m = self.map_mut();
            let stored = m
                .get_mut(&record.id)
                .ok_or_else(|| Error::AccountNotFound(record.id.to_string()))?;
            if let Some(after) = after
                && stored.last_probed.is_some_and(|p| p > after)
            {
                return Err(probed_after(&record.id));
            }
            if stored.revision + 1 != record.revision {
                return Err(Error::Conflict(format!(
                    "account {} is at revision {}, the update was based on {}",
                    record.id,
                    stored.revision,
                    record.revision.saturating_sub(1)
                )));
            }
            // The probe stamp never moves back (a commit carries its writer's older copy).
            let last_probed = stored.last_probed.max(record.last_probed);
            *stored = record.clone();
            stored.last_probed = last_probed;
        }
        self.notify(&record.id, record.revision);
        Ok(())
    }
}
