//! Shared by the crash test (`tests/file_vault_crash.rs`, the parent) and its worker process
//! (`tests/bin/file_vault_crash_worker.rs`, the child): the vault options, the op-choice
//! generator, the permission encoding and the fsynced operation log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use byok::SecretString;
use byok::provider::Permissions;
use byok::provider::file::{Argon2Params, FileVaultOptions};

pub(crate) const WORKER_ENV: &str = "BYOK_FV_WORKER";
pub(crate) const KILL_ROUNDS: usize = 220;
pub(crate) const KEYS: usize = 4;
pub(crate) const IDENTITIES: u64 = 8;

pub(crate) fn options() -> FileVaultOptions {
    FileVaultOptions::from_passphrase(SecretString::from("crash test"))
        .argon2(Argon2Params::new(64, 1, 1))
}

/// xorshift64*: a tiny deterministic generator for op choice and kill timing.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ u64::from(std::process::id()) << 32 | 1
}

/// Runs a future to completion on this thread (the file vault needs no async runtime; the worker
/// binary has no tokio).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

pub(crate) fn perms(b: u64) -> Permissions {
    Permissions::new(b & 1 != 0, b & 2 != 0, b & 4 != 0)
}

/// The operation log: each line is written with one `write` and fsynced.
pub(crate) struct Log(fs::File);

impl Log {
    pub(crate) fn open(path: &Path) -> Self {
        Self(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        )
    }
    pub(crate) fn line(&mut self, s: &str) {
        self.0.write_all(format!("{s}\n").as_bytes()).unwrap();
        self.0.sync_data().unwrap();
    }
}
