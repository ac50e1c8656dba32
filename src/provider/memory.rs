//! The in-memory vault: a complete software key vault held in process memory.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::soft::{Change, Material, SoftVault, VaultState, soft_vault_impls};
use super::{Identity, KeyProperties, KeySpec, VaultProperties};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{RsaPrivate, SeededRng, fill_random};
use crate::error::ProviderError;

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
            Self::Os => RsaPrivate::generate(bits),
            Self::Seeded(r) => RsaPrivate::generate_with(&mut **r, bits),
        }
    }
}

struct Inner {
    state: RwLock<VaultState>,
    rng: Mutex<VaultRng>,
    /// Made with a fixed seed: a deterministic test vault, which runs key generation and RSA
    /// operations on the caller's task.
    seeded: bool,
    clock: Arc<dyn Clock>,
}

/// A software key vault in process memory: RSA 2048/3072/4096, AES-256 and EC keys with
/// versions, enable/disable, soft-delete with recover and purge protection, and per-identity
/// access policies.
///
/// Clones share the same vault. The handle itself is the vault *owner* ([`VaultAdmin`](crate::VaultAdmin));
/// [`InMemoryVault::provider`] gives a [`KeyProvider`](crate::KeyProvider) that acts as one identity and is
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
    ///
    /// Such a vault also runs key generation and RSA private-key operations on the caller's
    /// task, not on the crate's blocking pool, so that a seeded test schedule replays exactly
    /// (a vault from [`new`](Self::new) keeps them off the caller's executor).
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
        crate::crypto::warm_up();
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(VaultState::new(props)),
                seeded: matches!(rng, VaultRng::Seeded(_)),
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
}

impl SoftVault for InMemoryVault {
    const COMMIT_BLOCKS: bool = false;

    fn runs_inline(&self) -> bool {
        self.inner.seeded
    }

    fn with_state<T>(
        &self,
        f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        f(&self.read())
    }

    fn commit(&self, change: Change) -> Result<Option<KeyProperties>, ProviderError> {
        self.write().apply(change)
    }

    fn generate(&self, spec: KeySpec) -> Result<Material, ProviderError> {
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        Material::generate(spec, &mut rng)
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }
}

soft_vault_impls!(InMemoryVault, InMemoryProvider);

/// A [`KeyProvider`](crate::KeyProvider) acting as one identity on an [`InMemoryVault`].
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
