//! Commits and transitions: every persisted change goes through [`AccountManager::commit`],
//! which enforces the lifecycle's transition table, bumps the state epoch on state and
//! wrapping changes and merges (never blindly replaces) on a revision conflict; observations
//! of the customer key become state changes here, ordered by the epoch they began under.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::live::{Cell, Learned, Observed, locked_slots};
use super::record::{AccountRecord, AccountState, StateKind};
use super::{ALL_SLOTS, AccountManager, Slot};
use crate::envelope::{Liveness, Revoked};
use crate::error::{Error, ProviderError};

/// What an observation of the customer key began under: the process generation, and the
/// record (its epoch and wrappings) it used.
pub(crate) struct Begun {
    pub(crate) generation: u64,
    pub(crate) record: AccountRecord,
    /// The clock when it began: orders it against observations of other replicas that the
    /// epoch cannot order (both began under the same epoch).
    pub(crate) at: SystemTime,
    /// The slots' revocation flags when it began: keys it unwraps carry them, so a
    /// revocation after it began reaches those keys too.
    pub(crate) liveness: [Liveness; 3],
}

/// How an observed failure ended.
pub(crate) enum Failed {
    /// The error for the caller.
    Error(Error),
    /// The observation was stale (the wrapping or the state moved on): re-run the operation
    /// once against the current record.
    Retry,
}

/// A commit's change refused because the record moved on since the observation began.
pub(crate) fn stale() -> Error {
    Error::Conflict("the account changed while the operation ran; retry".into())
}

impl AccountManager {
    /// What an operation starting now begins under.
    pub(crate) fn begin(&self, cell: &Cell) -> Begun {
        let at = self.now();
        let live = cell.read();
        Begun {
            generation: cell.generation(),
            record: live.record.clone(),
            at,
            liveness: live.liveness.clone(),
        }
    }

    /// Applies `change` to the stored record and persists it (revision + 1; epoch + 1 when
    /// the state or a wrapping changes). `change` sees the record it is based on and may
    /// refuse. On a revision conflict the stored record is re-read and merged, and `change`
    /// runs again on it (so a precondition it checks is checked against the newest record).
    ///
    /// # Errors
    /// What `change` returns; [`Error::Conflict`] if the result is not a transition of the
    /// lifecycle ([`StateKind::can_transition_to`]) or conflicts persist; store errors.
    pub(crate) async fn commit(
        &self,
        cell: &Cell,
        change: impl Fn(&mut AccountRecord) -> Result<(), Error>,
    ) -> Result<AccountRecord, Error> {
        self.commit_guarded(cell, None, change).await
    }

    /// [`commit`](Self::commit); with `unless_probed_after`, the write is also refused (a
    /// conflict) when a successful probe began after that time
    /// ([`crate::store::AccountStore::update_unless_probed_after`]).
    pub(crate) async fn commit_guarded(
        &self,
        cell: &Cell,
        unless_probed_after: Option<SystemTime>,
        change: impl Fn(&mut AccountRecord) -> Result<(), Error>,
    ) -> Result<AccountRecord, Error> {
        for _ in 0..3 {
            let base = cell.read().record.clone();
            let mut next = base.clone();
            change(&mut next)?;
            let (from, to) = (base.state.kind(), next.state.kind());
            if from != to && !from.can_transition_to(to) {
                return Err(Error::Conflict(format!(
                    "account {}: {from} → {to} is not a lifecycle transition",
                    base.id
                )));
            }
            let rewrapped = ALL_SLOTS
                .iter()
                .any(|&s| super::live::wrapped_of(&base, s) != super::live::wrapped_of(&next, s));
            if from != to || rewrapped {
                next.epoch = base.epoch + 1;
            }
            next.revision = base.revision + 1;
            next.updated = self.now();
            let written = match unless_probed_after {
                None => self.inner.store.update(&next).await,
                Some(t) => self.inner.store.update_unless_probed_after(&next, t).await,
            };
            match written {
                Ok(()) => {
                    self.merge(cell, Some(next.clone()));
                    return Ok(next);
                }
                Err(Error::Conflict(_)) => {
                    let stored = self.inner.store.get(&cell.id).await?;
                    self.merge(cell, stored);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "account {} changed concurrently",
            cell.id
        )))
    }

    /// A definitive failure of the customer key wrapping the account key, observed by an
    /// operation that began under `begun`.
    ///
    /// In memory first: the account is `KeyInaccessible` for every later call in this process
    /// and the keys it locks are revoked. Then against the authority: the failure is
    /// persisted only if the store's record still has the wrapping that failed and the epoch
    /// the operation began under; otherwise the observation is stale (another replica
    /// re-keyed, restored or revoked since) and the operation is re-run once on the current
    /// record — a stale replica's failure never locks the fleet.
    pub(crate) async fn observe_failure(
        &self,
        cell: &Cell,
        begun: &Begun,
        e: &ProviderError,
    ) -> Failed {
        let failed_wrapping = begun.record.account_key.clone();
        let reason = e.to_string();
        let kind = e.kind();
        let inaccessible = || Error::KeyInaccessible {
            account: cell.id.to_string(),
            kind: Some(kind),
            reason: reason.clone(),
        };
        let mine = {
            let mut live = cell.write();
            if live.record.account_key != failed_wrapping {
                // This process already moved on to another wrapping.
                return Failed::Retry;
            }
            match live.state().kind() {
                StateKind::Deleted => {
                    return Failed::Error(Error::AccountNotFound(cell.id.to_string()));
                }
                StateKind::KeyInaccessible if live.observed.is_none() => {
                    // Already persisted. Still an observation: a probe that began before it
                    // may not restore on its strength.
                    let generation = cell.bump();
                    live.learned = Some(Learned {
                        epoch: live.record.epoch,
                        generation,
                        observed: true,
                    });
                    return Failed::Error(inaccessible());
                }
                _ => {}
            }
            let generation = cell.bump();
            live.observed = Some(Observed {
                state: AccountState::KeyInaccessible {
                    reason: reason.clone(),
                    kind: Some(kind),
                    since: self.now(),
                },
                generation,
            });
            live.failed = [None, None, None];
            let locked = locked_slots(&live.record, StateKind::KeyInaccessible);
            live.revoke(locked, Revoked::KeyInaccessible(Some(kind)));
            generation
        };
        let commits = cell.commits.lock().await;
        let still_mine = |cell: &Cell| {
            cell.read()
                .observed
                .as_ref()
                .is_some_and(|o| o.generation == mine)
        };
        let clear_mine = |cell: &Cell| {
            let mut live = cell.write();
            if live.observed.as_ref().is_some_and(|o| o.generation == mine) {
                live.observed = None;
            }
        };
        if !still_mine(cell) {
            // A probe that began after this observation succeeded, or the store agreed.
            return match cell.read().gate(super::policy::Operation::DataRead, None) {
                Err(e) => Failed::Error(e),
                Ok(()) => Failed::Retry,
            };
        }
        let stored = match self.inner.store.get(&cell.id).await {
            Ok(s) => s,
            // The observation stays in force here; the next probe persists it.
            Err(_) => return Failed::Error(inaccessible()),
        };
        self.merge(cell, stored);
        let (current, epoch) = {
            let live = cell.read();
            (live.record.clone(), live.record.epoch)
        };
        match current.state.kind() {
            StateKind::Deleted => {
                return Failed::Error(Error::AccountNotFound(cell.id.to_string()));
            }
            StateKind::KeyInaccessible => {
                clear_mine(cell);
                return Failed::Error(inaccessible());
            }
            StateKind::Active => {}
        }
        // A successful probe that began after this operation (by any replica) supersedes it.
        let superseded = |r: &AccountRecord| r.last_probed.is_some_and(|p| p > begun.at);
        if current.account_key != failed_wrapping
            || epoch != begun.record.epoch
            || superseded(&current)
        {
            clear_mine(cell);
            cell.invalidate();
            return Failed::Retry;
        }
        let since = self.now();
        let committed = self
            .commit_guarded(cell, Some(begun.at), |r| {
                if r.epoch != begun.record.epoch
                    || r.account_key != failed_wrapping
                    || superseded(r)
                {
                    return Err(stale());
                }
                r.state = AccountState::KeyInaccessible {
                    reason: reason.clone(),
                    kind: Some(kind),
                    since,
                };
                Ok(())
            })
            .await;
        match committed {
            Ok(rec) => {
                {
                    let mut live = cell.write();
                    if live.observed.as_ref().is_some_and(|o| o.generation == mine) {
                        live.observed = None;
                    }
                    live.learned = Some(Learned {
                        epoch: rec.epoch,
                        generation: mine,
                        observed: true,
                    });
                }
                // Audit outside every lock: a sink may call back into the manager.
                drop(commits);
                self.emit_state_change(&rec, StateKind::Active, StateKind::KeyInaccessible);
                Failed::Error(inaccessible())
            }
            Err(Error::Conflict(_)) => {
                clear_mine(cell);
                cell.invalidate();
                Failed::Retry
            }
            Err(Error::AccountNotFound(id)) => Failed::Error(Error::AccountNotFound(id)),
            // Store outage: the observation stays in force in this process (the monitor
            // probes it again and persists it).
            Err(_) => Failed::Error(inaccessible()),
        }
    }

    /// A successful probe (get, wrap and unwrap on the exact wrapping) that began under
    /// `begun`: stamps the probe time in the store (so a failure observed before the probe
    /// began and persisted after it is found stale), re-reads the authority, and restores
    /// `Active` if the account is `KeyInaccessible` because of a failure observed *before*
    /// this probe began — never on the strength of a probe that began before a revocation.
    ///
    /// "Before" is this process's generation when it observed or learned the revocation, and
    /// otherwise the revocation's `since` against the probe's start (clock).
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] when a newer observation says so; [`Error::AccountNotFound`];
    /// store errors.
    pub(crate) async fn observe_success(
        &self,
        cell: &Cell,
        begun: &Begun,
    ) -> Result<StateKind, Error> {
        let commits = cell.commits.lock().await;
        let current = |cell: &Cell| -> Result<StateKind, Error> {
            let live = cell.read();
            live.gate(super::policy::Operation::DataRead, Some(Slot::Account))?;
            Ok(live.state().kind())
        };
        let newer_here = |cell: &Cell| {
            cell.read()
                .observed
                .as_ref()
                .is_some_and(|o| o.generation > begun.generation)
        };
        if newer_here(cell) {
            return current(cell);
        }
        if let Err(e) = self.inner.store.record_probe(&cell.id, begun.at).await {
            tracing::warn!(account = %cell.id, error = %e, "could not record the probe time");
        }
        let stored = self.inner.store.get(&cell.id).await?;
        self.merge(cell, stored);
        if newer_here(cell) {
            return current(cell);
        }
        let (record, learned) = {
            let mut live = cell.write();
            if live
                .observed
                .as_ref()
                .is_some_and(|o| o.generation <= begun.generation)
            {
                live.observed = None;
            }
            (live.record.clone(), live.learned)
        };
        let since = match &record.state {
            AccountState::Deleted { .. } => {
                return Err(Error::AccountNotFound(cell.id.to_string()));
            }
            AccountState::Active => return Ok(StateKind::Active),
            AccountState::KeyInaccessible { since, .. } => *since,
        };
        // Did this probe begin after the revocation? By this process's order where it knows
        // it, by the clock otherwise (a revocation committed by another replica and learned
        // only now).
        let after_revocation = match learned {
            Some(l) if l.epoch == record.epoch && l.generation <= begun.generation => true,
            Some(l) if l.epoch == record.epoch && l.observed => false,
            _ => since < begun.at,
        };
        if record.account_key != begun.record.account_key || !after_revocation {
            return current(cell);
        }
        let committed = self
            .commit(cell, |r| {
                if r.epoch != record.epoch || r.account_key != record.account_key {
                    return Err(stale());
                }
                r.state = AccountState::Active;
                Ok(())
            })
            .await;
        match committed {
            Ok(rec) => {
                drop(commits);
                self.emit_state_change(&rec, StateKind::KeyInaccessible, StateKind::Active);
                current(cell)
            }
            Err(Error::Conflict(_)) => {
                cell.valid_until.store(0, Ordering::Release);
                current(cell)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::account::policy::Policy;
    use crate::account::record::AccountId;
    use crate::account::{NewAccount, PlatformKey};
    use crate::provider::VaultDirectory;
    use crate::provider::memory::InMemoryVault;
    use crate::provider::{
        Identity, KeySpec, Permissions, VaultAdmin, VaultProperties, WrapAlgorithm,
    };

    async fn manager() -> AccountManager {
        let v = InMemoryVault::new(VaultProperties::new("platform.internal", "r", "op"));
        v.create_key("kek", KeySpec::Aes256).await.expect("key");
        let id = Identity::new("svc");
        v.set_access(&id, Permissions::CMK).await.expect("grant");
        AccountManager::builder(
            PlatformKey::new(Arc::new(v.provider(&id)), "kek", WrapAlgorithm::A256Kw),
            Arc::new(VaultDirectory::new()),
        )
        .build()
    }

    #[tokio::test]
    async fn commits_enforce_the_transition_table_and_bump_the_epoch() {
        let m = manager().await;
        let id = AccountId::new("t").expect("id");
        let created = m
            .create_account(NewAccount::new(
                id.clone(),
                "r",
                "t",
                Policy::builder("p").build(),
            ))
            .await
            .expect("create");
        let cell = m.cell(&id).await.expect("cell");
        // A change of neither state nor wrapping keeps the epoch.
        let same = m
            .commit(&cell, |r| {
                r.region = "r2".into();
                Ok(())
            })
            .await
            .expect("commit");
        assert_eq!(same.epoch, created.epoch);
        assert_eq!(same.revision, created.revision + 1);
        let revoked = m
            .commit(&cell, |r| {
                r.state = AccountState::KeyInaccessible {
                    reason: "test".into(),
                    kind: None,
                    since: std::time::SystemTime::UNIX_EPOCH,
                };
                Ok(())
            })
            .await
            .expect("Active -> KeyInaccessible");
        assert_eq!(revoked.epoch, created.epoch + 1);
        m.delete_account(&id).await.expect("delete");
        for to in [
            AccountState::Active,
            AccountState::KeyInaccessible {
                reason: "x".into(),
                kind: None,
                since: std::time::SystemTime::UNIX_EPOCH,
            },
        ] {
            let r = m
                .commit(&cell, |r| {
                    r.state = to.clone();
                    Ok(())
                })
                .await;
            assert!(
                matches!(r, Err(Error::Conflict(_))),
                "Deleted -> {to:?}: {r:?}"
            );
        }
        assert_eq!(
            m.inner
                .store
                .get(&id)
                .await
                .expect("get")
                .expect("rec")
                .state
                .kind(),
            StateKind::Deleted
        );
    }
}
