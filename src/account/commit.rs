//! Commits and transitions: every persisted change goes through [`AccountManager::commit`],
//! which enforces the lifecycle's transition table, bumps the state epoch on state and
//! wrapping changes and merges (never blindly replaces) on a revision conflict; observations
//! of the customer key become state changes here, ordered by the epoch they began under.

use std::sync::atomic::Ordering;

use super::live::{Cell, Observed, locked_slots};
use super::record::{AccountRecord, AccountState, StateKind};
use super::{ALL_SLOTS, AccountManager, Slot};
use crate::envelope::Revoked;
use crate::error::{Error, ProviderError};

/// What an observation of the customer key began under: the process generation, and the
/// record (its epoch and wrappings) it used.
pub(crate) struct Begun {
    pub(crate) generation: u64,
    pub(crate) record: AccountRecord,
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
    pub(crate) fn begin(cell: &Cell) -> Begun {
        let live = cell.read();
        Begun {
            generation: cell.generation(),
            record: live.record.clone(),
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
            match self.inner.store.update(&next).await {
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
        let inaccessible = || Error::KeyInaccessible {
            account: cell.id.to_string(),
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
                    cell.bump();
                    return Failed::Error(inaccessible());
                }
                _ => {}
            }
            let generation = cell.bump();
            live.observed = Some(Observed {
                state: AccountState::KeyInaccessible {
                    reason: reason.clone(),
                    since: self.now(),
                },
                generation,
            });
            live.failed = [None, None, None];
            let locked = locked_slots(&live.record, StateKind::KeyInaccessible);
            live.revoke(locked, Revoked::KeyInaccessible);
            generation
        };
        let _commits = cell.commits.lock().await;
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
        if current.account_key != failed_wrapping || epoch != begun.record.epoch {
            clear_mine(cell);
            cell.invalidate();
            return Failed::Retry;
        }
        let since = self.now();
        let committed = self
            .commit(cell, |r| {
                if r.epoch != begun.record.epoch || r.account_key != failed_wrapping {
                    return Err(stale());
                }
                r.state = AccountState::KeyInaccessible {
                    reason: reason.clone(),
                    since,
                };
                Ok(())
            })
            .await;
        match committed {
            Ok(rec) => {
                clear_mine(cell);
                self.emit_state_change(&rec, StateKind::Active, StateKind::KeyInaccessible);
                Failed::Error(inaccessible())
            }
            Err(Error::Conflict(_)) => {
                clear_mine(cell);
                cell.invalidate();
                Failed::Retry
            }
            // Store outage: the observation stays in force in this process.
            Err(_) => Failed::Error(inaccessible()),
        }
    }

    /// A successful probe (get, wrap and unwrap on the exact wrapping) that began under
    /// `begun`: restores `Active` if the account was `KeyInaccessible` — only if nothing was
    /// observed since the probe began (in this process: the generation; in the fleet: the
    /// epoch).
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] when a newer observation says so; [`Error::AccountNotFound`];
    /// store errors.
    pub(crate) async fn observe_success(
        &self,
        cell: &Cell,
        begun: &Begun,
    ) -> Result<StateKind, Error> {
        let _commits = cell.commits.lock().await;
        let current = |cell: &Cell| -> Result<StateKind, Error> {
            let live = cell.read();
            live.gate(super::policy::Operation::DataRead, Some(Slot::Account))?;
            Ok(live.state().kind())
        };
        if cell.generation() != begun.generation {
            return current(cell);
        }
        {
            let mut live = cell.write();
            // Anything observed in memory happened before this probe began.
            live.observed = None;
        }
        let before = cell.read().record.state.kind();
        match before {
            StateKind::Deleted => return Err(Error::AccountNotFound(cell.id.to_string())),
            StateKind::Active => return Ok(StateKind::Active),
            StateKind::KeyInaccessible => {}
        }
        let committed = self
            .commit(cell, |r| {
                if r.epoch != begun.record.epoch || r.account_key != begun.record.account_key {
                    return Err(stale());
                }
                r.state = AccountState::Active;
                Ok(())
            })
            .await;
        match committed {
            Ok(rec) => {
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
    use crate::account::store::VaultDirectory;
    use crate::account::{NewAccount, PlatformKey};
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
