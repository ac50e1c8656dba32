//! Unwrap latency of an RSA-2048-wrapped key: Azure Key Vault's SDK (byok's provider) against
//! the loopback HTTPS contract server (`tests/azure_support`, started for the run — a contract
//! test server, not Azure) next to the in-memory vault, in one group so the ratio reads from
//! one run.
//!
//! `cargo bench --features azure,testing --bench azure`

use std::hint::black_box;

use byok::provider::ProviderFactory;
use byok::provider::azure::{AzureCredential, AzureKeyVaultAdmin, AzureKeyVaultConfig};
use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, SecretString, VaultAdmin};
use criterion::{Criterion, Throughput};

#[path = "../tests/azure_support/mod.rs"]
mod azure_support;

const SECRET: [u8; 32] = [0x42; 32];

fn main() {
    let server = azure_support::ContractServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (azure, azure_blob) = rt.block_on(async {
        let owner = azure_support::OWNER;
        let config = AzureKeyVaultConfig::new(
            &server.vault_url,
            AzureCredential::client_secret(
                azure_support::TENANT,
                owner,
                SecretString::new(azure_support::secret_of(owner)),
            ),
        )
        .authority_host(&server.authority)
        .ca_pem(&server.ca_pem)
        .only_given_ca()
        .resolve(azure_support::VAULT_HOST, server.addr)
        .resolve(azure_support::LOGIN_HOST, server.addr);
        let admin = AzureKeyVaultAdmin::new(config).expect("admin");
        admin
            .create_key("bench-rsa2048", KeySpec::Rsa(2048))
            .await
            .expect("create");
        let p = admin.owner_provider().expect("provider");
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
    g.bench_function("azure_key_vault_contract_server_loopback", |b| {
        b.iter(|| {
            rt.block_on(azure.unwrap_key(black_box(&azure_blob)))
                .expect("unwrap")
        })
    });
    g.finish();
    c.final_summary();
    drop(server);
}
