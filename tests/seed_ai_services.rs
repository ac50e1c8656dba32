//! Seed 003 — AI services: customer-managed keys for encryption, replayed rule by rule.

mod common;

use byok::account::NewAccount;
use byok::provider::{Identity, Permissions};
use byok::{AccountId, Error, KeySource, Policy, PolicyViolation, VaultAdmin};
use common::{HOST, REGION, TENANT, World, class, violation};

#[tokio::test]
async fn ai_services_rules() {
    let w = World::new().await;
    let policy = Policy::ai_services();
    let key = w.cmk("ai-cmk", 2048).await;

    // "The managed identity ... must have the following permissions in key vault: wrap key,
    // unwrap key, get." Each missing one is named; with all three it works.
    for (missing, perms) in [
        ("get", Permissions::new(false, true, true)),
        ("wrapKey", Permissions::new(true, false, true)),
        ("unwrapKey", Permissions::new(true, true, false)),
    ] {
        let who = Identity::new(format!("uami-no-{missing}"));
        w.vault.set_access(&who, perms).await.expect("grant");
        let id = AccountId::new(format!("ai-no-{missing}")).expect("id");
        let e = w
            .manager
            .create_account(
                NewAccount::new(id.clone(), REGION, TENANT, policy.clone())
                    .key_source(KeySource::customer(key.clone(), who)),
            )
            .await
            .expect_err(missing);
        assert_eq!(violation(e), PolicyViolation::MissingPermission(missing));
        assert!(
            matches!(w.manager.account(&id).await, Err(Error::AccountNotFound(_))),
            "nothing was created"
        );
    }
    let id = AccountId::new("ai-1").expect("id");
    w.manager
        .create_account(
            NewAccount::new(id.clone(), REGION, TENANT, policy.clone())
                .key_source(KeySource::customer(key.clone(), w.identity.clone())),
        )
        .await
        .expect("exactly get + wrapKey + unwrapKey");
    let doc = w
        .manager
        .encrypt(&id, &class("fine-tune-data"), b"f1", b"training rows")
        .await
        .expect("encrypt");

    // "The key vault instance must enable soft delete and purge protection."
    let loose_key = w
        .key_in_other_vault("loose.vault.example", REGION, TENANT, false)
        .await;
    let e = w
        .manager
        .create_account(
            NewAccount::new(
                AccountId::new("ai-loose").expect("id"),
                REGION,
                TENANT,
                policy.clone(),
            )
            .key_source(KeySource::customer(loose_key.clone(), w.identity.clone())),
        )
        .await
        .expect_err("no protection");
    assert_eq!(violation(e), PolicyViolation::SoftDeleteRequired);

    // "The customer-managed key for encryption can only be updated to keys in the same Azure
    // Key Vault instance."
    let elsewhere_key = w
        .key_in_other_vault("other.vault.example", REGION, TENANT, true)
        .await;
    let v = w.refused(&id, elsewhere_key.clone()).await;
    assert!(matches!(v, PolicyViolation::DifferentVault { .. }));
    let same_vault = w.cmk("ai-cmk-2", 2048).await;
    let rec = w
        .manager
        .set_customer_key(&id, same_vault, w.identity.clone())
        .await
        .expect("same vault");
    assert_eq!(rec.account_key.expect("w").wrapped.key_name, "ai-cmk-2");
    assert_eq!(
        w.manager.decrypt(&id, b"f1", &doc).await.expect("opens"),
        b"training rows"
    );

    // "After deployment, you can't switch from Microsoft-managed keys to Customer-managed keys
    // or vice versa."
    let e = w
        .manager
        .use_platform_key(&id)
        .await
        .expect_err("CMK -> platform");
    assert_eq!(violation(e), PolicyViolation::SourceSwitchForbidden);
    let platform = w.platform_account("ai-platform", policy.clone()).await;
    let v = w.refused(&platform, key.clone()).await;
    assert_eq!(v, PolicyViolation::SourceSwitchForbidden);
    assert_eq!(
        w.manager.account(&platform).await.expect("get").key_source,
        KeySource::Platform
    );
    assert_eq!(
        w.manager
            .account(&id)
            .await
            .expect("get")
            .account_key
            .expect("w")
            .vault,
        HOST
    );
}
