//! How the account manager reaches tenants' vaults: a [`KeyResolver`] maps a key's vault and
//! the account's identity to a [`KeyProvider`]; [`VaultDirectory`] is one over registered
//! vaults.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{Identity, KeyProvider, ProviderFactory};
use crate::error::{ProviderError, ProviderErrorKind};

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
/// `byok::testing::FaultInjector` around one identity's provider). Removing a vault plays "the vault
/// was deleted".
#[derive(Debug, Default)]
pub struct VaultDirectory {
    vaults: RwLock<HashMap<String, Arc<dyn ProviderFactory>>>,
    overrides: RwLock<HashMap<(String, Identity), Arc<dyn KeyProvider>>>,
}

impl VaultDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the vault reachable at `host` (normalised like [`crate::KeyId::vault`]:
    /// `v.example:443` and `V.example.` are `v.example`).
    pub fn add_vault(&self, host: &str, vault: Arc<dyn ProviderFactory>) {
        self.vaults
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(crate::key_id::canonical_vault(host), vault);
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
            .insert(
                (crate::key_id::canonical_vault(host), identity.clone()),
                provider,
            );
    }

    /// Forgets the vault at `host` (its keys become unreachable: `VaultNotFound`).
    pub fn remove_vault(&self, host: &str) {
        let host = crate::key_id::canonical_vault(host);
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
        let host = crate::key_id::canonical_vault(vault);
        if let Some(p) = self
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(host.clone(), identity.clone()))
        {
            return Ok(Arc::clone(p));
        }
        let factory = self
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
        factory.provider_for(identity).await
    }
}
