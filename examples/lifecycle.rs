//! The customer-managed-key lifecycle of one tenant account, step by step: a platform-keyed
//! account becomes customer-keyed, rotates automatically, the customer revokes the key
//! (writes fail with 403, GET/LIST/DELETE still work), restores it, and everything opens again.
//!
//! Run: `cargo run --example lifecycle`

use std::sync::Arc;

use byok::account::{DataClass, NewAccount, Operation, PlatformKey};
use byok::audit::MemoryAuditSink;
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
};
use byok::{AccountId, AccountManager, KeyId, Policy, VaultAdmin};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The service's own platform and infrastructure keys (AES-256, A256KW).
    let service = Identity::new("media-service");
    let platform = InMemoryVault::new(VaultProperties::new(
        "platform.internal",
        "westeurope",
        "operator",
    ));
    platform.create_key("platform-kek", KeySpec::Aes256).await?;
    platform.set_access(&service, Permissions::CMK).await?;
    let infra = InMemoryVault::new(VaultProperties::new(
        "infra.internal",
        "westeurope",
        "operator",
    ));
    infra.create_key("infra-kek", KeySpec::Aes256).await?;
    infra.set_access(&service, Permissions::CMK).await?;

    // The tenant's vault (soft-delete and purge protection on), reachable by host.
    let tenant_vault = InMemoryVault::new(VaultProperties::new(
        "contoso.vault.example",
        "westeurope",
        "contoso",
    ));
    let directory = Arc::new(VaultDirectory::new());
    directory.add_vault("contoso.vault.example", Arc::new(tenant_vault.clone()));

    let audit = Arc::new(MemoryAuditSink::new());
    let manager = AccountManager::builder(
        PlatformKey::new(
            Arc::new(platform.provider(&service)),
            "platform-kek",
            WrapAlgorithm::A256Kw,
        ),
        directory.clone(),
    )
    .infrastructure_key(PlatformKey::new(
        Arc::new(infra.provider(&service)),
        "infra-kek",
        WrapAlgorithm::A256Kw,
    ))
    .audit(audit.clone())
    .build();

    // 1. An account under the platform key (Media Services rules).
    let id = AccountId::new("contoso-media")?;
    manager
        .create_account(NewAccount::new(
            id.clone(),
            "westeurope",
            "contoso",
            Policy::media_services(),
        ))
        .await?;
    let video = DataClass::new("asset");
    let asset = manager
        .encrypt(&id, &video, b"assets/intro.mp4", b"<video bytes>")
        .await?;
    let ck = manager
        .seal_field(&id, b"contentKey/intro", &[0x42; 16])
        .await?;
    println!("1. created {id} under the platform key; wrote an asset and sealed a content key");

    // 2. The tenant brings its own key: a versionless key identifier, and an identity with
    //    get + wrapKey + unwrapKey. Only the account key is re-wrapped.
    let uami = Identity::new("uami-contoso-media");
    tenant_vault
        .create_key("media-cmk", KeySpec::Rsa(3072))
        .await?;
    tenant_vault.set_access(&uami, Permissions::CMK).await?;
    let cmk: KeyId = "https://contoso.vault.example/keys/media-cmk".parse()?;
    let rec = manager
        .set_customer_key(&id, cmk.clone(), uami.clone())
        .await?;
    println!(
        "2. customer key on: account key now wrapped by {} (version {})",
        cmk,
        rec.account_key
            .as_ref()
            .map(|w| w.wrapped.key_version.as_str())
            .unwrap_or("?")
    );
    assert_eq!(
        manager.decrypt(&id, b"assets/intro.mp4", &asset).await?,
        b"<video bytes>"
    );
    println!("   the asset written before still opens (nothing was re-encrypted)");

    // 3. The tenant rotates; the application's monitor (on its own schedule) picks it up.
    tenant_vault.rotate_key("media-cmk").await?;
    manager.monitor().await?;
    let rec = manager.account(&id).await?;
    println!(
        "3. rotated automatically to version {}",
        rec.account_key
            .as_ref()
            .map(|w| w.wrapped.key_version.as_str())
            .unwrap_or("?")
    );

    // 4. The tenant revokes the service's access. The next probe observes it.
    tenant_vault.remove_identity(&uami).await?;
    let probe = manager.probe(&id).await;
    println!(
        "4. access revoked; probe says: {}",
        probe.err().map(|e| e.to_string()).unwrap_or_default()
    );
    match manager.encrypt(&id, &video, b"assets/new.mp4", b"x").await {
        Err(e) => println!("   write: HTTP {} ({e})", e.http_status()),
        Ok(_) => return Err("a write succeeded after revocation".into()),
    }
    match manager.decrypt(&id, b"assets/intro.mp4", &asset).await {
        Err(e) => println!(
            "   read:  HTTP {} (even though the key was cached)",
            e.http_status()
        ),
        Ok(_) => return Err("a read succeeded after revocation".into()),
    }
    for op in [
        Operation::AccountGet,
        Operation::AccountList,
        Operation::AccountDelete,
        Operation::Processing,
    ] {
        let verdict = match manager.ensure_allowed(&id, op).await {
            Ok(()) => "allowed".to_owned(),
            Err(e) => format!("HTTP {}", e.http_status()),
        };
        println!("   {op:?}: {verdict}");
    }

    // 5. The tenant restores access; the next probe restores the account.
    tenant_vault.set_access(&uami, Permissions::CMK).await?;
    let state = manager.probe(&id).await?;
    println!("5. access restored; state {state}");
    assert_eq!(
        manager.decrypt(&id, b"assets/intro.mp4", &asset).await?,
        b"<video bytes>"
    );
    assert_eq!(
        manager.open_field(&id, b"contentKey/intro", &ck).await?,
        [0x42; 16]
    );
    println!("   the asset and the content key open again");

    println!(
        "audit trail ({} events, no key material):",
        audit.events().len()
    );
    for e in audit
        .events()
        .iter()
        .filter(|e| !matches!(e.action, byok::audit::AuditAction::Unwrap))
    {
        println!(
            "   {:?} {:?} key={}",
            e.action,
            e.outcome,
            e.key.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
