//! Unwrap latency of an RSA-2048-wrapped key: OpenBao Transit on loopback (a real dev server,
//! started for the run) next to the in-memory vault, in one group so the ratio reads from one
//! run.
//!
//! `cargo bench --features transit --bench transit`

use byok::provider::ProviderFactory;
use byok::provider::transit::{TransitAdmin, TransitConfig};
use byok::provider::{Identity, KeySpec, Permissions};
use byok::{SecretString, VaultAdmin};

#[path = "../tests/transit_support/mod.rs"]
mod transit_support;

#[path = "common/unwrap_vs_memory.rs"]
mod unwrap_vs_memory;

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
            .create_key(unwrap_vs_memory::KEY, KeySpec::Rsa(2048))
            .await
            .expect("create");
        let app = Identity::new("bench-app");
        admin
            .set_access(&app, Permissions::CMK)
            .await
            .expect("access");
        let p = admin.provider_for(&app).await.expect("provider");
        let w = unwrap_vs_memory::wrap_secret(p.as_ref()).await;
        (p, w)
    });
    unwrap_vs_memory::run(
        &rt,
        "openbao_transit_loopback",
        transit.as_ref(),
        &transit_blob,
    );
    server.stop();
}
