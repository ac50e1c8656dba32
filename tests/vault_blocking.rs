//! Blocking work in the software vaults runs off the caller's executor: on a current-thread
//! tokio runtime, a ticker task keeps ticking while an RSA-4096 `create_key` (seconds of key
//! generation), RSA unwraps (milliseconds each) and a file vault's Argon2id open and fsyncs run.
//!
//! Each test repeats its vault call for at least `MIN_WORK`, measures how long that took and
//! how many 5 ms ticks the ticker got in that time; if the work ran on the runtime's only
//! thread the ticker would get none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use byok::provider::file::{Argon2Params, FileVault, FileVaultOptions};
use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, SecretString, VaultAdmin};

const TICK: Duration = Duration::from_millis(5);
/// How long each workload runs at least (it repeats its operation until then): long enough
/// for a fair count of ticks however fast the backend is.
const MIN_WORK: Duration = Duration::from_millis(150);

fn props() -> VaultProperties {
    VaultProperties::new("blocking.vault.example", "westeurope", "tenant-1")
}

/// Runs `work` on a current-thread runtime beside a ticker; returns the work's output, how
/// long it took and how many ticks happened meanwhile.
fn with_ticker<F: Future>(work: impl FnOnce() -> F) -> (F::Output, Duration, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let ticks = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            let mut iv = tokio::time::interval(TICK);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                iv.tick().await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the ticker start.
        tokio::time::sleep(TICK * 2).await;
        let before = ticks.load(Ordering::Relaxed);
        let start = Instant::now();
        let out = work().await;
        let took = start.elapsed();
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        (out, took, during)
    })
}

/// The ticker got at least a fifth of the ticks that fit into `took`, and at least two (a
/// blocked runtime gets none: the count is read before the ticker can run again), and the
/// work was long enough for that to mean something. (Measured on the 2-core CI machine kind
/// under load: 40–70 % of the ticks.)
fn assert_ran_beside(what: &str, took: Duration, ticks: u64) {
    let fit = took.as_millis() as u64 / TICK.as_millis() as u64;
    println!("{what}: {took:?}, ticker ticked {ticks} times of {fit}");
    assert!(took >= TICK * 8, "{what} took {took:?}: too short to tell");
    assert!(
        ticks * 5 >= fit && ticks >= 2,
        "{what} starved the runtime: {ticks} ticks in {took:?} (≈ {fit} expected)"
    );
}

#[test]
fn rsa_4096_create_key_leaves_a_current_thread_runtime_running() {
    let vault = InMemoryVault::new(props());
    let (r, took, ticks) = with_ticker(|| async {
        let start = Instant::now();
        let mut n = 0;
        while n == 0 || start.elapsed() < MIN_WORK {
            let key = vault
                .create_key(&format!("big{n}"), KeySpec::Rsa(4096))
                .await?;
            assert_eq!(key.key_type, byok::provider::KeyType::Rsa { bits: 4096 });
            n += 1;
        }
        Ok::<_, byok::ProviderError>(n)
    });
    let n = r.unwrap();
    assert_ran_beside(&format!("in-memory RSA-4096 create_key x{n}"), took, ticks);
}

#[test]
fn rsa_unwraps_leave_a_current_thread_runtime_running() {
    let vault = InMemoryVault::new(props());
    let app = Identity::new("app");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let wrapped = rt.block_on(async {
        vault.create_key("k", KeySpec::Rsa(4096)).await.unwrap();
        vault.set_access(&app, Permissions::CMK).await.unwrap();
        vault
            .provider(&app)
            .wrap_key("k", None, WrapAlgorithm::RsaOaep256, &[7; 32])
            .await
            .unwrap()
    });
    let p = vault.provider(&app);
    let (r, took, ticks) = with_ticker(|| async {
        let start = Instant::now();
        let mut n = 0;
        while n < 20 || start.elapsed() < MIN_WORK {
            let k = p.unwrap_key(&wrapped).await?;
            assert_eq!(k.expose_secret(), &[7; 32]);
            n += 1;
        }
        Ok::<_, byok::ProviderError>(n)
    });
    let n = r.unwrap();
    assert_ran_beside(&format!("{n} RSA-4096 unwraps"), took, ticks);
}

fn fresh_dir(tag: &str) -> PathBuf {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vault_blocking");
    std::fs::create_dir_all(&base).unwrap();
    base.join(format!("{tag}-{}-{t}", std::process::id()))
}

#[test]
fn file_vault_argon2id_fsync_and_rsa_leave_a_current_thread_runtime_running() {
    // Argon2id with 64 MiB and 3 passes: well over 40 ms on any machine.
    let options = FileVaultOptions::from_passphrase(SecretString::from("blocking test"))
        .argon2(Argon2Params::new(64 * 1024, 3, 1));
    let dir = fresh_dir("file");
    let (r, took, ticks) = with_ticker(|| FileVault::create_async(&dir, props(), options.clone()));
    let vault = r.unwrap();
    assert_ran_beside("file vault create_async (Argon2id)", took, ticks);

    let (r, took, ticks) = with_ticker(|| FileVault::open_async(&dir, options.clone()));
    r.unwrap();
    assert_ran_beside("file vault open_async (Argon2id)", took, ticks);

    let (r, took, ticks) = with_ticker(|| async {
        let start = Instant::now();
        vault.create_key("big", KeySpec::Rsa(4096)).await?;
        let mut n = 0;
        while n < 20 || start.elapsed() < MIN_WORK {
            vault.set_enabled("big", "1", n % 2 == 1).await?;
            n += 1;
        }
        Ok::<_, byok::ProviderError>(n)
    });
    let n = r.unwrap();
    assert_ran_beside(
        &format!("file vault RSA-4096 create_key and {n} changes"),
        took,
        ticks,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
