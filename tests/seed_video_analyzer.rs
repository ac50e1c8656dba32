//! Seed 000 — Video Analyzer: customer-managed keys, replayed rule by rule.

mod common;

use byok::account::{NewAccount, Operation, StateKind};
use byok::envelope::inspect;
use byok::provider::{KeySpec, Permissions};
use byok::{AccountId, Error, KeyId, KeySource, Policy, PolicyViolation, VaultAdmin};
use common::{HOST, REGION, TENANT, World, class, violation};

#[tokio::test]
async fn video_analyzer_rules() {
    let w = World::new().await;
    let policy = Policy::video_analyzer();
    let blob = class("video");

    // "An account key is created for all Video Analyzer accounts. By default this account key
    // is encrypted by a system key owned by Video Analyzer."
    let id = w.platform_account("va-1", policy.clone()).await;
    let rec = w.manager.account(&id).await.expect("get");
    assert_eq!(rec.key_source, KeySource::Platform);
    assert_eq!(rec.account_key.as_ref().expect("wrapped").vault, "platform");
    let before_cmk = w
        .manager
        .encrypt(&id, &blob, b"v1", b"frame")
        .await
        .expect("encrypt");

    // "Access policies and video resource metadata get encrypted using the account key."
    let acl = w
        .manager
        .seal_field(&id, b"accessPolicy/reader", b"{\"role\":\"reader\"}")
        .await
        .expect("seal");
    let meta = w
        .manager
        .seal_field(&id, b"videoMetadata/v1", b"title=lobby cam")
        .await
        .expect("seal");
    assert!(matches!(
        w.manager.open_field(&id, b"videoMetadata/v1", &acl).await,
        Err(Error::Decryption)
    ));

    // "Your key can be a 2048, 3072, or a 4096 RSA key ... EC keys are not supported."
    w.vault.create_key("ec", KeySpec::EcP256).await.expect("ec");
    w.vault
        .create_key("rsa1024", KeySpec::Rsa(1024))
        .await
        .expect("1024");
    let ec = KeyId::new(HOST, "ec", None).expect("id");
    assert!(matches!(
        w.refused(&id, ec).await,
        PolicyViolation::KeyType { .. }
    ));
    let small = KeyId::new(HOST, "rsa1024", None).expect("id");
    assert!(matches!(
        w.refused(&id, small).await,
        PolicyViolation::KeySize { bits: 1024, .. }
    ));
    for bits in [2048u32, 3072, 4096] {
        let k = w.cmk(&format!("size-{bits}"), bits).await;
        let acct = AccountId::new(format!("va-size-{bits}")).expect("id");
        w.manager
            .create_account(
                NewAccount::new(acct, REGION, TENANT, policy.clone())
                    .key_source(KeySource::customer(k, w.identity.clone())),
            )
            .await
            .unwrap_or_else(|e| panic!("RSA {bits}: {e}"));
    }

    // "Video Analyzer requires that the Key Vault is in the same region as the account, and
    // that it has soft-delete and purge protection enabled."
    let far_key = w
        .key_in_other_vault("far.vault.example", "japaneast", TENANT, true)
        .await;
    assert!(matches!(
        w.refused(&id, far_key).await,
        PolicyViolation::RegionMismatch { .. }
    ));
    let loose_key = w
        .key_in_other_vault("loose.vault.example", REGION, TENANT, false)
        .await;
    assert!(matches!(
        w.refused(&id, loose_key).await,
        PolicyViolation::SoftDeleteRequired
    ));
    // A failed configuration changed nothing.
    assert_eq!(
        w.manager.account(&id).await.expect("get").key_source,
        KeySource::Platform
    );

    // "Video Analyzer uses a User Assigned Managed Identity to read your key" — an identity
    // without a grant cannot be used.
    let cmk = w.cmk("va-cmk", 3072).await;
    let stranger = byok::provider::Identity::new("uami-other");
    w.vault
        .set_access(&stranger, Permissions::new(true, false, false))
        .await
        .expect("grant");
    assert_eq!(
        violation(
            w.manager
                .set_customer_key(&id, cmk.clone(), stranger)
                .await
                .expect_err("no wrapKey")
        ),
        PolicyViolation::MissingPermission("wrapKey")
    );

    // "Instead, you can use your own key ... your account key is encrypted with your key."
    let rec = w
        .manager
        .set_customer_key(&id, cmk.clone(), w.identity.clone())
        .await
        .expect("use CMK");
    let wrapped = rec.account_key.expect("wrapped");
    assert_eq!(
        (wrapped.vault.as_str(), wrapped.wrapped.key_version.as_str()),
        (HOST, "1")
    );
    // Nothing was re-encrypted: what was written before still opens.
    assert_eq!(
        w.manager
            .decrypt(&id, b"v1", &before_cmk)
            .await
            .expect("old object"),
        b"frame"
    );
    assert_eq!(
        w.manager
            .open_field(&id, b"accessPolicy/reader", &acl)
            .await
            .expect("acl"),
        b"{\"role\":\"reader\"}"
    );

    // "When you use only a key name, Video Analyzer will use the latest key version. New
    // versions of customer keys are automatically detected, and the account key is
    // re-encrypted."
    w.vault.rotate_key("va-cmk").await.expect("rotate");
    let entries = w.manager.monitor().await.expect("monitor");
    assert!(entries.iter().all(|e| e.result.is_ok()), "{entries:?}");
    let rec = w.manager.account(&id).await.expect("get");
    assert_eq!(
        rec.account_key.as_ref().expect("w").wrapped.key_version,
        "2"
    );
    assert!(rec.last_rotated.is_some());
    assert_eq!(
        w.manager
            .decrypt(&id, b"v1", &before_cmk)
            .await
            .expect("still opens"),
        b"frame"
    );
    // A key given with a version stays pinned.
    let pinned = cmk.with_version("2").expect("v");
    w.manager
        .set_customer_key(&id, pinned, w.identity.clone())
        .await
        .expect("pin");
    w.vault.rotate_key("va-cmk").await.expect("rotate again");
    w.manager.refresh(&id).await.expect("refresh");
    assert_eq!(
        w.manager
            .account(&id)
            .await
            .expect("get")
            .account_key
            .expect("w")
            .wrapped
            .key_version,
        "2"
    );

    // "Double encryption is enabled automatically."
    let rec = w.manager.account(&id).await.expect("get");
    assert!(rec.double_encryption);
    let obj = w
        .manager
        .encrypt(&id, &blob, b"v2", b"frame 2")
        .await
        .expect("encrypt");
    let info = inspect(&obj).expect("inspect");
    assert_eq!(
        info.layer2_key.expect("layer 2").id,
        rec.infrastructure_key.expect("infra").account_key_id
    );

    // "If the customer key becomes inaccessible (the key has been deleted, the Key Vault has
    // been deleted or the access grant has been removed), Video Analyzer will transition the
    // account to the Customer Key Inaccessible State (effectively disabling the account)."
    type Step = for<'a> fn(&'a World) -> futures_like::BoxFut<'a>;
    let causes: [(&str, Step, Step); 3] = [
        (
            "key deleted",
            |w| Box::pin(async move { w.vault.delete_key("va-cmk").await.expect("delete") }),
            |w| Box::pin(async move { w.vault.recover_key("va-cmk").await.expect("recover") }),
        ),
        (
            "grant removed",
            |w| {
                Box::pin(async move {
                    w.vault
                        .set_access(&w.identity, Permissions::NONE)
                        .await
                        .expect("ungrant")
                })
            },
            |w| {
                Box::pin(async move {
                    w.vault
                        .set_access(&w.identity, Permissions::CMK)
                        .await
                        .expect("grant")
                })
            },
        ),
        (
            "vault deleted",
            |w| Box::pin(async move { w.directory.remove_vault(HOST) }),
            |w| {
                Box::pin(async move {
                    w.directory
                        .add_vault(HOST, std::sync::Arc::new(w.vault.clone()))
                })
            },
        ),
    ];
    for (cause, revoke, restore) in causes {
        revoke(&w).await;
        let entries = w.manager.monitor().await.expect("monitor");
        let e = entries.iter().find(|e| e.account == id).expect("entry");
        assert_eq!(
            e.result.as_ref().ok(),
            Some(&StateKind::KeyInaccessible),
            "{cause}"
        );
        // Effectively disabled: data and metadata operations fail with 403 — even reads a
        // cache could serve.
        let err = w.manager.decrypt(&id, b"v2", &obj).await.expect_err(cause);
        assert_eq!(err.http_status(), 403, "{cause}");
        assert!(matches!(
            w.manager.open_field(&id, b"videoMetadata/v1", &meta).await,
            Err(Error::KeyInaccessible { .. })
        ));
        assert!(matches!(
            w.manager.encrypt(&id, &blob, b"x", b"x").await,
            Err(Error::KeyInaccessible { .. })
        ));
        assert!(matches!(
            w.manager.ensure_allowed(&id, Operation::Processing).await,
            Err(Error::KeyInaccessible { .. })
        ));
        assert!(
            w.manager.account(&id).await.is_ok(),
            "the account can still be read"
        );
        // "You can either delete the account, or restore the account key to resume access."
        restore(&w).await;
        assert_eq!(
            w.manager.probe(&id).await.expect("restored"),
            StateKind::Active,
            "{cause}"
        );
        assert_eq!(
            w.manager
                .decrypt(&id, b"v2", &obj)
                .await
                .expect("opens again"),
            b"frame 2"
        );
        assert_eq!(
            w.manager
                .open_field(&id, b"videoMetadata/v1", &meta)
                .await
                .expect("meta"),
            b"title=lobby cam"
        );
    }
    w.vault.delete_key("va-cmk").await.expect("delete");
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    w.manager
        .delete_account(&id)
        .await
        .expect("the account can be deleted");
    assert!(matches!(
        w.manager.account(&id).await,
        Err(Error::AccountNotFound(_))
    ));
}

mod futures_like {
    pub(crate) type BoxFut<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
}
