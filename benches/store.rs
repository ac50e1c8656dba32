//! Account store throughput: `get` and compare-and-swap `update` (one record, sequential, on a
//! tokio runtime) on `InMemoryAccountStore`, `SqliteAccountStore` (a file under the system
//! temp dir; WAL, `synchronous = FULL`) and `PostgresAccountStore` (a private throwaway
//! cluster with `fsync=off`, over loopback TCP), one group per operation so the stores are
//! compared within one run.
//!
//! `cargo bench --features postgres,sqlite,testing --bench store -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::hint::black_box;
use std::sync::Arc;

use byok::AccountId;
use byok::account::AccountRecord;
use byok::store::{AccountStore, InMemoryAccountStore, PostgresAccountStore, SqliteAccountStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A realistic record: borrowed from a conformance run (records are built by the crate).
async fn sample_record() -> AccountRecord {
    let scratch = InMemoryAccountStore::new();
    byok::testing::store_conformance::run(&scratch)
        .await
        .assert_passed();
    let mut r = scratch
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|r| r.account_key.is_some())
        .expect("a live record");
    r.id = AccountId::new("bench-account").expect("id");
    r.revision = 1;
    r
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = pg_support::Cluster::start("bench");
    let (url, _) = cluster.database("bench");
    let dir = std::env::temp_dir().join(format!("byok-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (record, stores) = rt.block_on(async {
        let record = sample_record().await;
        let stores: Vec<(&str, Arc<dyn AccountStore>)> = vec![
            ("in_memory", Arc::new(InMemoryAccountStore::new())),
            (
                "sqlite",
                Arc::new(
                    SqliteAccountStore::open(dir.join("bench.db"))
                        .await
                        .expect("sqlite"),
                ),
            ),
            (
                "postgres",
                Arc::new(PostgresAccountStore::connect(&url).await.expect("postgres")),
            ),
        ];
        for (_, s) in &stores {
            s.create(&record).await.expect("seed");
        }
        (record, stores)
    });

    let mut g = c.benchmark_group("store_get");
    g.throughput(Throughput::Elements(1));
    for (name, store) in &stores {
        g.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(store.get(black_box(&record.id)))
                    .expect("get")
                    .expect("present")
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("store_update_cas");
    g.throughput(Throughput::Elements(1));
    for (name, store) in &stores {
        let mut current = rt
            .block_on(store.get(&record.id))
            .expect("get")
            .expect("present");
        g.bench_function(*name, |b| {
            b.iter(|| {
                current.revision += 1;
                current.updated += std::time::Duration::from_nanos(1);
                rt.block_on(store.update(black_box(&current)))
                    .expect("update")
            })
        });
    }
    g.finish();
    drop(stores);
    drop(rt);
    cluster.stop_server();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
