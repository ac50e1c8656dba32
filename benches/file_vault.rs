//! Unwrap through the file vault against the in-memory vault, RSA 2048/3072/4096, in one
//! group so the ratio is read from one run; plus a cheap call (`key_properties`) that shows
//! the file vault's fixed per-call cost (one `stat` of the state file) on its own.
//!
//! `cargo bench --bench file_vault` (short run: append
//! `-- --warm-up-time 1 --measurement-time 3`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use byok::provider::file::{Argon2Params, FileVault, FileVaultOptions};
use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, SecretString, VaultAdmin};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn unwrap(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("byok-bench-file-vault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let props = VaultProperties::new("bench.vault.example", "westeurope", "t");
    // The KDF runs only at open; cheap parameters keep the set-up short.
    let opts = FileVaultOptions::from_passphrase(SecretString::from("bench"))
        .argon2(Argon2Params::new(64, 1, 1));
    let file = FileVault::create(&dir, props.clone(), &opts).unwrap();
    let memory = InMemoryVault::new(props);
    let app = Identity::new("app");
    let (pf, pm) = rt.block_on(async {
        file.set_access(&app, Permissions::CMK).await.unwrap();
        memory.set_access(&app, Permissions::CMK).await.unwrap();
        (file.provider(&app), memory.provider(&app))
    });

    let mut group = c.benchmark_group("unwrap");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for bits in [2048u32, 3072, 4096] {
        let name = format!("rsa{bits}");
        let (wf, wm) = rt.block_on(async {
            file.create_key(&name, KeySpec::Rsa(bits)).await.unwrap();
            memory.create_key(&name, KeySpec::Rsa(bits)).await.unwrap();
            let wf = pf
                .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &[7; 32])
                .await
                .unwrap();
            let wm = pm
                .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &[7; 32])
                .await
                .unwrap();
            (wf, wm)
        });
        group.bench_with_input(BenchmarkId::new("in-memory", bits), &wm, |b, w| {
            b.iter(|| rt.block_on(pm.unwrap_key(w)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("file", bits), &wf, |b, w| {
            b.iter(|| rt.block_on(pf.unwrap_key(w)).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("key_properties");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("in-memory", |b| {
        b.iter(|| rt.block_on(pm.key_properties("rsa2048", None)).unwrap())
    });
    group.bench_function("file", |b| {
        b.iter(|| rt.block_on(pf.key_properties("rsa2048", None)).unwrap())
    });
    group.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

criterion_group!(benches, unwrap);
criterion_main!(benches);
