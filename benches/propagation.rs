//! How fast a revocation committed by one replica reaches another over PostgreSQL: the
//! distribution of "A commits a revocation → B's first refusal", on loopback, for two
//! `AccountManager`s on two `PostgresAccountStore` connections to a private throwaway cluster
//! (`tests/pg_support`, `fsync=off`).
//!
//! Each trial: B serves the account from a warm cache and polls `decrypt` from its own thread
//! (a 100 µs sleep between calls); after a random pause (1–20 ms; up to `record_max_age`
//! without notifications, so that B's copy is of any age) the tenant's access is cut; A's
//! `check` observes it and
//! commits `KeyInaccessible`; the time until B's first refusal is recorded. Then access is
//! restored, A's `check` commits `Active` and B serves again before the next trial.
//!
//! * **with notifications**: B's store listens (`LISTEN`/`NOTIFY`); B's `record_max_age` is
//!   30 s, so only the change hint explains a fast refusal (goal: p99 under 50 ms);
//! * **without notifications** (`PostgresStoreOptions::notifications(false)`): B's
//!   `record_max_age` is 200 ms, the fallback bound.
//!
//! `cargo bench --features postgres,testing --bench propagation`
//! (`PROPAGATION_TRIALS` / `PROPAGATION_FALLBACK_TRIALS` change the trial counts, default 300
//! and 60; without `--bench`, e.g. under `cargo test --benches`, a short smoke run.)

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use byok::account::{NewAccount, StateKind};
use byok::clock::SystemClock;
use byok::store::{
    AccountStore, ChangeListener, PostgresAccountStore, PostgresStoreOptions, StoreChange,
};
use byok::{AccountId, AccountManager, Error, KeySource, Policy, ProviderErrorKind};
use common::{REGION, TENANT, World, class};

/// One trial, in milliseconds (negative: B refused before A's `check` returned).
struct Sample {
    /// From the return of A's `check` (the commit acknowledged) to B's first refusal.
    after_commit: f64,
    /// From the start of A's `check` (probe + commit + propagation).
    after_start: f64,
}

/// Set once a store's listening connection runs `LISTEN` (it sends `Unknown` then).
#[derive(Default)]
struct Up(AtomicBool);

impl ChangeListener for Up {
    fn changed(&self, change: StoreChange) {
        if change == StoreChange::Unknown {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (hinted_trials, fallback_trials) = if full {
        (
            env_count("PROPAGATION_TRIALS", 300),
            env_count("PROPAGATION_FALLBACK_TRIALS", 60),
        )
    } else {
        (10, 5)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = pg_support::Cluster::start("propagation");
    let (url, _) = cluster.database("propagation");
    println!(
        "propagation of a revocation between two replicas (PostgreSQL {}, loopback, {} cores)",
        cluster.psql("postgres", "SHOW server_version"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    rt.block_on(run(&url, hinted_trials, fallback_trials));
    drop(rt);
    cluster.stop_server();
}

async fn connect(url: &str, options: PostgresStoreOptions) -> Arc<dyn AccountStore> {
    Arc::new(
        PostgresAccountStore::connect_with(url, options)
            .await
            .expect("connect"),
    )
}

fn replica(w: &World, store: Arc<dyn AccountStore>, record_max_age: Duration) -> AccountManager {
    w.replica_builder(store, w.directory.clone())
        .clock(Arc::new(SystemClock))
        .record_max_age(record_max_age)
        .build()
}

async fn run(url: &str, hinted_trials: usize, fallback_trials: usize) {
    let w = World::new().await;
    let a = replica(
        &w,
        connect(url, PostgresStoreOptions::new()).await,
        byok::account::DEFAULT_RECORD_MAX_AGE,
    );
    let key = w.cmk("propagation-key", 2048).await;
    let id = AccountId::new("propagation").expect("id");
    a.create_account(
        NewAccount::new(id.clone(), REGION, TENANT, Policy::builder("bench").build())
            .key_source(KeySource::customer(key, w.identity.clone())),
    )
    .await
    .expect("create");
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");

    // With notifications: B would otherwise keep its copy for 30 s.
    let b_store = connect(url, PostgresStoreOptions::new()).await;
    let up = Arc::new(Up::default());
    let weak: Weak<dyn ChangeListener> = Arc::downgrade(&up) as Weak<dyn ChangeListener>;
    assert!(b_store.subscribe(weak));
    let b = replica(&w, b_store, Duration::from_secs(30));
    // B's listening connection is up once it sends its first `Unknown`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.0.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "B's listener did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rig = Rig {
        w: &w,
        a: &a,
        id: &id,
        obj: &obj,
        limit: Duration::from_secs(5),
    };
    let hinted = rig.trials(&b, hinted_trials, (1, 20)).await;
    drop(b);

    // Without notifications: B re-reads its copy every 200 ms.
    let max_age = Duration::from_millis(200);
    let b = replica(
        &w,
        connect(url, PostgresStoreOptions::new().notifications(false)).await,
        max_age,
    );
    // A pause of up to record_max_age before each cut: B's copy is of any age when A commits.
    let settle = (1, max_age.as_millis() as u64);
    let fallback = rig.trials(&b, fallback_trials, settle).await;

    println!();
    report(
        &format!("with notifications (B record_max_age 30 s), {hinted_trials} trials"),
        &hinted,
    );
    report(
        &format!("without notifications (B record_max_age {max_age:?}), {fallback_trials} trials"),
        &fallback,
    );
    let p99 = percentile(&sorted(hinted.iter().map(|s| s.after_commit)), 0.99);
    println!(
        "goal (issue): p99 under 50 ms with notifications: {} (p99 {p99:.2} ms)",
        if p99 < 50.0 { "met" } else { "NOT met" }
    );
}

/// The world, replica A, the account and its object, and how long B may take.
struct Rig<'a> {
    w: &'a World,
    a: &'a AccountManager,
    id: &'a AccountId,
    obj: &'a [u8],
    limit: Duration,
}

impl Rig<'_> {
    /// `n` trials against replica `b`, each after a pause drawn from `settle_ms`.
    async fn trials(&self, b: &AccountManager, n: usize, settle_ms: (u64, u64)) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(n);
        let mut jitter = Jitter::new();
        for _ in 0..n {
            self.restore(b).await;
            let settle = jitter.next_ms(settle_ms.0, settle_ms.1);
            samples.push(self.trial(b, settle).await);
        }
        self.restore(b).await;
        samples
    }

    /// Restores access, commits `Active` through A and waits until B serves (warm) again.
    async fn restore(&self, b: &AccountManager) {
        let Rig {
            w,
            a,
            id,
            obj,
            limit,
        } = *self;
        w.faults.restore();
        assert_eq!(a.probe(id).await.expect("restore"), StateKind::Active);
        let deadline = Instant::now() + limit;
        while b.decrypt(id, b"o", obj).await.is_err() {
            assert!(Instant::now() < deadline, "B did not serve again");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn trial(&self, b: &AccountManager, settle: Duration) -> Sample {
        let Rig {
            w,
            a,
            id,
            obj,
            limit,
        } = *self;
        // B polls from its own thread, driving its futures on this runtime's handle.
        let poller = {
            let (b, id, obj) = (b.clone(), id.clone(), obj.to_vec());
            let handle = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let deadline = Instant::now() + limit;
                loop {
                    match handle.block_on(b.decrypt(&id, b"o", &obj)) {
                        Ok(_) => {}
                        Err(Error::KeyInaccessible { .. }) => return Some(Instant::now()),
                        Err(e) => panic!("B: {e:?}"),
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        tokio::time::sleep(settle).await;
        w.faults.cut(ProviderErrorKind::Forbidden);
        let started = Instant::now();
        let r = a.probe(id).await;
        let committed = Instant::now();
        assert!(
            matches!(r, Err(Error::KeyInaccessible { .. })),
            "A's check: {r:?}"
        );
        let refused = tokio::task::spawn_blocking(move || poller.join())
            .await
            .expect("join")
            .expect("poller")
            .unwrap_or_else(|| panic!("B still served {limit:?} after the revocation"));
        let ms = |from: Instant| {
            if refused >= from {
                (refused - from).as_secs_f64() * 1e3
            } else {
                -(from - refused).as_secs_f64() * 1e3
            }
        };
        Sample {
            after_commit: ms(committed),
            after_start: ms(started),
        }
    }
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn report(title: &str, samples: &[Sample]) {
    println!("{title}:");
    for (what, v) in [
        (
            "A's commit returned → B's first refusal",
            sorted(samples.iter().map(|s| s.after_commit)),
        ),
        (
            "A's check began    → B's first refusal",
            sorted(samples.iter().map(|s| s.after_start)),
        ),
    ] {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "  {what}: min {:8.2}  p50 {:8.2}  p90 {:8.2}  p99 {:8.2}  max {:8.2}  mean {:8.2} ms",
            v[0],
            percentile(&v, 0.5),
            percentile(&v, 0.9),
            percentile(&v, 0.99),
            v[v.len() - 1],
            mean
        );
    }
    let early = samples.iter().filter(|s| s.after_commit < 0.0).count();
    if early > 0 {
        println!("  ({early} trials: B refused before A's check returned)");
    }
}

/// A small xorshift for the pause before each cut (no `rand` dependency).
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self(seed)
    }

    fn next_ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo + 1))
    }
}
