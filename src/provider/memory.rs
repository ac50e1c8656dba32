//! The in-memory vault: a complete software key vault held in process memory.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::soft::sealed::Backend;
use super::soft::{Change, Material, Storage, VaultState};
use super::soft::{SoftProvider, SoftVault};
use super::{KeyProperties, KeySpec, VaultProperties};
use crate::clock::{Clock, SystemClock};
use crate::crypto::{RsaPrivate, SeededRng, fill_random};
use crate::error::ProviderError;

/// The randomness a software vault draws keys from.
pub(crate) enum VaultRng {
    Os,
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Seeded(Box<SeededRng>),
}

impl VaultRng {
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        match self {
            Self::Os => fill_random(out),
            Self::Seeded(r) => r.fill(out),
        }
    }

    pub(crate) fn generate_rsa(&mut self, bits: usize) -> Result<RsaPrivate, crate::Error> {
        match self {
            Self::Os => RsaPrivate::generate(bits),
            Self::Seeded(r) => RsaPrivate::generate_with(&mut **r, bits),
        }
    }
}

/// The in-memory vault's storage: the state under a lock, the key-generation randomness and
/// the clock (opaque; see [`InMemoryVault`]).
pub struct MemoryStorage {
    state: RwLock<VaultState>,
    rng: Mutex<VaultRng>,
    /// Made with a fixed seed: a deterministic test vault, which runs key generation and RSA
    /// operations on the caller's task.
    seeded: bool,
    clock: Arc<dyn Clock>,
}

/// A software key vault in process memory: RSA 2048/3072/4096, AES-256 and EC keys with
/// versions, enable/disable, soft-delete with recover and purge protection, and per-identity
/// access policies (the generic [`SoftVault`] over [`MemoryStorage`]).
///
/// Clones share the same vault. The handle itself is the vault *owner* ([`VaultAdmin`](crate::VaultAdmin));
/// [`SoftVault::provider`] gives a [`KeyProvider`](crate::KeyProvider) that acts as one identity and is
/// subject to its access policy.
///
/// ```
/// # tokio_test_block_on(async {
/// use byok::{KeyProvider, VaultAdmin};
/// use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
/// use byok::provider::memory::InMemoryVault;
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
pub type InMemoryVault = SoftVault<MemoryStorage>;

/// A [`KeyProvider`](crate::KeyProvider) acting as one identity on an [`InMemoryVault`].
pub type InMemoryProvider = SoftProvider<MemoryStorage>;

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
    /// generation), so tests are deterministic (feature `testing`). Never use a fixed seed in
    /// production: every key it generates is predictable.
    ///
    /// Such a vault also runs key generation and RSA private-key operations on the caller's
    /// task, not on the crate's blocking pool, so that a seeded test schedule replays exactly
    /// (a vault from [`new`](Self::new) keeps them off the caller's executor).
    #[cfg(any(test, feature = "testing"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn seeded(props: VaultProperties, clock: Arc<dyn Clock>, seed: [u8; 32]) -> Self {
        Self::with_parts(
            props,
            clock,
            VaultRng::Seeded(Box::new(SeededRng::new(seed))),
        )
    }

    fn with_parts(props: VaultProperties, clock: Arc<dyn Clock>, rng: VaultRng) -> Self {
        crate::crypto::warm_up();
        Self {
            inner: Arc::new(MemoryStorage {
                state: RwLock::new(VaultState::new(props)),
                seeded: matches!(rng, VaultRng::Seeded(_)),
                rng: Mutex::new(rng),
                clock,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, VaultState> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, VaultState> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemoryStorage {}

impl Backend for MemoryStorage {
    const COMMIT_BLOCKS: bool = false;

    fn runs_inline(vault: &InMemoryVault) -> bool {
        vault.inner.seeded
    }

    fn with_state<T>(
        vault: &InMemoryVault,
        f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        f(&vault.read())
    }

    fn commit(
        vault: &InMemoryVault,
        change: Change,
    ) -> Result<Option<KeyProperties>, ProviderError> {
        vault.write().apply(change)
    }

    fn generate(vault: &InMemoryVault, spec: KeySpec) -> Result<Material, ProviderError> {
        let mut rng = vault.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        Material::generate(spec, &mut rng)
    }

    fn now(vault: &InMemoryVault) -> SystemTime {
        vault.inner.clock.now()
    }
}
