//! The account layer's cost per object on top of the envelope: `AccountManager::encrypt` /
//! `decrypt` (record freshness, state gate, cached prepared key, header lookup), called in a
//! loop inside one task as a service calls them, next to `Envelope::seal` / `open` in one
//! group, so the difference is read from one run. The customer key
//! (in-memory vault, RSA 2048) is contacted once per cache period, not per object.
//!
//! A second group, `accounts/threads`, seals 4096 objects of 1 KiB on one account from one
//! thread and from two threads (2048 each): the ratio of the two times is the scaling of the
//! hot path (the goal is ≥ 1.8× on two cores). The same group holds the machine's ceiling (the
//! envelope alone, each thread with its own key) and two threads on two accounts.
//!
//! `cargo bench --bench accounts -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use byok::account::{DataClass, NewAccount, PlatformKey};
use byok::envelope::{AccountKey, PreparedKey};
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
};
use byok::{AccountId, AccountManager, AesKey, Envelope, KeyId, KeySource, Policy, VaultAdmin};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (manager, id) = rt.block_on(async {
        let service = Identity::new("svc");
        let platform = InMemoryVault::new(VaultProperties::new("platform.internal", "r", "op"));
        platform
            .create_key("kek", KeySpec::Aes256)
            .await
            .expect("kek");
        platform
            .set_access(&service, Permissions::CMK)
            .await
            .expect("grant");
        let tenant = InMemoryVault::new(VaultProperties::new("t.vault.example", "r", "t"));
        tenant
            .create_key("cmk", KeySpec::Rsa(2048))
            .await
            .expect("cmk");
        let uami = Identity::new("uami");
        tenant
            .set_access(&uami, Permissions::CMK)
            .await
            .expect("grant");
        let dir = Arc::new(VaultDirectory::new());
        dir.add_vault("t.vault.example", Arc::new(tenant));
        let m = AccountManager::builder(
            PlatformKey::new(
                Arc::new(platform.provider(&service)),
                "kek",
                WrapAlgorithm::A256Kw,
            ),
            dir,
        )
        .audit(Arc::new(byok::audit::MemoryAuditSink::new()))
        .build();
        let key = KeyId::new("t.vault.example", "cmk", None).expect("key");
        for name in ["bench", "bench-2"] {
            m.create_account(
                NewAccount::new(
                    AccountId::new(name).expect("id"),
                    "r",
                    "t",
                    Policy::builder("bench").build(),
                )
                .key_source(KeySource::customer(key.clone(), uami.clone())),
            )
            .await
            .expect("account");
        }
        (m, AccountId::new("bench").expect("id"))
    });
    let class = DataClass::new("blob");
    let ak = AccountKey::new("ak", 1, AesKey::from_bytes([1; 32])).expect("key");
    let prepared = PreparedKey::new("bench", &ak).expect("prepared");
    let env = Envelope::new(&prepared);
    for (size, name) in [(1usize << 10, "accounts/1KiB"), (1 << 20, "accounts/1MiB")] {
        let pt = vec![0x5Au8; size];
        let obj = rt
            .block_on(manager.encrypt(&id, &class, b"o", &pt))
            .expect("encrypt");
        let env_obj = env.seal(b"o", &pt).expect("seal");
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("envelope_seal", |b| {
            b.iter(|| env.seal(b"o", black_box(&pt)))
        });
        g.bench_function("envelope_open", |b| {
            b.iter(|| env.open(b"o", black_box(&env_obj)))
        });
        // The account calls run inside one task, as a service calls them (no runtime entry
        // per object).
        g.bench_function("account_encrypt", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(manager.encrypt(&id, &class, b"o", black_box(&pt)).await)
                            .expect("encrypt");
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function("account_decrypt", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(manager.decrypt(&id, b"o", black_box(&obj)).await)
                            .expect("decrypt");
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
    }
    threads(c, &manager, &id);
}

/// 4096 one-KiB seals: one thread on one account; two threads (2048 each) on the same account;
/// two threads on two accounts.
fn threads(c: &mut Criterion, manager: &AccountManager, id: &AccountId) {
    const OBJECTS: usize = 4096;
    let class = DataClass::new("blob");
    let pt = vec![0x5Au8; 1024];
    let other = AccountId::new("bench-2").expect("id");
    let run = |id: &AccountId, n: usize| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for _ in 0..n {
                black_box(manager.encrypt(id, &class, b"o", &pt).await.expect("seal"));
            }
        });
    };
    run(&other, 1);
    // The platform's own ceiling: the envelope alone, each thread with its own key (no shared
    // state at all), one thread and two.
    let envelope_only = |n: usize, b: u8| {
        let ak = AccountKey::new("ak", 1, AesKey::from_bytes([b; 32])).expect("key");
        let key = PreparedKey::new("bench", &ak).expect("prepared");
        let env = Envelope::new(&key);
        for _ in 0..n {
            black_box(env.seal(b"o", &pt).expect("seal"));
        }
    };
    let mut g = c.benchmark_group("accounts/threads");
    g.throughput(Throughput::Elements(OBJECTS as u64));
    g.bench_function("envelope_one_thread", |b| {
        b.iter(|| envelope_only(OBJECTS, 1))
    });
    g.bench_function("envelope_two_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| envelope_only(OBJECTS / 2, 2));
                envelope_only(OBJECTS / 2, 1);
            })
        })
    });
    g.bench_function("one_thread", |b| b.iter(|| run(id, OBJECTS)));
    g.bench_function("two_threads_one_account", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| run(id, OBJECTS / 2));
                run(id, OBJECTS / 2);
            })
        })
    });
    g.bench_function("two_threads_two_accounts", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| run(&other, OBJECTS / 2));
                run(id, OBJECTS / 2);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
