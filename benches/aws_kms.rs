//! Unwrap latency of an RSA-2048-wrapped key: AWS KMS `Decrypt` against LocalStack on loopback
//! (a real emulator over HTTPS with SigV4 signing, started for the run) next to the in-memory
//! vault, in one group so the ratio reads from one run. LocalStack is Python: the figure is an
//! upper bound of byok's own cost per unwrap, not a forecast of AWS's latency.
//!
//! `cargo bench --features aws-kms --bench aws_kms`

use std::hint::black_box;

use byok::provider::ProviderFactory;
use byok::provider::aws::aws_credential_types::Credentials;
use byok::provider::aws::{AwsKmsAdmin, AwsKmsConfig};
use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, VaultAdmin};
use criterion::{Criterion, Throughput};

#[path = "../tests/aws_support/mod.rs"]
mod aws_support;

const SECRET: [u8; 32] = [0x42; 32];

fn main() {
    let server = aws_support::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (aws, aws_blob) = rt.block_on(async {
        let config = AwsKmsConfig::new(
            &server.vault(),
            Credentials::new("test", "test", None, None, "bench"),
        )
        .expect("config")
        .endpoint(&server.endpoint)
        .ca_pem(&server.ca_pem);
        let admin = AwsKmsAdmin::new(config).expect("admin");
        let name = format!("bench-rsa2048-{}", std::process::id());
        admin
            .create_key(&name, KeySpec::Rsa(2048))
            .await
            .expect("create");
        let p = admin
            .provider_for(&Identity::new("bench-app"))
            .await
            .expect("provider");
        let w = p
            .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
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
    g.bench_function("aws_kms_localstack_loopback", |b| {
        b.iter(|| {
            rt.block_on(aws.unwrap_key(black_box(&aws_blob)))
                .expect("unwrap")
        })
    });
    g.finish();
    c.final_summary();
}
