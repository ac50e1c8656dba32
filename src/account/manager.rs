//! The manager and its builder; the per-account cells, their freshness against the store and
//! the change hints that invalidate them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use super::PlatformKey;
use super::live::{Cell, Flight, Learned, copy_error, locked_slots, nanos, wrapped_of};
use super::record::{
    AccountId, AccountRecord, AccountState, KeyRole, StateKind, WrappedAccountKey,
};
use super::{ALL_SLOTS, Slot};
use crate::audit::{AuditAction, AuditEvent, AuditOutcome, AuditSink, TracingAuditSink};
use crate::clock::{Clock, SystemClock};
use crate::envelope::Revoked;
use crate::error::Error;
use crate::provider::KeyResolver;
use crate::provider::{Identity, WrapAlgorithm};
use crate::store::{AccountStore, ChangeListener, InMemoryAccountStore, StoreChange};

/// How long a manager uses its copy of a record before re-reading the store, by default.
pub const DEFAULT_RECORD_MAX_AGE: Duration = Duration::from_secs(2);

/// How long a transient provider failure is shared with later callers, by default.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(1);

/// How many accounts [`AccountManager::monitor`] probes at once, by default.
pub const DEFAULT_MONITOR_CONCURRENCY: usize = 8;

pub(crate) struct Config {
    pub(crate) record_max_age: Duration,
    pub(crate) failure_window: Duration,
    pub(crate) monitor_concurrency: usize,
    pub(crate) probe_interval: Duration,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn AccountStore>,
    pub(crate) resolver: Arc<dyn KeyResolver>,
    pub(crate) platform: PlatformKey,
    pub(crate) infrastructure: Option<PlatformKey>,
    pub(crate) customer_algorithm: WrapAlgorithm,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Config,
    pub(crate) cells: RwLock<HashMap<AccountId, Arc<Cell>>>,
    hints: Arc<Hints>,
    /// Every change hint received (for accounts without a cell too): a record read that began
    /// before a hint is not trusted for a first load.
    hints_seen: AtomicU64,
}

/// The entry point: creates accounts, configures their keys, runs the lifecycle and encrypts
/// their data.
///
/// Cheap to clone (shared state). Within one process a revocation observed by any call is
/// seen by every later call at once, and key handles already given out stop working. Across
/// processes the record in the [`AccountStore`] is the authority: each manager re-reads an
/// account's record when its copy is older than
/// [`record_max_age`](AccountManagerBuilder::record_max_age), and at once when a notifying
/// store hints that it changed; state changes are committed with optimistic concurrency
/// against the state epoch they were observed under. See `docs/ACCOUNTS.md`, "Running several
/// replicas", for the bound this gives.
///
/// See `examples/lifecycle.rs` for a walk through the whole lifecycle.
#[derive(Clone)]
pub struct AccountManager {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for AccountManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountManager")
            .field("store", &self.inner.store)
            .field("platform_key", &self.inner.platform.name)
            .field("record_max_age", &self.inner.config.record_max_age)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AccountManager`].
#[derive(Debug)]
pub struct AccountManagerBuilder {
    platform: PlatformKey,
    resolver: Arc<dyn KeyResolver>,
    infrastructure: Option<PlatformKey>,
    store: Option<Arc<dyn AccountStore>>,
    audit: Option<Arc<dyn AuditSink>>,
    clock: Option<Arc<dyn Clock>>,
    customer_algorithm: WrapAlgorithm,
    record_max_age: Duration,
    failure_window: Duration,
    monitor_concurrency: usize,
    probe_interval: Duration,
}

impl AccountManagerBuilder {
    /// The infrastructure key for double encryption (independent of the platform key).
    pub fn infrastructure_key(mut self, mut key: PlatformKey) -> Self {
        key.role = KeyRole::Infrastructure;
        self.infrastructure = Some(key);
        self
    }

    /// Where records live (default: a fresh [`InMemoryAccountStore`]). Replicas of a service
    /// share one store.
    pub fn store(mut self, store: Arc<dyn AccountStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where audit events go (default: [`TracingAuditSink`]).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// The clock for cache ages, record ages and timestamps (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The algorithm used with customer keys (default `RSA-OAEP-256`; `RSA-OAEP` for HSMs
    /// without SHA-256 OAEP).
    pub fn customer_algorithm(mut self, algorithm: WrapAlgorithm) -> Self {
        self.customer_algorithm = algorithm;
        self
    }

    /// The longest this manager acts on its copy of an account's record without re-reading
    /// the store (default [`DEFAULT_RECORD_MAX_AGE`], 2 s; zero re-reads on every
    /// operation). This is the bound on how long a replica may go on serving after another
    /// replica committed a revocation when the store sends no change hints (with hints, the
    /// notification latency is the bound). A store that cannot be read when the copy is due
    /// fails the operation with [`Error::Store`] rather than serve past the bound.
    pub fn record_max_age(mut self, age: Duration) -> Self {
        self.record_max_age = age;
        self
    }

    /// How long a transient provider failure (outage, timeout) is handed to later callers of
    /// the same account key without contacting the provider again (default
    /// [`DEFAULT_FAILURE_WINDOW`], 1 s). Callers that wait on one unwrap always share its
    /// result, success or failure.
    pub fn failure_window(mut self, window: Duration) -> Self {
        self.failure_window = window;
        self
    }

    /// How many accounts one [`AccountManager::monitor`] run probes concurrently (default
    /// [`DEFAULT_MONITOR_CONCURRENCY`]; at least 1).
    pub fn monitor_concurrency(mut self, n: usize) -> Self {
        self.monitor_concurrency = n.max(1);
        self
    }

    /// Accounts probed (by any replica sharing the store) less than `interval` ago are skipped
    /// by [`AccountManager::monitor`] (default zero: probe every account on every run). Set it
    /// to the period at which each replica runs the monitor, so that N replicas probe each
    /// account about once per period rather than N times.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The manager. Subscribes to the store's change hints when it offers them, and makes
    /// the process's first random draw (≈ 60 ms under the aws-lc backend) now rather than on
    /// the first request.
    pub fn build(self) -> AccountManager {
        crate::crypto::warm_up();
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(InMemoryAccountStore::new()));
        let inner = Arc::new_cyclic(|weak| Inner {
            store: Arc::clone(&store),
            resolver: self.resolver,
            platform: self.platform,
            infrastructure: self.infrastructure,
            customer_algorithm: self.customer_algorithm,
            audit: self.audit.unwrap_or_else(|| Arc::new(TracingAuditSink)),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            config: Config {
                record_max_age: self.record_max_age,
                failure_window: self.failure_window,
                monitor_concurrency: self.monitor_concurrency,
                probe_interval: self.probe_interval,
            },
            cells: RwLock::new(HashMap::new()),
            hints: Arc::new(Hints(weak.clone())),
            hints_seen: AtomicU64::new(0),
        });
        let listener: Arc<dyn ChangeListener> = inner.hints.clone();
        store.subscribe(Arc::downgrade(&listener));
        AccountManager { inner }
    }
}

/// Receives the store's change hints: marks the named account's copy stale (the next
/// operation re-reads it).
struct Hints(Weak<Inner>);

impl ChangeListener for Hints {
    fn changed(&self, change: StoreChange) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.hints_seen.fetch_add(1, Ordering::AcqRel);
        let cells = inner.cells.read().unwrap_or_else(|p| p.into_inner());
        match change {
            StoreChange::Account { id, revision } => {
                // Another revision than the copy's: newer, or a new account under a reused id.
                if let Some(cell) = cells.get(&id)
                    && cell.read().record.revision != revision
                {
                    cell.invalidate();
                }
            }
            _ => cells.values().for_each(|c| c.invalidate()),
        }
    }
}

impl AccountManager {
    /// Starts a builder with the platform key and the resolver that reaches tenants' vaults.
    pub fn builder(platform: PlatformKey, resolver: Arc<dyn KeyResolver>) -> AccountManagerBuilder {
        AccountManagerBuilder {
            platform,
            resolver,
            infrastructure: None,
            store: None,
            audit: None,
            clock: None,
            customer_algorithm: WrapAlgorithm::RsaOaep256,
            record_max_age: DEFAULT_RECORD_MAX_AGE,
            failure_window: DEFAULT_FAILURE_WINDOW,
            monitor_concurrency: DEFAULT_MONITOR_CONCURRENCY,
            probe_interval: Duration::ZERO,
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    pub(crate) fn now_ns(&self) -> u64 {
        nanos(self.now())
    }

    pub(crate) fn after(&self, now: u64, d: Duration) -> u64 {
        now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(crate) fn emit(
        &self,
        account: &AccountId,
        identity: Option<&Identity>,
        key: Option<String>,
        action: AuditAction,
        outcome: AuditOutcome,
    ) {
        self.inner.audit.record(&AuditEvent {
            time: self.now(),
            identity: identity.cloned(),
            account: account.to_string(),
            key,
            action,
            outcome,
        });
    }

    pub(crate) fn emit_state_change(&self, rec: &AccountRecord, from: StateKind, to: StateKind) {
        self.emit(
            &rec.id,
            None,
            Self::record_key(rec),
            AuditAction::StateChange { from, to },
            AuditOutcome::Success,
        );
    }

    pub(crate) fn record_key(rec: &AccountRecord) -> Option<String> {
        rec.account_key.as_ref().map(Self::audit_key)
    }

    /// How audit events name the key of a wrapping: the customer key's URI with its version,
    /// or `platform:` / `infrastructure:` and the service key's name and version.
    pub(crate) fn audit_key(w: &WrappedAccountKey) -> String {
        match w.role {
            // The key's own identifier form (Key Vault URI, AWS ARN) with its version.
            KeyRole::Customer => {
                crate::KeyId::new(&w.vault, &w.wrapped.key_name, Some(&w.wrapped.key_version))
                    .map_or_else(
                        |_| {
                            format!(
                                "https://{}/keys/{}/{}",
                                w.vault, w.wrapped.key_name, w.wrapped.key_version
                            )
                        },
                        |k| k.to_string(),
                    )
            }
            role => format!(
                "{}:{}/{}",
                role.as_str(),
                w.wrapped.key_name,
                w.wrapped.key_version
            ),
        }
    }

    /// The account's cell, loading the record on first use.
    pub(crate) async fn cell(&self, id: &AccountId) -> Result<Arc<Cell>, Error> {
        if let Some(c) = self
            .inner
            .cells
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Arc::clone(c));
        }
        let hints = self.inner.hints_seen.load(Ordering::Acquire);
        let started = self.now_ns();
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::AccountNotFound(id.to_string()))?;
        // A hint that arrived during the read may concern this record: re-read before use.
        let valid = if self.inner.hints_seen.load(Ordering::Acquire) == hints {
            self.after(started, self.inner.config.record_max_age)
        } else {
            0
        };
        let mut cells = self.inner.cells.write().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::clone(
            cells
                .entry(id.clone())
                .or_insert_with(|| Arc::new(Cell::new(record, valid))),
        ))
    }

    /// The account's cell with a record copy younger than `record_max_age`.
    pub(crate) async fn fresh_cell(&self, id: &AccountId) -> Result<Arc<Cell>, Error> {
        let cell = self.cell(id).await?;
        self.ensure_fresh(&cell).await?;
        Ok(cell)
    }

    /// Re-reads the record if the copy is older than `record_max_age` or a hint arrived.
    pub(crate) async fn ensure_fresh(&self, cell: &Cell) -> Result<(), Error> {
        if self.now_ns() < cell.valid_until.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reload(cell).await
    }

    /// Re-reads the record from the store and merges it. Concurrent callers share one read —
    /// but only a read that began after they asked: a caller never acts on a read older than
    /// its own request (so `record_max_age` zero means a read per operation).
    ///
    /// # Errors
    /// [`Error::Store`] if the store cannot be read (the account's state is unchanged).
    pub(crate) async fn reload(&self, cell: &Cell) -> Result<(), Error> {
        let asked = cell.reloads.load(Ordering::Acquire);
        loop {
            let flight = {
                let mut live = cell.write();
                match &live.reload {
                    Some((seq, f)) => Err((*seq > asked, Arc::clone(f))),
                    None => {
                        let seq = cell.reloads.fetch_add(1, Ordering::AcqRel) + 1;
                        let f = Flight::new();
                        live.reload = Some((seq, Arc::clone(&f)));
                        Ok(f)
                    }
                }
            };
            match flight {
                // A read that began after this caller asked: share its result.
                Err((true, other)) => match other.wait().await {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(e)) => return Err(copy_error(&e)),
                    None => continue,
                },
                // An older read: wait for it to end, then read again.
                Err((false, older)) => {
                    older.wait().await;
                    continue;
                }
                Ok(flight) => {
                    let guard = ReloadGuard {
                        cell,
                        flight,
                        result: None,
                    };
                    let hints = cell.hints.load(Ordering::Acquire);
                    let started = self.now_ns();
                    let result = match self.inner.store.get(&cell.id).await {
                        Ok(stored) => {
                            let gone = stored.is_none();
                            self.merge(cell, stored);
                            if gone {
                                // Purged: a later account with this id is another account.
                                self.inner
                                    .cells
                                    .write()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .remove(&cell.id);
                            }
                            // Valid until the bound, unless a hint arrived since the read
                            // began (checked after the store, so none slips in between).
                            cell.valid_until.store(
                                self.after(started, self.inner.config.record_max_age),
                                Ordering::Release,
                            );
                            if cell.hints.load(Ordering::Acquire) != hints {
                                cell.valid_until.store(0, Ordering::Release);
                            }
                            Ok(())
                        }
                        Err(e) => Err(Arc::new(e)),
                    };
                    let mut guard = guard;
                    guard.result = Some(result.clone());
                    drop(guard);
                    return result.map_err(|e| copy_error(&e));
                }
            }
        }
    }

    /// Merges a record read from (or just written to) the store into the cell: a newer
    /// revision replaces the copy; a change of state or wrapping bumps the generation and
    /// drops (revoking) the keys the new state locks. An in-memory observation stays in force
    /// unless the record now agrees with it. `None` (the record is gone: a purged tombstone)
    /// counts as deleted.
    pub(crate) fn merge(&self, cell: &Cell, stored: Option<AccountRecord>) {
        let mut live = cell.write();
        let stored = match stored {
            Some(s) if another_incarnation(&live.record, &s) => {
                // Another account under a reused id (the old one's tombstone was purged):
                // nothing of the copy carries over.
                live.revoke(&ALL_SLOTS, Revoked::Deleted);
                live.observed = None;
                live.learned = (s.state.kind() == StateKind::KeyInaccessible).then(|| Learned {
                    epoch: s.epoch,
                    generation: cell.generation() + 1,
                    observed: false,
                });
                live.record = s;
                cell.bump();
                return;
            }
            Some(s) if s.revision > live.record.revision => s,
            Some(s) => {
                // The same revision can carry a newer probe stamp (no revision change).
                if s.revision == live.record.revision && s.last_probed > live.record.last_probed {
                    live.record.last_probed = s.last_probed;
                }
                return;
            }
            None => {
                if live.record.state.kind() == StateKind::Deleted {
                    return;
                }
                let mut gone = live.record.clone();
                gone.state = AccountState::Deleted { at: self.now() };
                gone.account_key = None;
                gone.platform_class_key = None;
                gone.infrastructure_key = None;
                gone
            }
        };
        let old = std::mem::replace(&mut live.record, stored);
        let rewrapped = ALL_SLOTS
            .iter()
            .any(|&s| wrapped_of(&old, s) != live.wrapped(s));
        for &s in &ALL_SLOTS {
            // Another account key under the same id (never by re-wrapping): drop its cache.
            let same_key = match (wrapped_of(&old, s), live.wrapped(s)) {
                (Some(a), Some(b)) => a.account_key_id == b.account_key_id,
                _ => false,
            };
            if !same_key {
                live.revoke(&[s], Revoked::Deleted);
            }
        }
        if rewrapped || old.state.kind() != live.record.state.kind() {
            let generation = cell.bump();
            live.failed = [None, None, None];
            if live.record.state.kind() == StateKind::KeyInaccessible
                && live.learned.is_none_or(|l| l.epoch != live.record.epoch)
            {
                live.learned = Some(Learned {
                    epoch: live.record.epoch,
                    generation,
                    observed: false,
                });
            }
        }
        if live
            .observed
            .as_ref()
            .is_some_and(|o| o.state.kind() == live.record.state.kind())
        {
            live.observed = None;
        }
        let state = live.state().kind();
        let why = match live.state() {
            AccountState::Deleted { .. } => Revoked::Deleted,
            AccountState::KeyInaccessible { kind, .. } => Revoked::KeyInaccessible(*kind),
            _ => Revoked::KeyInaccessible(None),
        };
        let locked = locked_slots(&live.record, state);
        live.revoke(locked, why);
    }

    /// The record as this process sees it (an in-memory observation applied).
    pub(crate) fn view(cell: &Cell) -> AccountRecord {
        let live = cell.read();
        let mut r = live.record.clone();
        r.state = live.state().clone();
        r
    }

    /// The key that wraps `slot` for the platform slots.
    pub(crate) fn platform_for(&self, slot: Slot) -> Result<&PlatformKey, Error> {
        match slot {
            Slot::Infrastructure => self.inner.infrastructure.as_ref().ok_or_else(|| {
                Error::InvalidInput(
                    "double encryption needs an infrastructure key: none is configured \
                         (AccountManagerBuilder::infrastructure_key)"
                        .into(),
                )
            }),
            _ => Ok(&self.inner.platform),
        }
    }
}

/// Whether `stored` is another account than `copy` under the same id (the old one deleted,
/// its tombstone purged, the id reused): deletion is final, and every account has its own
/// creation time and its own random account-level key ids.
fn another_incarnation(copy: &AccountRecord, stored: &AccountRecord) -> bool {
    let key_ids = |r: &AccountRecord| {
        r.platform_class_key
            .as_ref()
            .map(|w| w.account_key_id.clone())
    };
    copy.created != stored.created
        || (copy.state.kind() == StateKind::Deleted && stored.state.kind() != StateKind::Deleted)
        || matches!((key_ids(copy), key_ids(stored)), (Some(a), Some(b)) if a != b)
}

/// Ends a reload flight however its leader ends (a dropped future lets waiters retry):
/// clears the cell's flight first, then hands waiters the result.
struct ReloadGuard<'a> {
    cell: &'a Cell,
    flight: Arc<Flight<super::live::ReloadResult>>,
    result: Option<super::live::ReloadResult>,
}

impl Drop for ReloadGuard<'_> {
    fn drop(&mut self) {
        let mut live = self.cell.write();
        if live
            .reload
            .as_ref()
            .is_some_and(|(_, f)| Arc::ptr_eq(f, &self.flight))
        {
            live.reload = None;
        }
        drop(live);
        self.flight.finish(self.result.take());
    }
}
