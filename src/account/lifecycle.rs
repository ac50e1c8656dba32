//! The account lifecycle: creation, key changes (re-wrap only), deletion, and the gates and
//! listings around them.

use super::commit::Failed;
use super::live::Cell;
use super::policy::{DoubleEncryption, Operation};
use super::record::{AccountId, AccountRecord, AccountState, KeySource, RECORD_FORMAT, StateKind};
use super::validate::Ctx;
use super::{AccountManager, NewAccount, Slot};
use crate::audit::{AuditAction, AuditOutcome};
use crate::error::{Error, PolicyViolation};
use crate::key_id::KeyId;
use crate::provider::Identity;
use crate::secret::AesKey;

fn new_key_id() -> String {
    let mut b = [0u8; 16];
    crate::crypto::fill_random(&mut b);
    crate::util::hex(&b)
}

impl AccountManager {
    /// Creates an account: generates its account key (and platform-class and second-layer
    /// keys), wraps each under its key, proves every wrapping by unwrapping it, and stores the
    /// record.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the id exists; [`Error::Policy`] when the customer key or its
    /// vault breaks the policy (nothing is stored); [`Error::PlatformKey`] (500, 503 when
    /// transient) when the service's own platform or infrastructure key fails; the tenant
    /// provider's errors as they come.
    pub async fn create_account(&self, spec: NewAccount) -> Result<AccountRecord, Error> {
        let policy = &spec.policy;
        if self.inner.store.get(&spec.id).await?.is_some() {
            return Err(Error::Conflict(format!(
                "account {} already exists",
                spec.id
            )));
        }
        if matches!(spec.key_source, KeySource::Customer { .. }) && !policy.customer_key_at_creation
        {
            return Err(Error::Policy {
                policy: policy.name.clone(),
                violation: PolicyViolation::CustomerKeyAtCreation,
            });
        }
        if let Some(c) = spec
            .chosen_classes
            .iter()
            .find(|c| !policy.optional_classes.contains(*c))
        {
            return Err(Error::InvalidInput(format!(
                "data class {c} is not an optional class of policy {}",
                policy.name
            )));
        }
        let double = match policy.double_encryption {
            DoubleEncryption::Always => true,
            DoubleEncryption::Optional => spec.double_encryption,
        };
        let account_key = AesKey::generate();
        let (wrapped, source) = self
            .wrap_under_source(
                Ctx {
                    id: &spec.id,
                    policy,
                    region: &spec.region,
                    tenant: &spec.tenant,
                },
                &spec.key_source,
                &account_key,
                &new_key_id(),
            )
            .await?;
        let platform_class = self
            .wrap_platform(Slot::PlatformClass, &AesKey::generate(), new_key_id())
            .await?;
        let infrastructure = if double {
            Some(
                self.wrap_platform(Slot::Infrastructure, &AesKey::generate(), new_key_id())
                    .await?,
            )
        } else {
            None
        };
        let now = self.now();
        let record = AccountRecord {
            format: RECORD_FORMAT,
            id: spec.id.clone(),
            region: spec.region.clone(),
            tenant: spec.tenant.clone(),
            key_source: source,
            account_key: Some(wrapped),
            platform_class_key: Some(platform_class),
            infrastructure_key: infrastructure,
            state: AccountState::Active,
            policy: spec.policy.clone(),
            double_encryption: double,
            chosen_classes: spec.chosen_classes.clone(),
            revision: 1,
            epoch: 1,
            created: now,
            updated: now,
            last_rotated: None,
            last_probed: Some(now),
        };
        self.inner.store.create(&record).await?;
        // A cell of an earlier account under this id (deleted and purged) is not this one.
        self.inner
            .cells
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.id);
        self.emit(
            &spec.id,
            None,
            None,
            AuditAction::Created,
            AuditOutcome::Success,
        );
        Ok(record)
    }

    /// Enables customer keys, changes to another key, updates the pinned version or changes
    /// the identity: validates the new key, re-wraps the account key under it (proved by an
    /// unwrap) and only then records it. No object is re-encrypted. Restores `Active` if the
    /// account was `KeyInaccessible` and the account key could be unwrapped again.
    ///
    /// # Errors
    /// [`Error::Policy`] (forbidden switch, other vault, bad key or vault, missing
    /// permission); [`Error::KeyInaccessible`] if the current key cannot unwrap the account key
    /// (the data is locked until access to it is restored); [`Error::Conflict`] if the
    /// account's state or key changed while the key change ran (nothing was changed: retry);
    /// provider and store errors. On any error the record is unchanged.
    pub async fn set_customer_key(
        &self,
        id: &AccountId,
        key: KeyId,
        identity: Identity,
    ) -> Result<AccountRecord, Error> {
        let cell = self.fresh_cell(id).await?;
        let rec = cell.read().record.clone();
        let forbidden = |v| Error::Policy {
            policy: rec.policy.name.clone(),
            violation: v,
        };
        match &rec.key_source {
            KeySource::Platform if !rec.policy.allow_source_switch => {
                return Err(forbidden(PolicyViolation::SourceSwitchForbidden));
            }
            KeySource::Customer { key: current, .. }
                if rec.policy.key_change_same_vault_only && current.vault() != key.vault() =>
            {
                return Err(forbidden(PolicyViolation::DifferentVault {
                    current: current.vault().to_owned(),
                    requested: key.vault().to_owned(),
                }));
            }
            _ => {}
        }
        self.rekey(&cell, KeySource::customer(key, identity)).await
    }

    /// Disables customer keys: the account key goes back under the platform key. No object is
    /// re-encrypted.
    ///
    /// # Errors
    /// [`Error::Policy`] if the policy forbids switching; [`Error::KeyInaccessible`] if the
    /// customer key cannot unwrap the account key; [`Error::Conflict`] as for
    /// [`set_customer_key`](Self::set_customer_key); provider and store errors.
    pub async fn use_platform_key(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        let cell = self.fresh_cell(id).await?;
        let rec = cell.read().record.clone();
        if matches!(rec.key_source, KeySource::Customer { .. }) && !rec.policy.allow_source_switch {
            return Err(Error::Policy {
                policy: rec.policy.name.clone(),
                violation: PolicyViolation::SourceSwitchForbidden,
            });
        }
        self.rekey(&cell, KeySource::Platform).await
    }

    /// Re-wraps the account key under `source`: unwrap with the current wrapping, wrap under
    /// the new one, prove it, then commit — only if nothing was observed in this process and
    /// no replica changed the state or wrapping since the unwrap began (a re-key that started
    /// before a revocation cannot undo it). A failure anywhere leaves the old wrapping in
    /// force.
    pub(crate) async fn rekey(
        &self,
        cell: &Cell,
        source: KeySource,
    ) -> Result<AccountRecord, Error> {
        let mut retried = false;
        let (begun, keys) = loop {
            let begun = self.begin(cell);
            if begun.record.state.kind() == StateKind::Deleted {
                return Err(Error::AccountNotFound(cell.id.to_string()));
            }
            match self.unwrap_from_provider(&begun, Slot::Account).await? {
                Ok(keys) => break (begun, keys),
                Err(e) => match self.on_failure(cell, &begun, Slot::Account, e).await {
                    Failed::Error(e) => return Err(e),
                    Failed::Retry if !retried => {
                        retried = true;
                        self.reload(cell).await?;
                    }
                    Failed::Retry => return Err(super::commit::stale()),
                },
            }
        };
        let rec = &begun.record;
        let key_id = keys.prepared.key_id().to_owned();
        let (wrapped, recorded) = self
            .wrap_under_source(
                Ctx {
                    id: &rec.id,
                    policy: &rec.policy,
                    region: &rec.region,
                    tenant: &rec.tenant,
                },
                &source,
                &keys.raw,
                &key_id,
            )
            .await?;
        let from = rec
            .account_key
            .as_ref()
            .map(Self::audit_key)
            .unwrap_or_default();
        let to = Self::audit_key(&wrapped);
        let now = self.now();
        let commits = cell.commits.lock().await;
        if cell.generation() != begun.generation {
            return Err(super::commit::stale());
        }
        let prior = cell.read().state().kind();
        let updated = self
            .commit(cell, |r| {
                if r.state.kind() == StateKind::Deleted {
                    return Err(Error::AccountNotFound(r.id.to_string()));
                }
                if r.epoch != rec.epoch || r.account_key != rec.account_key {
                    return Err(super::commit::stale());
                }
                r.key_source = recorded.clone();
                r.account_key = Some(wrapped.clone());
                r.last_rotated = Some(now);
                r.last_probed = Some(now);
                r.state = AccountState::Active;
                Ok(())
            })
            .await?;
        {
            let mut live = cell.write();
            if live
                .observed
                .as_ref()
                .is_some_and(|o| o.generation <= begun.generation)
            {
                live.observed = None;
            }
            if live.record.account_key.as_ref() == Some(&wrapped) && live.observed.is_none() {
                let expires = self.after(self.now_ns(), live.record.policy.cache_max_age);
                live.cache[Slot::Account as usize] = Some(super::live::Cached { keys, expires });
            }
        }
        // Audit outside every lock: a sink may call back into the manager.
        drop(commits);
        if from != to {
            self.emit(
                &rec.id,
                None,
                Some(to.clone()),
                AuditAction::KeyChange { from, to },
                AuditOutcome::Success,
            );
        }
        if prior == StateKind::KeyInaccessible {
            self.emit_state_change(&updated, prior, StateKind::Active);
        }
        Ok(updated)
    }

    /// Deletes the account in any state: its wrapped keys are destroyed (crypto-shredding),
    /// its cached keys and every key handle given out are revoked, and every later call
    /// answers [`Error::AccountNotFound`].
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; store failures (nothing is deleted then).
    pub async fn delete_account(&self, id: &AccountId) -> Result<(), Error> {
        let cell = self.fresh_cell(id).await?;
        let now = self.now();
        let commits = cell.commits.lock().await;
        let (from, key) = {
            let live = cell.read();
            (live.state().kind(), Self::record_key(&live.record))
        };
        let rec = self
            .commit(&cell, |r| {
                if r.state.kind() == StateKind::Deleted {
                    return Err(Error::AccountNotFound(r.id.to_string()));
                }
                r.state = AccountState::Deleted { at: now };
                r.account_key = None;
                r.platform_class_key = None;
                r.infrastructure_key = None;
                Ok(())
            })
            .await?;
        cell.write().observed = None;
        drop(commits);
        self.emit(
            &rec.id,
            None,
            key.clone(),
            AuditAction::StateChange {
                from,
                to: StateKind::Deleted,
            },
            AuditOutcome::Success,
        );
        self.emit(id, None, key, AuditAction::Deleted, AuditOutcome::Success);
        Ok(())
    }

    /// Checks that `op` may run on the account now (for operations the application performs
    /// itself, such as listing or deleting objects). A denial is audited.
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] (403) when the key is inaccessible and the policy does not
    /// list `op`; [`Error::AccountNotFound`] (404) for a deleted or unknown account;
    /// [`Error::Store`] when the record is due for a re-read and the store fails.
    pub async fn ensure_allowed(&self, id: &AccountId, op: Operation) -> Result<(), Error> {
        let cell = self.fresh_cell(id).await?;
        let result = cell.read().gate(op, None);
        self.audit_denial(&cell, op, result)
    }

    /// Audits a refused operation; passes the result through.
    pub(crate) fn audit_denial(
        &self,
        cell: &Cell,
        op: Operation,
        result: Result<(), Error>,
    ) -> Result<(), Error> {
        if let Err(Error::KeyInaccessible { .. }) = &result {
            let rec = cell.read().record.clone();
            self.emit(
                &rec.id,
                None,
                rec.current_customer_key().map(|k| k.to_string()),
                AuditAction::Denied { operation: op },
                AuditOutcome::Failure("KeyInaccessible".into()),
            );
        }
        result
    }

    /// The account's record (account GET): key source, current key and version, state, when
    /// it last rotated and was last probed.
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; [`Error::KeyInaccessible`] if the policy does not allow GET
    /// while inaccessible; [`Error::Store`].
    pub async fn account(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        let cell = self.fresh_cell(id).await?;
        let result = cell.read().gate(Operation::AccountGet, None);
        self.audit_denial(&cell, Operation::AccountGet, result)?;
        Ok(Self::view(&cell))
    }

    /// Every account that is not deleted (account LIST), as this process sees them.
    ///
    /// # Errors
    /// Store failures.
    pub async fn accounts(&self) -> Result<Vec<AccountRecord>, Error> {
        let mut out = Vec::new();
        for rec in self.inner.store.list().await? {
            if rec.state.kind() == StateKind::Deleted {
                continue;
            }
            // The listed record is as fresh as a re-read: no second read per account.
            let known = self
                .inner
                .cells
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&rec.id)
                .cloned();
            out.push(match known {
                Some(cell) => {
                    self.merge(&cell, Some(rec));
                    Self::view(&cell)
                }
                None => rec,
            });
        }
        Ok(out)
    }

    /// Which accounts' keys are wrapped under `key` at its version (operators: is it safe to
    /// disable or delete this version?). `key` must carry a version. Answered by the store
    /// (an index lookup in a database).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a versionless key; store failures.
    pub async fn accounts_using(&self, key: &KeyId) -> Result<Vec<AccountId>, Error> {
        let version = key
            .version()
            .ok_or_else(|| Error::InvalidInput("name a key version".into()))?;
        self.inner
            .store
            .accounts_using(key.vault(), key.name(), version)
            .await
    }
}
