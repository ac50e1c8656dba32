//! The in-process view of one account: the record copy, observations not yet persisted, the
//! account-key cache and the single flights that share one provider call between callers.
//!
//! Ordering rules (see `docs/ACCOUNTS.md`, "Running several replicas"):
//!
//! - `generation` is this process's order on observations: every change of the effective state or of
//!   a wrapping bumps it. A result computed by an operation that began under an older `generation`
//!   never fills the cache and never restores `Active`.
//! - `record.epoch` is the fleet's order: a state change is committed only against the epoch
//!   its observation began under (see `commit.rs`).
//! - `observed` holds a state change seen here but not yet in `record` (a revocation is
//!   applied in memory first, so every later call in this process sees it at once). It is
//!   cleared only by its own resolution (persisted, or found stale against the store) or by an
//!   observation that began after it — never by a reload.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::Slot;
use super::policy::Operation;
use super::record::{AccountId, AccountRecord, AccountState, StateKind, WrappedAccountKey};
use crate::envelope::{Liveness, PreparedKey, Revoked};
use crate::error::Error;
use crate::secret::AesKey;

/// An unwrapped account-level key: the raw key (for re-wrapping) and its prepared form (key
/// schedules computed once, for the envelope). Both wipe themselves when the last reference
/// goes.
#[derive(Clone)]
pub(crate) struct Unwrapped {
    pub(crate) raw: Arc<AesKey>,
    pub(crate) prepared: Arc<PreparedKey>,
}

pub(crate) struct Cached {
    pub(crate) keys: Unwrapped,
    /// Clock time (ns) after which the key must be unwrapped again.
    pub(crate) expires: u64,
}

/// A state change observed in this process and not (yet) in the record.
pub(crate) struct Observed {
    pub(crate) state: AccountState,
    /// `Cell::generation` right after it was observed.
    pub(crate) generation: u64,
}

/// When this process learned of a `KeyInaccessible` record: a probe that began at or after
/// `generation` began after the revocation, as far as this process can tell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Learned {
    /// The record's epoch.
    pub(crate) epoch: u64,
    pub(crate) generation: u64,
    /// Observed here (a failure of the key), not only read from the store.
    pub(crate) observed: bool,
}

/// A transient failure shared with callers that arrive shortly after it.
pub(crate) struct Failure {
    pub(crate) until: u64,
    pub(crate) error: Arc<Error>,
}

pub(crate) struct Live {
    /// The record as last read from or written to the store (the authority's copy).
    pub(crate) record: AccountRecord,
    pub(crate) observed: Option<Observed>,
    pub(crate) cache: [Option<Cached>; 3],
    pub(crate) flights: [Option<Arc<Flight<KeyResult>>>; 3],
    pub(crate) failed: [Option<Failure>; 3],
    /// The record re-read under way: its sequence number and flight.
    pub(crate) reload: Option<(u64, Arc<Flight<ReloadResult>>)>,
    /// What this process knows of the revocation in the record: see [`Learned`].
    pub(crate) learned: Option<Learned>,
    /// The revocation flag shared by every key of each slot handed out since the slot's last
    /// revocation.
    pub(crate) liveness: [Liveness; 3],
}

pub(crate) type KeyResult = Result<Unwrapped, Arc<Error>>;
pub(crate) type ReloadResult = Result<(), Arc<Error>>;

impl Live {
    /// The state every gate uses: an in-memory observation, else the record's.
    pub(crate) fn state(&self) -> &AccountState {
        self.observed
            .as_ref()
            .map_or(&self.record.state, |o| &o.state)
    }

    /// The wrapping of `slot` in the record.
    pub(crate) fn wrapped(&self, slot: Slot) -> Option<&WrappedAccountKey> {
        wrapped_of(&self.record, slot)
    }

    /// Drops the cached keys of `slots` and revokes every key of those slots ever handed out
    /// (they share the slot's flag); keys unwrapped from now on get a fresh flag.
    pub(crate) fn revoke(&mut self, slots: &[Slot], why: Revoked) {
        for &s in slots {
            self.cache[s as usize] = None;
            self.failed[s as usize] = None;
            let fresh = Liveness::new(self.record.id.as_str());
            std::mem::replace(&mut self.liveness[s as usize], fresh).revoke(why);
        }
    }

    /// The state gate every operation passes (see [`gate`]).
    pub(crate) fn gate(&self, op: Operation, slot: Option<Slot>) -> Result<(), Error> {
        gate(&self.record, self.state(), op, slot)
    }

    /// A fresh cached key of `slot` at clock time `now`.
    pub(crate) fn cached(&self, slot: Slot, now: u64) -> Option<&Unwrapped> {
        self.cache[slot as usize]
            .as_ref()
            .filter(|c| now < c.expires)
            .map(|c| &c.keys)
    }
}

/// The state gate every operation passes. `slot` is the key the operation uses (`None` for
/// operations that use no key): with the policy's `platform_classes_survive_revocation`, data
/// under the platform-class key stays available while the customer key is inaccessible.
pub(crate) fn gate(
    rec: &AccountRecord,
    state: &AccountState,
    op: Operation,
    slot: Option<Slot>,
) -> Result<(), Error> {
    // Data outside the customer key, where the policy keeps it available.
    let uncovered =
        slot == Some(Slot::PlatformClass) && rec.policy.platform_classes_survive_revocation;
    match state {
        AccountState::Deleted { .. } => Err(Error::AccountNotFound(rec.id.to_string())),
        AccountState::KeyInaccessible { reason, kind, .. }
            if !(rec.policy.allows_while_inaccessible(op) || uncovered) =>
        {
            Err(Error::KeyInaccessible {
                account: rec.id.to_string(),
                kind: *kind,
                reason: reason.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// What the object hot path reads of an account, published after every change of [`Live`]
/// and read without a lock (no shared write per object): the record, the effective state and
/// the cached keys.
pub(crate) struct Snapshot {
    pub(crate) record: AccountRecord,
    pub(crate) state: AccountState,
    cache: [Option<(Arc<PreparedKey>, u64)>; 3],
}

impl Snapshot {
    fn of(live: &Live) -> Self {
        Self {
            record: live.record.clone(),
            state: live.state().clone(),
            cache: std::array::from_fn(|i| {
                live.cache[i]
                    .as_ref()
                    .map(|c| (Arc::clone(&c.keys.prepared), c.expires))
            }),
        }
    }

    /// A fresh cached key of `slot` at clock time `now`.
    pub(crate) fn cached(&self, slot: Slot, now: u64) -> Option<&Arc<PreparedKey>> {
        self.cache[slot as usize]
            .as_ref()
            .filter(|(_, expires)| now < *expires)
            .map(|(k, _)| k)
    }
}

/// The write access to [`Live`]: publishes a new [`Snapshot`] when it ends (still under the
/// lock, so snapshots are published in the order of the changes).
pub(crate) struct LiveWrite<'a> {
    guard: RwLockWriteGuard<'a, Live>,
    snapshot: &'a ArcSwap<Snapshot>,
}

impl std::ops::Deref for LiveWrite<'_> {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.guard
    }
}

impl std::ops::DerefMut for LiveWrite<'_> {
    fn deref_mut(&mut self) -> &mut Live {
        &mut self.guard
    }
}

impl Drop for LiveWrite<'_> {
    fn drop(&mut self) {
        self.snapshot.store(Arc::new(Snapshot::of(&self.guard)));
    }
}

/// The wrapping of `slot` in `rec`.
pub(crate) fn wrapped_of(rec: &AccountRecord, slot: Slot) -> Option<&WrappedAccountKey> {
    match slot {
        Slot::Account => rec.account_key.as_ref(),
        Slot::PlatformClass => rec.platform_class_key.as_ref(),
        Slot::Infrastructure => rec.infrastructure_key.as_ref(),
    }
}

/// The slots a state makes unusable: all after deletion; after a revocation the account key,
/// and the platform-class key too unless the policy keeps those classes available.
pub(crate) fn locked_slots(rec: &AccountRecord, state: StateKind) -> &'static [Slot] {
    match state {
        StateKind::Deleted => &[Slot::Account, Slot::PlatformClass, Slot::Infrastructure],
        StateKind::KeyInaccessible if rec.policy.platform_classes_survive_revocation => {
            &[Slot::Account]
        }
        StateKind::KeyInaccessible => &[Slot::Account, Slot::PlatformClass],
        StateKind::Active => &[],
    }
}

/// One account in this process.
pub(crate) struct Cell {
    pub(crate) id: AccountId,
    live: RwLock<Live>,
    /// This process's order on observations (see the module docs).
    pub(crate) generation: AtomicU64,
    /// Clock time (ns) until which the record copy may be used without re-reading the store;
    /// 0 forces a re-read.
    pub(crate) valid_until: AtomicU64,
    /// Change hints received; a reload that began before a hint does not mark the copy valid.
    pub(crate) hints: AtomicU64,
    /// Serialises this process's state-changing commits of the account.
    pub(crate) commits: AsyncLock,
    /// The hot path's lock-free view of `live`.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Record re-reads started (their sequence numbers).
    pub(crate) reloads: AtomicU64,
}

impl Cell {
    pub(crate) fn new(record: AccountRecord, valid_until: u64) -> Self {
        let learned = (record.state.kind() == StateKind::KeyInaccessible).then_some(Learned {
            epoch: record.epoch,
            generation: 0,
            observed: false,
        });
        let liveness = std::array::from_fn(|_| Liveness::new(record.id.as_str()));
        let live = Live {
            record,
            liveness,
            observed: None,
            cache: [None, None, None],
            flights: [None, None, None],
            failed: [None, None, None],
            reload: None,
            learned,
        };
        Self {
            id: live.record.id.clone(),
            snapshot: ArcSwap::from_pointee(Snapshot::of(&live)),
            live: RwLock::new(live),
            generation: AtomicU64::new(0),
            valid_until: AtomicU64::new(valid_until),
            hints: AtomicU64::new(0),
            commits: AsyncLock::default(),
            reloads: AtomicU64::new(0),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> LiveWrite<'_> {
        LiveWrite {
            guard: self.live.write().unwrap_or_else(|p| p.into_inner()),
            snapshot: &self.snapshot,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Bumps the generation (call with the write lock held); returns the new value.
    pub(crate) fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Forces a re-read of the record before the next operation.
    pub(crate) fn invalidate(&self) {
        self.hints.fetch_add(1, Ordering::AcqRel);
        self.valid_until.store(0, Ordering::Release);
    }
}

/// Nanoseconds since the Unix epoch (0 before it), saturating.
pub(crate) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A copy of an error for the callers that share one flight's or window's result.
pub(crate) fn copy_error(e: &Error) -> Error {
    match e {
        Error::Decryption => Error::Decryption,
        Error::Provider(p) => Error::Provider(p.clone()),
        Error::PlatformKey(p) => Error::PlatformKey(p.clone()),
        Error::InvalidInput(s) => Error::InvalidInput(s.clone()),
        Error::InvalidKeyId { input, reason } => Error::InvalidKeyId {
            input: input.clone(),
            reason,
        },
        Error::UnsupportedAlgorithm(s) => Error::UnsupportedAlgorithm(s.clone()),
        Error::AccountNotFound(s) => Error::AccountNotFound(s.clone()),
        Error::Conflict(s) => Error::Conflict(s.clone()),
        Error::KeyInaccessible {
            account,
            kind,
            reason,
        } => Error::KeyInaccessible {
            account: account.clone(),
            kind: *kind,
            reason: reason.clone(),
        },
        Error::Unavailable { account, reason } => Error::Unavailable {
            account: account.clone(),
            reason: reason.clone(),
        },
        Error::Policy { policy, violation } => Error::Policy {
            policy: policy.clone(),
            violation: violation.clone(),
        },
        Error::Format(f) => Error::Format(*f),
        Error::Store { message, source } => Error::Store {
            message: message.clone(),
            source: source.clone(),
        },
        // `io::Error` is not `Clone`: the copy keeps the kind and the message.
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
    }
}

/// One piece of work (a provider unwrap, a record reload) that other callers wait for and
/// whose result they share — success or failure. Runtime-agnostic: wakers, no executor.
pub(crate) struct Flight<T>(Mutex<FlightState<T>>);

struct FlightState<T> {
    done: bool,
    result: Option<T>,
    wakers: Vec<Waker>,
}

impl<T: Clone> Flight<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(FlightState {
            done: false,
            result: None,
            wakers: Vec::new(),
        })))
    }

    /// Ends the flight with `result` (`None`: the leader was dropped; waiters start over).
    pub(crate) fn finish(&self, result: Option<T>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.done {
            return;
        }
        s.done = true;
        s.result = result;
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }

    /// Waits for the leader's result.
    pub(crate) fn wait(self: &Arc<Self>) -> FlightWait<T> {
        FlightWait(Arc::clone(self))
    }
}

pub(crate) struct FlightWait<T>(Arc<Flight<T>>);

impl<T: Clone> Future for FlightWait<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.done {
            Poll::Ready(s.result.clone())
        } else {
            if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                s.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

/// A minimal runtime-agnostic async mutex (state-changing commits of one account in one
/// process; rare, so waiters are simply all woken on release).
#[derive(Default)]
pub(crate) struct AsyncLock(Mutex<(bool, Vec<Waker>)>);

impl AsyncLock {
    pub(crate) fn lock(&self) -> AsyncLockFuture<'_> {
        AsyncLockFuture(self)
    }
}

pub(crate) struct AsyncLockFuture<'a>(&'a AsyncLock);

impl<'a> Future for AsyncLockFuture<'a> {
    type Output = AsyncLockGuard<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AsyncLockGuard<'a>> {
        let mut s = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 {
            if !s.1.iter().any(|w| w.will_wake(cx.waker())) {
                s.1.push(cx.waker().clone());
            }
            Poll::Pending
        } else {
            s.0 = true;
            Poll::Ready(AsyncLockGuard(self.0))
        }
    }
}

pub(crate) struct AsyncLockGuard<'a>(&'a AsyncLock);

impl Drop for AsyncLockGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = false;
        for w in s.1.drain(..) {
            w.wake();
        }
    }
}
