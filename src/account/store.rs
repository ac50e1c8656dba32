//! Where account records live, and how the manager reaches tenants' vaults.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::record::{AccountId, AccountRecord};
use crate::error::{Error, ProviderError, ProviderErrorKind};
use crate::provider::{Identity, KeyProvider, VaultAdmin};

/// Persistence for account records, with optimistic concurrency: an update names the revision
/// it was based on and fails with [`Error::Conflict`] if the stored record moved on — never a
/// lost update.
#[async_trait]
pub trait AccountStore: Send + Sync + fmt::Debug {
    /// The record of `id`, if any.
    ///
    /// # Errors
    /// Storage failures, as the implementation reports them.
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error>;

    /// Every record.
    ///
    /// # Errors
    /// Storage failures.
    async fn list(&self) -> Result<Vec<AccountRecord>, Error>;

    /// Stores a new record.
    ///
    /// # Errors
    /// [`Error::Conflict`] if a record with that id exists.
    async fn create(&self, record: &AccountRecord) -> Result<(), Error>;

    /// Replaces the record whose stored revision is `record.revision - 1`.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the stored revision differs (a concurrent update won);
    /// [`Error::AccountNotFound`] if there is no such record.
    async fn update(&self, record: &AccountRecord) -> Result<(), Error>;
}

/// An [`AccountStore`] in process memory.
#[derive(Debug, Default)]
pub struct InMemoryAccountStore(RwLock<BTreeMap<AccountId, AccountRecord>>);

impl InMemoryAccountStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl AccountStore for InMemoryAccountStore {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned())
    }

    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        if m.contains_key(&record.id) {
            return Err(Error::Conflict(format!(
                "account {} already exists",
                record.id
            )));
        }
        m.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        let stored = m
            .get_mut(&record.id)
            .ok_or_else(|| Error::AccountNotFound(record.id.to_string()))?;
        if stored.revision + 1 != record.revision {
            return Err(Error::Conflict(format!(
                "account {} is at revision {}, the update was based on {}",
                record.id,
                stored.revision,
                record.revision.saturating_sub(1)
            )));
        }
        *stored = record.clone();
        Ok(())
    }
}

/// Finds the provider for a tenant's vault and identity.
#[async_trait]
pub trait KeyResolver: Send + Sync + fmt::Debug {
    /// A provider acting as `identity` on the vault at `vault` (a host name).
    ///
    /// # Errors
    /// `VaultNotFound` (definitive) for an unknown or deleted vault; transient kinds when the
    /// vault cannot be reached.
    async fn provider(
        &self,
        vault: &str,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError>;
}

/// A [`KeyResolver`] over vaults registered by host, with per-identity overrides (e.g. a
/// [`crate::FaultInjector`] around one identity's provider). Removing a vault plays "the vault
/// was deleted".
#[derive(Debug, Default)]
pub struct VaultDirectory {
    vaults: RwLock<HashMap<String, Arc<dyn VaultAdmin>>>,
    overrides: RwLock<HashMap<(String, Identity), Arc<dyn KeyProvider>>>,
}

impl VaultDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the vault reachable at `host`.
    pub fn add_vault(&self, host: &str, vault: Arc<dyn VaultAdmin>) {
        self.vaults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_ascii_lowercase(), vault);
    }

    /// Uses `provider` for `identity` on `host` instead of the vault's own.
    pub fn override_provider(
        &self,
        host: &str,
        identity: &Identity,
        provider: Arc<dyn KeyProvider>,
    ) {
        self.overrides
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((host.to_ascii_lowercase(), identity.clone()), provider);
    }

    /// Forgets the vault at `host` (its keys become unreachable: `VaultNotFound`).
    pub fn remove_vault(&self, host: &str) {
        let host = host.to_ascii_lowercase();
        self.vaults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&host);
        self.overrides
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(h, _), _| *h != host);
    }
}

#[async_trait]
impl KeyResolver for VaultDirectory {
    async fn provider(
        &self,
        vault: &str,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        let host = vault.to_ascii_lowercase();
        if let Some(p) = self
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(host.clone(), identity.clone()))
        {
            return Ok(Arc::clone(p));
        }
        let admin = self
            .vaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
            .cloned()
            .ok_or_else(|| {
                ProviderError::new(
                    ProviderErrorKind::VaultNotFound,
                    format!("no vault at {host}"),
                )
            })?;
        admin.provider_for(identity).await
    }
}
