//! Randomness: the operating system's CSPRNG (`getrandom(2)`) under the RustCrypto backend,
//! AWS-LC's fork-safe DRBG under the aws-lc backend.
//!
//! This process keeps no generator state of its own, so a forked child cannot repeat its
//! parent's output — not even when it gets the parent's pid (a child forked into a new PID
//! namespace is pid 1 like a parent that was pid 1 in its own; an earlier per-thread ChaCha20
//! that detected fork by comparing `getpid()` repeated keys and nonces there, which
//! `tests/fork_rng.rs` shows). Callers that want many random bytes draw them in one call (the
//! envelope draws [`DATA_KEY_BATCH`](crate::envelope) data keys at once); the one buffer of
//! drawn randomness the crate keeps, the envelope's data-key batch, is discarded after a fork
//! by a [`ForkGuard`], which unlike a pid comparison catches that case.
//!
//! Under aws-lc the first draw in a process costs ≈ 60 ms (AWS-LC seeds its generator); the
//! crate makes it in [`warm_up`], called when a vault, account manager or prepared key is
//! built, not on the first request.

use core::convert::Infallible;

use chacha20::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};

/// Fills `out` with cryptographically secure random bytes.
pub(crate) fn fill_random(out: &mut [u8]) {
    super::backend::os_random(out);
}

/// Makes the process's first random draw now (≈ 60 ms under aws-lc, once per process), so
/// that it is not paid by the first request.
pub(crate) fn warm_up() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| fill_random(&mut [0u8; 1]));
}

/// The CSPRNG as an RNG for RustCrypto (RSA blinding, OAEP padding, key generation).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsRng;

impl TryRng for OsRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        fill_random(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        fill_random(dst);
        Ok(())
    }
}

impl TryCryptoRng for OsRng {}

/// A deterministic CSPRNG from a fixed seed, for reproducible tests (injected into the
/// in-memory vault). Never use a fixed seed in production.
pub(crate) struct SeededRng(ChaCha20Rng);

impl SeededRng {
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }

    /// Fills `out` from the seeded stream (callers outside the crypto core need no
    /// `rand_core` trait for this).
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        match self.0.try_fill_bytes(out) {
            Ok(()) => {}
        }
    }

    /// The next 64 bits of the seeded stream.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub(crate) fn next_u64(&mut self) -> u64 {
        match self.0.try_next_u64() {
            Ok(x) => x,
        }
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.0.try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.try_fill_bytes(dst)
    }
}

impl TryCryptoRng for SeededRng {}

/// Detects a `fork` since its last check (a `pthread_atfork` child handler bumps a counter;
/// one relaxed atomic load per check, no system call). Unlike a `getpid()` comparison it also
/// sees a child that got its parent's pid. A fork that bypasses libc's `fork()` (a raw
/// `clone(2)` without `CLONE_VM`) runs no atfork handler and is not seen: such a child must
/// not seal with `PreparedKey`s it inherited.
pub(crate) type ForkGuard = forkguard::Guard;

/// A fresh [`ForkGuard`].
pub(crate) fn fork_guard() -> ForkGuard {
    forkguard::new()
}
