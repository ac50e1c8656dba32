//! Seed 002 — Storage: customer-managed keys for account encryption, replayed rule by rule.

mod common;

use std::time::Duration;

use byok::account::{NewAccount, Operation, StateKind};
use byok::audit::AuditAction;
use byok::envelope::inspect;
use byok::provider::Permissions;
use byok::{AccountId, Error, KeySource, Policy, PolicyViolation, VaultAdmin};
use common::{HOST, REGION, TENANT, World, class, violation};

#[tokio::test]
async fn storage_rules() {
    let w = World::new().await;
    let policy = Policy::storage();
    let (blob, queue, table) = (class("blob"), class("queue"), class("table"));

    // "Customer-managed keys can be enabled only on existing storage accounts."
    let k = w.cmk("st-cmk", 2048).await;
    let e = w
        .manager
        .create_account(
            NewAccount::new(
                AccountId::new("st-new").expect("id"),
                REGION,
                TENANT,
                policy.clone(),
            )
            .key_source(KeySource::customer(k.clone(), w.identity.clone())),
        )
        .await
        .expect_err("CMK at creation");
    assert_eq!(violation(e), PolicyViolation::CustomerKeyAtCreation);

    // "Data stored in the Queue and Table services is not automatically protected by a
    // customer-managed key ... You can optionally configure these services at the time that you
    // create the storage account to be included." Blob and File data are always covered.
    let with_queues = AccountId::new("st-queues").expect("id");
    w.manager
        .create_account(
            NewAccount::new(with_queues.clone(), REGION, TENANT, policy.clone())
                .choose_classes(&["queue", "table"]),
        )
        .await
        .expect("create with queue+table");
    let id = w.platform_account("st-1", policy.clone()).await;
    // Before any customer key: data written under the platform-managed account key.
    let before = w
        .manager
        .encrypt(&id, &blob, b"c/b0", b"blob 0")
        .await
        .expect("blob");

    // "The storage account and the key vault must be in the same region and in the same Azure
    // AD tenant."
    let foreign_key = w
        .key_in_other_vault("foreign.vault.example", REGION, "fabrikam", true)
        .await;
    let v = w.refused(&id, foreign_key.clone()).await;
    assert!(matches!(v, PolicyViolation::TenantMismatch { .. }));
    // "You must enable both the Soft Delete and Do Not Purge properties on the key vault."
    let loose_key = w
        .key_in_other_vault("loose.vault.example", REGION, TENANT, false)
        .await;
    let v = w.refused(&id, loose_key.clone()).await;
    assert_eq!(v, PolicyViolation::SoftDeleteRequired);
    // "Only 2048-bit RSA and RSA-HSM keys are supported."
    let big = w.cmk("st-3072", 3072).await;
    let v = w.refused(&id, big).await;
    assert!(matches!(v, PolicyViolation::KeySize { bits: 3072, .. }));

    // "When you configure a customer-managed key, Azure Storage wraps the root data encryption
    // key for the account with the customer-managed key."
    let wraps_before = w
        .audit
        .events()
        .iter()
        .filter(|e| e.action == AuditAction::Wrap)
        .count();
    let rec = w
        .manager
        .set_customer_key(&id, k.clone(), w.identity.clone())
        .await
        .expect("enable CMK");
    assert_eq!(rec.account_key.as_ref().expect("w").vault, HOST);
    assert_eq!(
        w.audit
            .events()
            .iter()
            .filter(|e| e.action == AuditAction::Wrap)
            .count(),
        wraps_before + 1
    );
    // The versionless key was pinned: "When the key is rotated, you must update the storage
    // account to use the new key version URI."
    assert_eq!(
        rec.key_source,
        KeySource::customer(k.with_version("1").expect("v"), w.identity.clone())
    );

    // "For read/write operations, Azure Storage sends requests to Azure Key Vault to unwrap the
    // account encryption key" — once per cache period, not once per request.
    let unwraps = w.unwraps();
    let b1 = w
        .manager
        .encrypt(&id, &blob, b"c/b1", b"blob 1")
        .await
        .expect("write");
    for _ in 0..1000 {
        w.manager.decrypt(&id, b"c/b1", &b1).await.expect("read");
    }
    assert_eq!(
        w.unwraps() - unwraps,
        0,
        "the configure step left the key cached"
    );
    w.clock
        .advance(policy.cache_max_age + Duration::from_secs(1));
    w.manager.decrypt(&id, b"c/b1", &b1).await.expect("read");
    assert_eq!(w.unwraps() - unwraps, 1, "a new cache period unwraps once");

    // Queue and table data follow the customer key only where chosen at creation.
    let q = w
        .manager
        .encrypt(&id, &queue, b"q/m1", b"message")
        .await
        .expect("queue");
    let t = w
        .manager
        .encrypt(&id, &table, b"t/e1", b"entity")
        .await
        .expect("table");
    let rec = w.manager.account(&id).await.expect("get");
    let platform_id = rec
        .platform_class_key
        .as_ref()
        .expect("p")
        .account_key_id
        .clone();
    let account_id = rec.account_key.as_ref().expect("a").account_key_id.clone();
    assert_eq!(inspect(&q).expect("q").account_key.id, platform_id);
    assert_eq!(inspect(&t).expect("t").account_key.id, platform_id);
    assert_eq!(inspect(&b1).expect("b").account_key.id, account_id);
    let chosen = w.manager.account(&with_queues).await.expect("get");
    let q2 = w
        .manager
        .encrypt(&with_queues, &queue, b"q/m1", b"message")
        .await
        .expect("queue");
    assert_eq!(
        inspect(&q2).expect("q2").account_key.id,
        chosen.account_key.expect("a").account_key_id
    );
    // "You can optionally configure these services at the time that you create" — not later.
    assert!(matches!(
        w.manager
            .create_account(
                NewAccount::new(
                    AccountId::new("st-bad").expect("id"),
                    REGION,
                    TENANT,
                    policy.clone()
                )
                .choose_classes(&["blob"])
            )
            .await,
        Err(Error::InvalidInput(_))
    ));

    // Rotation, updating the version, changing the key, enabling and disabling never
    // re-encrypt data: "the data in your Azure Storage account does not need to be
    // re-encrypted."
    w.vault.rotate_key("st-cmk").await.expect("rotate");
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
        "1",
        "a pinned version stays"
    );
    w.manager
        .set_customer_key(&id, k.with_version("2").expect("v"), w.identity.clone())
        .await
        .expect("update version");
    let other_key = w.cmk("st-other", 2048).await;
    w.manager
        .set_customer_key(&id, other_key, w.identity.clone())
        .await
        .expect("change key");
    w.manager.use_platform_key(&id).await.expect("disable CMK");
    w.manager
        .set_customer_key(&id, k.clone(), w.identity.clone())
        .await
        .expect("enable again");
    for (ctx, obj, want) in [
        (&b"c/b0"[..], &before, &b"blob 0"[..]),
        (b"c/b1", &b1, b"blob 1"),
        (b"q/m1", &q, b"message"),
        (b"t/e1", &t, b"entity"),
    ] {
        assert_eq!(
            w.manager.decrypt(&id, ctx, obj).await.expect("still opens"),
            want
        );
        assert_eq!(
            inspect(obj).expect("i").account_key.id == account_id,
            ctx != b"q/m1" && ctx != b"t/e1"
        );
    }

    // "After access to customer-managed keys is revoked, or after the key has been disabled or
    // deleted, clients cannot call operations that read from or write to a blob or its
    // metadata ... fail with error code 403 ... All data operations that are not listed may
    // proceed."
    let meta = w
        .manager
        .seal_field(&id, b"blob/c/b1/meta", b"x-ms-meta-owner=alice")
        .await
        .expect("meta");
    let current = w
        .manager
        .account(&id)
        .await
        .expect("get")
        .account_key
        .expect("w")
        .wrapped
        .key_version;
    type Revoke = for<'a> fn(
        &'a World,
        &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
    let revocations: [(&str, Revoke, Revoke); 3] = [
        (
            "access revoked",
            |w, _| {
                Box::pin(async move {
                    w.vault
                        .set_access(&w.identity, Permissions::new(true, true, false))
                        .await
                        .expect("revoke")
                })
            },
            |w, _| {
                Box::pin(async move {
                    w.vault
                        .set_access(&w.identity, Permissions::CMK)
                        .await
                        .expect("grant")
                })
            },
        ),
        (
            "key disabled",
            |w, v| {
                Box::pin(async move {
                    w.vault
                        .set_enabled("st-cmk", v, false)
                        .await
                        .expect("disable")
                })
            },
            |w, v| {
                Box::pin(async move {
                    w.vault
                        .set_enabled("st-cmk", v, true)
                        .await
                        .expect("enable")
                })
            },
        ),
        (
            "key deleted",
            |w, _| Box::pin(async move { w.vault.delete_key("st-cmk").await.expect("delete") }),
            |w, _| Box::pin(async move { w.vault.recover_key("st-cmk").await.expect("recover") }),
        ),
    ];
    for (what, revoke, restore) in revocations {
        revoke(&w, &current).await;
        assert!(
            matches!(
                w.manager.probe(&id).await,
                Err(Error::KeyInaccessible { .. })
            ),
            "{what}"
        );
        for (op, r) in [
            (
                "Get Blob",
                w.manager.decrypt(&id, b"c/b1", &b1).await.map(|_| ()),
            ),
            (
                "Put Blob",
                w.manager
                    .encrypt(&id, &blob, b"c/b2", b"new")
                    .await
                    .map(|_| ()),
            ),
            (
                "Get Blob Metadata",
                w.manager
                    .open_field(&id, b"blob/c/b1/meta", &meta)
                    .await
                    .map(|_| ()),
            ),
            (
                "Set Blob Metadata",
                w.manager
                    .seal_field(&id, b"blob/c/b1/meta", b"x")
                    .await
                    .map(|_| ()),
            ),
        ] {
            let e = r.expect_err(op);
            assert!(
                matches!(e, Error::KeyInaccessible { .. }),
                "{what}: {op}: {e}"
            );
            assert_eq!(e.http_status(), 403);
        }
        for op in [
            Operation::DataRead,
            Operation::DataWrite,
            Operation::MetadataRead,
            Operation::MetadataWrite,
        ] {
            assert_eq!(
                w.manager
                    .ensure_allowed(&id, op)
                    .await
                    .map_err(|e| e.http_status()),
                Err(403),
                "{what}: {op:?}"
            );
        }
        for op in [
            Operation::DataDelete,
            Operation::DataList,
            Operation::AccountGet,
            Operation::AccountList,
            Operation::AccountUpdate,
            Operation::AccountDelete,
        ] {
            w.manager
                .ensure_allowed(&id, op)
                .await
                .unwrap_or_else(|e| panic!("{what}: {op:?} must proceed: {e}"));
        }
        // "To call these operations again, restore access to the customer-managed key."
        restore(&w, &current).await;
        assert_eq!(
            w.manager.probe(&id).await.expect("restored"),
            StateKind::Active,
            "{what}"
        );
        assert_eq!(
            w.manager.decrypt(&id, b"c/b1", &b1).await.expect("read"),
            b"blob 1"
        );
        assert_eq!(
            w.manager
                .open_field(&id, b"blob/c/b1/meta", &meta)
                .await
                .expect("meta"),
            b"x-ms-meta-owner=alice"
        );
    }
}
