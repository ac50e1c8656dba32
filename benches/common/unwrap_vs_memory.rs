//! The unwrap-latency group every networked provider's bench shares: one RSA-2048
//! RSA-OAEP-256 unwrap through the provider under test next to the same through the in-memory
//! vault, in one criterion group (`unwrap_rsa2048`) so the ratio reads from one run.

use std::hint::black_box;
use std::sync::Arc;

use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, ProviderFactory, VaultProperties, WrapAlgorithm, WrappedKey,
};
use byok::{KeyProvider, VaultAdmin};
use criterion::{Criterion, Throughput};

/// The wrapped secret every bench unwraps.
pub(crate) const SECRET: [u8; 32] = [0x42; 32];

/// The key name every bench creates.
pub(crate) const KEY: &str = "bench-rsa2048";

/// Wraps [`SECRET`] under the latest version of [`KEY`] with `provider`.
pub(crate) async fn wrap_secret(provider: &dyn KeyProvider) -> WrappedKey {
    provider
        .wrap_key(KEY, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap")
}

/// Runs the group: `name` unwrapping `blob` through `remote`, and the in-memory baseline.
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    name: &str,
    remote: &dyn KeyProvider,
    blob: &WrappedKey,
) {
    let (memory, memory_blob): (Arc<dyn KeyProvider>, WrappedKey) = rt.block_on(async {
        let vault = InMemoryVault::new(VaultProperties::new("bench.vault.example", "r", "t"));
        vault
            .create_key(KEY, KeySpec::Rsa(2048))
            .await
            .expect("create");
        let app = Identity::new("bench-app");
        vault
            .set_access(&app, Permissions::CMK)
            .await
            .expect("access");
        let p = vault.provider_for(&app).await.expect("provider");
        let w = wrap_secret(p.as_ref()).await;
        (p, w)
    });
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("unwrap_rsa2048");
    g.throughput(Throughput::Elements(1));
    g.bench_function("in_memory_vault", |b| {
        b.iter(|| {
            rt.block_on(memory.unwrap_key(black_box(&memory_blob)))
                .expect("unwrap")
        })
    });
    g.bench_function(name, |b| {
        b.iter(|| {
            rt.block_on(remote.unwrap_key(black_box(blob)))
                .expect("unwrap")
        })
    });
    g.finish();
    c.final_summary();
}
