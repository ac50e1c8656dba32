//! Unwrap latency of an RSA-2048-wrapped key: AWS KMS `Decrypt` against LocalStack on loopback
//! (a real emulator over HTTPS with SigV4 signing, started for the run) next to the in-memory
//! vault, in one group so the ratio reads from one run. LocalStack is Python: the figure is an
//! upper bound of byok's own cost per unwrap, not a forecast of AWS's latency.
//!
//! `cargo bench --features aws-kms --bench aws_kms`

use byok::provider::ProviderFactory;
use byok::provider::aws::aws_credential_types::Credentials;
use byok::provider::aws::{AwsKmsAdmin, AwsKmsConfig};
use byok::provider::{Identity, KeySpec, WrapAlgorithm};
use byok::{KeyProvider, VaultAdmin};

#[path = "../tests/aws_support/mod.rs"]
mod aws_support;

#[path = "common/unwrap_vs_memory.rs"]
mod unwrap_vs_memory;

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
            .wrap_key(
                &name,
                None,
                WrapAlgorithm::RsaOaep256,
                &unwrap_vs_memory::SECRET,
            )
            .await
            .expect("wrap");
        (p, w)
    });
    unwrap_vs_memory::run(&rt, "aws_kms_localstack_loopback", aws.as_ref(), &aws_blob);
}
