//! The in-memory vault: a complete software key vault held in process memory.

use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::soft::{Change, Material, VaultState};
use super::{
    AdminCapabilities, Identity, KeyProperties, KeyProvider, KeySpec, Permissions, VaultAdmin,
    VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{RsaPrivate, SeededRng, ThreadRng, fill_random};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::SecretBytes;

/// The randomness a software vault draws keys from.
pub(crate) enum VaultRng {
    Os,
    Seeded(Box<SeededRng>),
}

impl VaultRng {
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        match self {
            Self::Os => fill_random(out),
            Self::Seeded(r) => {
                use rand_core::TryRng;
                match r.try_fill_bytes(out) {
                    Ok(()) => {}
                }
            }
        }
    }

    pub(crate) fn generate_rsa(&mut self, bits: usize) -> Result<RsaPrivate, crate::Error> {
        match self {
            Self::Os => RsaPrivate::generate(&mut ThreadRng, bits),
            Self::Seeded(r) => RsaPrivate::generate(&mut **r, bits),
        }
    }
}

struct Inner {
    state: RwLock<VaultState>,
    rng: Mutex<VaultRng>,
    clock: Arc<dyn Clock>,
}

/// A software key vault in process memory: RSA 2048/3072/4096, AES-256 and EC keys with
/// versions, enable/disable, soft-delete with recover and purge protection, and per-identity
/// access policies.
///
/// Clones share the same vault. The handle itself is the vault *owner* ([`VaultAdmin`]);
/// [`InMemoryVault::provider`] gives a [`KeyProvider`] that acts as one identity and is
/// subject to its access policy.
///
/// ```
/// # tokio_test_block_on(async {
/// use byok::{Identity, InMemoryVault, KeyProvider, KeySpec, Permissions, VaultAdmin,
///            VaultProperties, WrapAlgorithm};
/// let vault = InMemoryVault::new(VaultProperties::new("contoso.vault.example", "westeurope", "t1"));
/// vault.create_key("cmk", KeySpec::Rsa(2048)).await?;
/// let app = Identity::new("app");
/// vault.set_access(&app, Permissions::CMK).await?;
/// let p = vault.provider(&app);
/// let w = p.wrap_key("cmk", None, WrapAlgorithm::RsaOaep256, &[7u8; 32]).await?;
/// assert_eq!(p.unwrap_key(&w).await?.expose_secret(), &[7u8; 32]);
/// # Ok::<(), byok::ProviderError>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// ```
#[derive(Clone)]
pub struct InMemoryVault {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for InMemoryVault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let host = self.read().props.host.clone();
        f.debug_struct("InMemoryVault")
            .field("host", &host)
            .finish_non_exhaustive()
    }
}

impl InMemoryVault {
    /// An empty vault with the system clock and OS-seeded randomness.
    pub fn new(props: VaultProperties) -> Self {
        Self::with_parts(props, Arc::new(SystemClock), VaultRng::Os)
    }

    /// An empty vault with an injected clock (retention periods) and a fixed RNG seed (key
    /// generation), so tests are deterministic. Never use a fixed seed in production.
    pub fn with_clock_and_seed(
        props: VaultProperties,
        clock: Arc<dyn Clock>,
        seed: [u8; 32],
    ) -> Self {
        Self::with_parts(
            props,
            clock,
            VaultRng::Seeded(Box::new(SeededRng::new(seed))),
        )
    }

    fn with_parts(props: VaultProperties, clock: Arc<dyn Clock>, rng: VaultRng) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(VaultState::new(props)),
                rng: Mutex::new(rng),
                clock,
            }),
        }
    }

    /// A provider acting as `identity`.
    pub fn provider(&self, identity: &Identity) -> InMemoryProvider {
        InMemoryProvider {
            vault: self.clone(),
            identity: identity.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, VaultState> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, VaultState> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, change: Change) -> Result<(), ProviderError> {
        self.write().apply(change).map(|_| ())
    }

    fn apply_version(
        &self,
        name: &str,
        material: Material,
        now: std::time::SystemTime,
        create: bool,
    ) -> Result<KeyProperties, ProviderError> {
        self.write().add_version(name, material, now, create)
    }

    fn generate(&self, spec: KeySpec) -> Result<Material, ProviderError> {
        // Generation runs outside the state lock: RSA 4096 takes a while.
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        Material::generate(spec, &mut rng)
    }
}

#[async_trait]
impl VaultAdmin for InMemoryVault {
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities::ALL
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        // Refuse a taken name before spending time on generation.
        self.read().check_free(name)?;
        let m = self.generate(spec)?;
        let now = self.inner.clock.now();
        self.apply_version(name, m, now, true)
    }

    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        let key = RsaPrivate::from_pem(pem)
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        let now = self.inner.clock.now();
        self.apply_version(name, Material::Rsa(Arc::new(key)), now, false)
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let spec = self.read().rotation_spec(name)?;
        let m = self.generate(spec)?;
        let now = self.inner.clock.now();
        self.apply_version(name, m, now, false)
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        self.read().list_versions(name)
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        self.apply(Change::SetEnabled {
            name: name.to_owned(),
            version: version.to_owned(),
            enabled,
        })
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        let now = self.inner.clock.now();
        self.apply(Change::Delete {
            name: name.to_owned(),
            now,
        })
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        self.apply(Change::Recover {
            name: name.to_owned(),
        })
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        let now = self.inner.clock.now();
        self.apply(Change::Purge {
            name: name.to_owned(),
            now,
        })
    }

    async fn set_access(
        &self,
        identity: &Identity,
        permissions: Permissions,
    ) -> Result<(), ProviderError> {
        self.apply(Change::SetAccess {
            identity: identity.clone(),
            permissions,
        })
    }

    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError> {
        self.apply(Change::RemoveIdentity {
            identity: identity.clone(),
        })
    }

    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(self.provider(identity)))
    }
}

/// A [`KeyProvider`] acting as one identity on an [`InMemoryVault`].
#[derive(Clone, Debug)]
pub struct InMemoryProvider {
    vault: InMemoryVault,
    identity: Identity,
}

impl InMemoryProvider {
    /// The identity this provider acts as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

#[async_trait]
impl KeyProvider for InMemoryProvider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        Ok(self.vault.read().props.clone())
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        self.vault
            .read()
            .key_properties(&self.identity, name, version)
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.vault
            .read()
            .wrap(&self.identity, name, version, algorithm, key)
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let material = self.vault.read().unwrap_material(&self.identity, wrapped)?;
        // The private-key operation runs without holding the vault lock.
        material.unwrap(wrapped.algorithm, &wrapped.ciphertext)
    }
}
