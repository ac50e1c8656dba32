//! Seed 004 — Content Safety: encryption of data at rest, replayed rule by rule.

mod common;

use byok::account::{Operation, StateKind};
use byok::audit::{AuditAction, AuditOutcome};
use byok::envelope::inspect;
use byok::{AccountId, Error, KeyId, KeySource, Policy, PolicyViolation, VaultAdmin};
use common::{HOST, REGION, TENANT, World, class};

#[tokio::test]
async fn content_safety_rules() {
    let w = World::new().await;
    let policy = Policy::content_safety();
    let id = w.platform_account("cs-1", policy.clone()).await;
    let (text, names) = (class("custom-categories"), class("blocklist-names"));

    // "By default, your subscription uses Microsoft-managed encryption keys."
    assert_eq!(
        w.manager.account(&id).await.expect("get").key_source,
        KeySource::Platform
    );
    let before = w
        .manager
        .encrypt(&id, &text, b"cat/1", b"category samples")
        .await
        .expect("encrypt");

    // "Only RSA keys of size 2048 are supported."
    let big = w.cmk("cs-4096", 4096).await;
    assert!(matches!(
        w.refused(&id, big).await,
        PolicyViolation::KeySize { bits: 4096, .. }
    ));
    // "The Azure AI services resource and the key vault must be in the same region and in the
    // same Azure Active Directory (Azure AD) tenant."
    let far_key = w
        .key_in_other_vault("far.vault.example", "brazilsouth", TENANT, true)
        .await;
    let v = w.refused(&id, far_key.clone()).await;
    assert!(matches!(v, PolicyViolation::RegionMismatch { .. }));
    // "you must also enable both the Soft Delete and Do Not Purge properties on the key vault."
    let loose_key = w
        .key_in_other_vault("loose.vault.example", REGION, TENANT, false)
        .await;
    let v = w.refused(&id, loose_key.clone()).await;
    assert_eq!(v, PolicyViolation::SoftDeleteRequired);

    // "Specify a key as a URI": the Key Identifier copied from the portal (a versioned URI).
    w.cmk("cs-cmk", 2048).await;
    let uri: KeyId = format!("https://{HOST}/keys/cs-cmk/1")
        .parse()
        .expect("pasted URI");
    let rec = w
        .manager
        .set_customer_key(&id, uri.clone(), w.identity.clone())
        .await
        .expect("CMK by URI");
    assert_eq!(rec.current_customer_key(), Some(uri.clone()));
    // "Specify a key from a key vault": vault + key picked, no version: pinned at the latest.
    let other = w.platform_account("cs-2", policy.clone()).await;
    let picked = KeyId::new(HOST, "cs-cmk", None).expect("picked");
    let rec2 = w
        .manager
        .set_customer_key(&other, picked, w.identity.clone())
        .await
        .expect("CMK picked");
    assert_eq!(rec2.current_customer_key(), Some(uri.clone()));
    // "Azure AI services data is encrypted and decrypted using ... 256-bit AES encryption":
    // earlier data (platform keys) still opens under the customer key (no re-encryption).
    assert_eq!(
        w.manager
            .decrypt(&id, b"cat/1", &before)
            .await
            .expect("opens"),
        b"category samples"
    );

    // "For blocklist names, only MMK encryption is applied by default. Using CMK or not will
    // not change this behavior."
    let n1 = w
        .manager
        .encrypt(&id, &names, b"bl/1", b"my-blocklist")
        .await
        .expect("names");
    let rec = w.manager.account(&id).await.expect("get");
    let platform_key = rec
        .platform_class_key
        .as_ref()
        .expect("platform")
        .account_key_id
        .clone();
    assert_eq!(inspect(&n1).expect("i").account_key.id, platform_key);
    let t1 = w
        .manager
        .encrypt(&id, &text, b"cat/2", b"more")
        .await
        .expect("text");
    assert_eq!(
        inspect(&t1).expect("i").account_key.id,
        rec.account_key.as_ref().expect("a").account_key_id
    );

    // "Update the key version": a new version must be set by the user.
    w.vault.rotate_key("cs-cmk").await.expect("rotate");
    w.manager.refresh(&id).await.expect("refresh");
    assert_eq!(
        w.manager
            .account(&id)
            .await
            .expect("get")
            .current_customer_key(),
        Some(uri.clone()),
        "no automatic move"
    );
    let v2 = uri.with_version("2").expect("v2");
    w.manager
        .set_customer_key(&id, v2.clone(), w.identity.clone())
        .await
        .expect("update version");
    // "Use a different key."
    w.cmk("cs-cmk-b", 2048).await;
    let b = KeyId::new(HOST, "cs-cmk-b", Some("1")).expect("b");
    w.manager
        .set_customer_key(&id, b.clone(), w.identity.clone())
        .await
        .expect("different key");
    // "Rotating the key doesn't trigger re-encryption of data."
    for (ctx, obj, want) in [
        (&b"cat/1"[..], &before, &b"category samples"[..]),
        (b"cat/2", &t1, b"more"),
        (b"bl/1", &n1, b"my-blocklist"),
    ] {
        assert_eq!(w.manager.decrypt(&id, ctx, obj).await.expect("opens"), want);
    }

    // "Revoke a customer-managed key ... Revoking access effectively blocks access to all data."
    w.vault
        .set_enabled("cs-cmk-b", "1", false)
        .await
        .expect("revoke");
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    for (ctx, obj) in [(&b"cat/1"[..], &before), (b"bl/1", &n1)] {
        assert_eq!(
            w.manager
                .decrypt(&id, ctx, obj)
                .await
                .expect_err("blocked")
                .http_status(),
            403
        );
    }
    w.vault
        .set_enabled("cs-cmk-b", "1", true)
        .await
        .expect("un-revoke");
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );

    // "When you disable customer-managed keys, your Azure AI services resource is then
    // encrypted with Microsoft-managed keys."
    let rec = w.manager.use_platform_key(&id).await.expect("disable CMK");
    assert_eq!(rec.key_source, KeySource::Platform);
    assert_eq!(
        w.manager.decrypt(&id, b"cat/2", &t1).await.expect("opens"),
        b"more"
    );
    // The customer's key is out of the picture now: disabling it changes nothing.
    w.vault
        .set_enabled("cs-cmk-b", "1", false)
        .await
        .expect("disable");
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    w.vault
        .set_enabled("cs-cmk-b", "1", true)
        .await
        .expect("enable");

    // "If you disable system assigned managed identities, access to the key vault will be
    // removed and any data encrypted with the customer keys will no longer be accessible."
    let obj2 = w
        .manager
        .encrypt(&other, &text, b"o/1", b"other data")
        .await
        .expect("encrypt");
    w.vault
        .remove_identity(&w.identity)
        .await
        .expect("identity disabled");
    assert!(matches!(
        w.manager.probe(&other).await,
        Err(Error::KeyInaccessible { .. })
    ));
    assert!(matches!(
        w.manager.decrypt(&other, b"o/1", &obj2).await,
        Err(Error::KeyInaccessible { .. })
    ));
    assert!(matches!(
        w.manager.ensure_allowed(&other, Operation::DataRead).await,
        Err(Error::KeyInaccessible { .. })
    ));

    // "You can also audit the encryption keys used to protect your data."
    let events = w.audit.events();
    let used = |key: &str, action: AuditAction| {
        events.iter().any(|e| {
            e.action == action
                && e.key.as_deref() == Some(key)
                && e.identity.as_ref() == Some(&w.identity)
        })
    };
    assert!(
        used(&uri.to_string(), AuditAction::Wrap),
        "wrap under cs-cmk/1 audited"
    );
    assert!(used(&v2.to_string(), AuditAction::Wrap));
    assert!(used(&b.to_string(), AuditAction::Unwrap));
    assert!(events.iter().any(|e| matches!(e.action, AuditAction::Probe)
        && matches!(e.outcome, AuditOutcome::Failure(_))
        && e.account == "cs-2"));
    assert!(events.iter().any(
        |e| matches!(&e.action, AuditAction::Denied { operation } if *operation == Operation::DataRead)
            && e.account == "cs-2"
    ));
    let accounts = w.manager.accounts_using(&uri).await.expect("who uses v1");
    assert_eq!(accounts, [AccountId::new("cs-2").expect("id")]);
}
