//! Quickstart: an in-memory vault plays the tenant's key vault. Make a key, wrap and unwrap
//! an account key, rotate, disable the key, and see the typed error.
//!
//! Run: `cargo run --example quickstart`

use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm};
use byok::{AesKey, KeyProvider, ProviderErrorKind, VaultAdmin};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The tenant's vault, with soft-delete and purge protection on.
    let vault = InMemoryVault::new(VaultProperties::new(
        "contoso.vault.example",
        "westeurope",
        "tenant-contoso",
    ));

    // The tenant (vault owner) creates an RSA key and grants our service's identity exactly
    // get + wrapKey + unwrapKey.
    let cmk = vault.create_key("contoso-cmk", KeySpec::Rsa(2048)).await?;
    println!(
        "created key {} version {} ({})",
        cmk.name, cmk.version, cmk.key_type
    );
    let service = Identity::new("our-service");
    vault.set_access(&service, Permissions::CMK).await?;

    // Our service wraps its account key under the customer's key...
    let provider = vault.provider(&service);
    let account_key = AesKey::generate();
    let wrapped = provider
        .wrap_key(
            "contoso-cmk",
            None,
            WrapAlgorithm::RsaOaep256,
            account_key.expose_secret(),
        )
        .await?;
    println!(
        "wrapped the account key under {} version {} with {}",
        wrapped.key_name, wrapped.key_version, wrapped.algorithm
    );

    // ...and unwraps it when it needs it.
    let unwrapped = provider.unwrap_key(&wrapped).await?;
    assert_eq!(unwrapped.expose_secret(), account_key.expose_secret());
    println!(
        "unwrapped it again: {} bytes (never printed)",
        unwrapped.len()
    );

    // The tenant rotates: a versionless lookup now resolves to the new version, and the old
    // wrapping still unwraps with the version it names.
    let v2 = vault.rotate_key("contoso-cmk").await?;
    let latest = provider.key_properties("contoso-cmk", None).await?;
    assert_eq!(latest.version, v2.version);
    println!("rotated: latest version is now {}", latest.version);
    provider.unwrap_key(&wrapped).await?;
    println!(
        "the wrapping made under version {} still unwraps",
        wrapped.key_version
    );

    // The tenant disables the version that wrapped our key: unwrapping fails with a typed,
    // definitive error (the account layer turns this into KeyInaccessible / HTTP 403).
    vault
        .set_enabled("contoso-cmk", &wrapped.key_version, false)
        .await?;
    match provider.unwrap_key(&wrapped).await {
        Err(e) if e.kind() == ProviderErrorKind::KeyDisabled => println!(
            "after disable: {e} (definitive: {}, HTTP {})",
            e.is_definitive(),
            e.kind().http_status()
        ),
        other => return Err(format!("expected KeyDisabled, got {other:?}").into()),
    }
    Ok(())
}
