//! A fault-injecting wrapper over any provider, for tests (the crate's and its users').

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{KeyProperties, KeyProvider, VaultProperties, WrapAlgorithm, WrappedKey};
use crate::crypto::SeededRng;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::SecretBytes;

/// The provider operations, for per-operation call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderOp {
    /// [`KeyProvider::vault_properties`].
    VaultProperties,
    /// [`KeyProvider::key_properties`].
    KeyProperties,
    /// [`KeyProvider::wrap_key`].
    Wrap,
    /// [`KeyProvider::unwrap_key`].
    Unwrap,
}

impl ProviderOp {
    fn index(self) -> usize {
        match self {
            Self::VaultProperties => 0,
            Self::KeyProperties => 1,
            Self::Wrap => 2,
            Self::Unwrap => 3,
        }
    }
}

struct Faults {
    rng: SeededRng,
    latency: Duration,
    rate: f64,
    rate_kind: ProviderErrorKind,
    fail_next: u64,
    fail_next_kind: ProviderErrorKind,
    cut: Option<ProviderErrorKind>,
}

/// Wraps a provider and injects latency, transient failures (at a seeded rate or for the next
/// N calls) and a "cut" that fails every call with a chosen kind until restored. It also
/// counts calls per operation, so tests can prove how often a provider is contacted.
///
/// ```
/// # use std::sync::Arc;
/// use byok::ProviderErrorKind;
/// use byok::provider::{Identity, VaultProperties};
/// use byok::provider::memory::InMemoryVault;
/// use byok::testing::FaultInjector;
/// let vault = InMemoryVault::new(VaultProperties::new("v.example", "r", "t"));
/// let faulty = FaultInjector::new(Arc::new(vault.provider(&Identity::new("app"))), 7);
/// faulty.cut(ProviderErrorKind::Unavailable); // the vault "goes away"
/// faulty.restore();
/// ```
#[derive(Clone)]
pub struct FaultInjector {
    inner: Arc<dyn KeyProvider>,
    faults: Arc<Mutex<Faults>>,
    calls: Arc<[AtomicU64; 4]>,
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjector")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultInjector {
    /// Wraps `inner`; `seed` makes the random failures repeatable.
    pub fn new(inner: Arc<dyn KeyProvider>, seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            inner,
            faults: Arc::new(Mutex::new(Faults {
                rng: SeededRng::new(s),
                latency: Duration::ZERO,
                rate: 0.0,
                rate_kind: ProviderErrorKind::Unavailable,
                fail_next: 0,
                fail_next_kind: ProviderErrorKind::Timeout,
                cut: None,
            })),
            calls: Arc::new([const { AtomicU64::new(0) }; 4]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `latency` before every call.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Fails each call with probability `rate` (0.0–1.0) with `kind`.
    pub fn set_failure_rate(&self, rate: f64, kind: ProviderErrorKind) {
        let mut f = self.lock();
        f.rate = rate.clamp(0.0, 1.0);
        f.rate_kind = kind;
    }

    /// Fails the next `n` calls with `kind`.
    pub fn fail_next(&self, n: u64, kind: ProviderErrorKind) {
        let mut f = self.lock();
        f.fail_next = n;
        f.fail_next_kind = kind;
    }

    /// Fails every call with `kind` until [`restore`](Self::restore): e.g. `Forbidden` for a
    /// removed access policy, `Unavailable` for a vault outage.
    pub fn cut(&self, kind: ProviderErrorKind) {
        self.lock().cut = Some(kind);
    }

    /// Ends a [`cut`](Self::cut), the failure rate and pending `fail_next` failures.
    pub fn restore(&self) {
        let mut f = self.lock();
        f.cut = None;
        f.rate = 0.0;
        f.fail_next = 0;
    }

    /// How many calls of `op` reached this wrapper (including failed ones).
    pub fn calls(&self, op: ProviderOp) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    async fn before(&self, op: ProviderOp) -> Result<(), ProviderError> {
        self.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let (latency, outcome) = {
            let mut f = self.lock();
            let outcome = if let Some(kind) = f.cut {
                Some(kind)
            } else if f.fail_next > 0 {
                f.fail_next -= 1;
                Some(f.fail_next_kind)
            } else if f.rate > 0.0 {
                let x = f.rng.next_u64();
                ((x >> 11) as f64 / (1u64 << 53) as f64 <= f.rate).then_some(f.rate_kind)
            } else {
                None
            };
            (f.latency, outcome)
        };
        if !latency.is_zero() {
            Delay::new(latency).await;
        }
        match outcome {
            Some(kind) => Err(ProviderError::new(kind, "injected fault")),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KeyProvider for FaultInjector {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        self.before(ProviderOp::VaultProperties).await?;
        self.inner.vault_properties().await
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        self.before(ProviderOp::KeyProperties).await?;
        self.inner.key_properties(name, version).await
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.before(ProviderOp::Wrap).await?;
        self.inner.wrap_key(name, version, algorithm, key).await
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        self.before(ProviderOp::Unwrap).await?;
        self.inner.unwrap_key(wrapped).await
    }
}

/// A runtime-agnostic delay: a helper thread sleeps and wakes the task (no executor is
/// assumed, none is embedded).
struct Delay {
    shared: Arc<Mutex<(bool, Option<Waker>)>>,
    started: bool,
    dur: Duration,
}

impl Delay {
    fn new(dur: Duration) -> Self {
        Self {
            shared: Arc::new(Mutex::new((false, None))),
            started: false,
            dur,
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 {
                return Poll::Ready(());
            }
            s.1 = Some(cx.waker().clone());
        }
        if !self.started {
            self.started = true;
            let shared = Arc::clone(&self.shared);
            let dur = self.dur;
            std::thread::spawn(move || {
                std::thread::sleep(dur);
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                s.0 = true;
                if let Some(w) = s.1.take() {
                    w.wake();
                }
            });
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::memory::InMemoryVault;
    use crate::provider::{Identity, KeySpec, Permissions, VaultAdmin, VaultProperties};

    async fn setup() -> (InMemoryVault, Arc<dyn KeyProvider>) {
        let v = InMemoryVault::new(VaultProperties::new("f.example", "r", "t"));
        v.create_key("k", KeySpec::Aes256).await.expect("key");
        let id = Identity::new("app");
        v.set_access(&id, Permissions::CMK).await.expect("grant");
        let p: Arc<dyn KeyProvider> = Arc::new(v.provider(&id));
        (v, p)
    }

    async fn outcomes(f: &FaultInjector, n: usize) -> Vec<bool> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(f.key_properties("k", None).await.is_ok());
        }
        out
    }

    #[tokio::test]
    async fn seeded_failure_rate_repeats_and_roughly_holds() {
        let (_v, p) = setup().await;
        let a = FaultInjector::new(p.clone(), 11);
        let b = FaultInjector::new(p.clone(), 11);
        let c = FaultInjector::new(p, 12);
        for f in [&a, &b, &c] {
            f.set_failure_rate(0.3, ProviderErrorKind::Throttled);
        }
        let (ra, rb, rc) = (
            outcomes(&a, 400).await,
            outcomes(&b, 400).await,
            outcomes(&c, 400).await,
        );
        assert_eq!(ra, rb, "same seed, same faults");
        assert_ne!(ra, rc, "another seed, other faults");
        let failures = ra.iter().filter(|ok| !**ok).count();
        assert!(
            (80..=160).contains(&failures),
            "{failures} of 400 at rate 0.3"
        );
        assert_eq!(a.calls(ProviderOp::KeyProperties), 400);
        let e = a.key_properties("k", None).await;
        if let Err(e) = e {
            assert_eq!(e.kind(), ProviderErrorKind::Throttled);
            assert!(e.is_transient());
        }
    }

    #[tokio::test]
    async fn fail_next_cut_restore_and_latency() {
        let (_v, p) = setup().await;
        let f = FaultInjector::new(p, 1);
        f.fail_next(2, ProviderErrorKind::Timeout);
        assert_eq!(outcomes(&f, 3).await, [false, false, true]);
        f.cut(ProviderErrorKind::Forbidden);
        let e = f
            .wrap_key("k", None, WrapAlgorithm::A256Kw, &[1; 32])
            .await
            .expect_err("cut");
        assert_eq!(e.kind(), ProviderErrorKind::Forbidden);
        f.restore();
        f.set_latency(Duration::from_millis(30));
        let t = std::time::Instant::now();
        let w = f
            .wrap_key("k", None, WrapAlgorithm::A256Kw, &[1; 32])
            .await
            .expect("wrap");
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            f.unwrap_key(&w).await.expect("unwrap").expose_secret(),
            &[1; 32]
        );
        assert_eq!(f.calls(ProviderOp::Wrap), 2);
        assert_eq!(f.calls(ProviderOp::Unwrap), 1);
    }
}
