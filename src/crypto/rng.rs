//! Randomness: a per-thread ChaCha20 CSPRNG seeded from the operating system.
//!
//! Data keys, nonces and salts are drawn from it, so sealing costs no system call for entropy.
//! The generator reseeds from the OS every `RESEED_BYTES` bytes and whenever the process id
//! changes: a forked child must never repeat its parent's stream, since that would repeat data
//! keys and nonces. The pid check is a `getpid` system call per draw (≈0.1 µs here); without
//! `unsafe` (no `pthread_atfork`, no `MADV_WIPEONFORK`) it is the one fork-safe option, and we
//! keep it. The envelope draws data keys in batches (`PreparedKey::data_key`), with the same
//! check on each key it hands out.

use core::cell::RefCell;
use core::convert::Infallible;

use chacha20::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};

const RESEED_BYTES: u64 = 1 << 30;

struct State {
    rng: ChaCha20Rng,
    pid: u32,
    used: u64,
}

impl State {
    fn fresh() -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(os_seed()),
            pid: std::process::id(),
            used: 0,
        }
    }
}

fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // The OS RNG failing is unrecoverable for a crypto library: continuing would produce
    // predictable keys.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut seed).expect("the operating system random number generator failed");
    seed
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Fills `out` with cryptographically secure random bytes.
pub(crate) fn fill_random(out: &mut [u8]) {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let state = slot.get_or_insert_with(State::fresh);
        if state.pid != std::process::id() || state.used > RESEED_BYTES {
            *state = State::fresh();
        }
        state.used += out.len() as u64;
        match state.rng.try_fill_bytes(out) {
            Ok(()) => {}
        }
    });
}

/// A handle on the thread's CSPRNG usable where RustCrypto wants an RNG (RSA blinding, OAEP).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ThreadRng;

impl TryRng for ThreadRng {
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

impl TryCryptoRng for ThreadRng {}

/// A deterministic CSPRNG from a fixed seed, for reproducible tests (injected into the
/// in-memory vault). Never use a fixed seed in production.
pub(crate) struct SeededRng(ChaCha20Rng);

impl SeededRng {
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
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
