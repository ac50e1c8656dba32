//! Unwrap latency of an RSA-2048-wrapped key: Azure Key Vault's SDK (byok's provider) against
//! the loopback HTTPS contract server (`tests/azure_support`, started for the run — a contract
//! test server, not Azure) next to the in-memory vault, in one group so the ratio reads from
//! one run.
//!
//! `cargo bench --features azure,testing --bench azure`

use byok::provider::KeySpec;
use byok::provider::azure::{AzureCredential, AzureKeyVaultAdmin, AzureKeyVaultConfig};
use byok::{SecretString, VaultAdmin};

#[path = "../tests/azure_support/mod.rs"]
mod azure_support;

#[path = "common/unwrap_vs_memory.rs"]
mod unwrap_vs_memory;

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
            .create_key(unwrap_vs_memory::KEY, KeySpec::Rsa(2048))
            .await
            .expect("create");
        let p = admin.owner_provider().expect("provider");
        let w = unwrap_vs_memory::wrap_secret(&p).await;
        (p, w)
    });
    unwrap_vs_memory::run(
        &rt,
        "azure_key_vault_contract_server_loopback",
        &azure,
        &azure_blob,
    );
    drop(server);
}
