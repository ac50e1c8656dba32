//! Seed 001 — Media Services: bring your own key, replayed rule by rule.

mod common;

use byok::account::{NewAccount, Operation, StateKind};
use byok::envelope::inspect;
use byok::provider::{KeySpec, Permissions};
use byok::{AccountId, Error, KeyId, KeySource, Policy, PolicyViolation, VaultAdmin};
use common::{HOST, REGION, TENANT, World, class};

#[tokio::test]
async fn media_services_rules() {
    let w = World::new().await;
    let policy = Policy::media_services();

    // "A default account key is created for all accounts which is encrypted by a system key
    // owned by Media Services."
    let id = w.platform_account("ams-1", policy.clone()).await;
    assert_eq!(
        w.manager.account(&id).await.expect("get").key_source,
        KeySource::Platform
    );

    // "Content keys are encrypted by the account key. JobInputHttp urls and symmetric token
    // validation keys are also encrypted."
    let content_key = w
        .manager
        .seal_field(&id, b"contentKeyPolicy/ck-1", &[7u8; 16])
        .await
        .expect("ck");
    let url = w
        .manager
        .seal_field(
            &id,
            b"job/j1/input",
            b"https://example.com/in.mp4?sig=s3cr3t",
        )
        .await
        .expect("url");
    let token = w
        .manager
        .seal_field(&id, b"tokenValidation/primary", &[9u8; 32])
        .await
        .expect("tok");
    assert!(
        !url.windows(6).any(|w| w == b"s3cr3t"),
        "sealed fields hold no plaintext"
    );
    // A value sealed for one field does not open for another, nor for another account.
    assert!(matches!(
        w.manager
            .open_field(&id, b"tokenValidation/primary", &content_key)
            .await,
        Err(Error::Decryption)
    ));
    let other = w.platform_account("ams-other", policy.clone()).await;
    assert!(matches!(
        w.manager
            .open_field(&other, b"contentKeyPolicy/ck-1", &content_key)
            .await,
        Err(Error::Decryption)
    ));

    // "Media Services requires that the Key Vault is in the same region as the account, and
    // that it has soft-delete and purge protection enabled."
    let far_key = w
        .key_in_other_vault("far.vault.example", "eastus", TENANT, true)
        .await;
    let e = w
        .manager
        .set_customer_key(&id, far_key.clone(), w.identity.clone())
        .await
        .expect_err("region");
    assert!(
        matches!(
            e,
            Error::Policy {
                violation: PolicyViolation::RegionMismatch { .. },
                ..
            }
        ),
        "{e}"
    );

    // "Your key can be a 2048, 3072, or a 4096 RSA key ... EC keys are not supported."
    w.vault.create_key("ec", KeySpec::EcP256).await.expect("ec");
    let e = w
        .manager
        .set_customer_key(
            &id,
            KeyId::new(HOST, "ec", None).expect("id"),
            w.identity.clone(),
        )
        .await
        .expect_err("EC");
    assert!(
        matches!(
            e,
            Error::Policy {
                violation: PolicyViolation::KeyType { .. },
                ..
            }
        ),
        "{e}"
    );

    // "When you use your own key, the account key is encrypted with your key" — using the
    // account's managed identity; versionless follows the latest version.
    let cmk = w.cmk("ams-cmk", 4096).await;
    w.manager
        .set_customer_key(&id, cmk, w.identity.clone())
        .await
        .expect("CMK");
    assert_eq!(
        w.manager
            .open_field(&id, b"job/j1/input", &url)
            .await
            .expect("url"),
        b"https://example.com/in.mp4?sig=s3cr3t"
    );
    let asset = w
        .manager
        .encrypt(&id, &class("asset"), b"asset-1", b"mp4 bytes")
        .await
        .expect("encrypt");
    // "Media Services automatically supports double encryption."
    assert!(inspect(&asset).expect("inspect").layer2_key.is_some());
    w.vault.rotate_key("ams-cmk").await.expect("rotate");
    let rec = w.manager.refresh(&id).await.expect("refresh");
    assert_eq!(
        rec.account_key.expect("w").wrapped.key_version,
        "2",
        "new versions are detected automatically"
    );

    // "If the customer key becomes inaccessible ... Media Services will transition the account
    // to the Customer Key Inaccessible State."
    w.vault.remove_identity(&w.identity).await.expect("revoke");
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    assert_eq!(
        w.manager
            .accounts()
            .await
            .expect("list")
            .iter()
            .find(|r| r.id == id)
            .expect("listed")
            .state
            .kind(),
        StateKind::KeyInaccessible
    );

    // "The only supported operations are account GET, LIST and DELETE; all other requests
    // (encoding, streaming, and so on) will fail until access to the account key is restored."
    for op in Operation::ALL {
        let allowed = matches!(
            op,
            Operation::AccountGet | Operation::AccountList | Operation::AccountDelete
        );
        let r = w.manager.ensure_allowed(&id, op).await;
        assert_eq!(r.is_ok(), allowed, "{op:?}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.http_status(), 403, "{op:?}");
        }
    }
    assert!(w.manager.account(&id).await.is_ok(), "GET");
    assert!(
        w.manager
            .accounts()
            .await
            .expect("LIST")
            .iter()
            .any(|r| r.id == id)
    );
    for r in [
        w.manager.decrypt(&id, b"asset-1", &asset).await.map(|_| ()),
        w.manager
            .encrypt(&id, &class("asset"), b"a2", b"x")
            .await
            .map(|_| ()),
        w.manager
            .open_field(&id, b"contentKeyPolicy/ck-1", &content_key)
            .await
            .map(|_| ()),
        w.manager
            .seal_field(&id, b"job/j2/input", b"u")
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::KeyInaccessible { .. })), "{r:?}");
    }

    // Restoring access restores every operation; nothing was lost.
    w.vault
        .set_access(&w.identity, Permissions::CMK)
        .await
        .expect("restore");
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        w.manager
            .decrypt(&id, b"asset-1", &asset)
            .await
            .expect("asset"),
        b"mp4 bytes"
    );
    assert_eq!(
        w.manager
            .open_field(&id, b"tokenValidation/primary", &token)
            .await
            .expect("token"),
        [9u8; 32]
    );
    w.manager
        .ensure_allowed(&id, Operation::Processing)
        .await
        .expect("encoding works again");

    // "However, the account can be deleted in this state."
    w.vault
        .remove_identity(&w.identity)
        .await
        .expect("revoke again");
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    w.manager
        .delete_account(&id)
        .await
        .expect("DELETE while inaccessible");
    assert!(matches!(
        w.manager.account(&id).await,
        Err(Error::AccountNotFound(_))
    ));

    // The rule holds for accounts created directly with a customer key, too.
    w.vault
        .set_access(&w.identity, Permissions::CMK)
        .await
        .expect("grant");
    let k = w.cmk("ams-direct", 2048).await;
    let direct = AccountId::new("ams-direct").expect("id");
    w.manager
        .create_account(
            NewAccount::new(direct.clone(), REGION, TENANT, policy)
                .key_source(KeySource::customer(k, w.identity.clone())),
        )
        .await
        .expect("create with CMK");
    assert_eq!(
        w.manager
            .account(&direct)
            .await
            .expect("get")
            .account_key
            .expect("w")
            .vault,
        HOST
    );
}
