//! Unwrap latency of an RSA-2048-wrapped key: OpenBao Transit on loopback (a real dev server,
//! started for the run) next to the in-memory vault, in one group so the ratio reads from one
//! run.
//!
//! `cargo bench --features transit --bench transit`

use std::hint::black_box;

use byok::provider::ProviderFactory;
use byok::provider::memory::InMemoryVault;
use byok::provider::transit::{TransitAdmin, TransitConfig};
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, SecretString, VaultAdmin};
use criterion::{Criterion, Throughput};

#[path = "../tests/transit_support/mod.rs"]
mod transit_support;

const SECRET: [u8; 32] = [0x42; 32];

fn main() {
    let server = transit_support::Server::start("bench", false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (transit, transit_blob) = rt.block_on(async {
        let admin = TransitAdmin::new(
            TransitConfig::new(&server.addr, SecretString::new(server.root_token.clone()))
                .allow_insecure_http(true),
        )
        .expect("admin");
        admin
            .create_key("bench-rsa2048", KeySpec::Rsa(2048))
            .await
            .expect("create");
        let app = Identity::new("bench-app");
        admin
            .set_access(&app, Permissions::CMK)
            .await
            .expect("access");
        let p = admin.provider_for(&app).await.expect("provider");
        let w = p
            .wrap_key("bench-rsa2048", None, WrapAlgorithm::RsaOaep256, &SECRET)
            .await
            .expect("wrap");
        (p, w)
    });
    let (memory, memory_blob) = rt.block_on(async {
        let vault = InMemoryVault::new(VaultProperties::new("bench.vault.example", "r", "t"));
        vault
            .create_key("bench-rsa2048", KeySpec::Rsa(2048))
            .await
            .expect("create");
        let app = Identity::new("bench-app");
        vault
            .set_access(&app, Permissions::CMK)
            .await
            .expect("access");
        let p = vault.provider_for(&app).await.expect("provider");
        let w = p
            .wrap_key("bench-rsa2048", None, WrapAlgorithm::RsaOaep256, &SECRET)
            .await
            .expect("wrap");
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
    g.bench_function("openbao_transit_loopback", |b| {
        b.iter(|| {
            rt.block_on(transit.unwrap_key(black_box(&transit_blob)))
                .expect("unwrap")
        })
    });
    g.finish();
    c.final_summary();
    server.stop();
}
