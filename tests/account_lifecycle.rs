//! Account lifecycle beyond the seed documents: the transition table, the account-key cache,
//! transient failures, optimistic concurrency, records, audit hygiene and revocation under
//! concurrent load.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use byok::account::{AccountRecord, NewAccount, Operation, StateKind};
use byok::audit::AuditAction;
use byok::store::{AccountStore, InMemoryAccountStore};
use byok::{Error, KeySource, Policy, ProviderErrorKind, VaultAdmin};
use common::{World, class};

async fn cmk_account(w: &World, id: &str, policy: Policy) -> byok::AccountId {
    let key = w.cmk(&format!("{id}-key"), 2048).await;
    let id = byok::AccountId::new(id).expect("id");
    w.manager
        .create_account(
            NewAccount::new(id.clone(), common::REGION, common::TENANT, policy)
                .key_source(KeySource::customer(key, w.identity.clone())),
        )
        .await
        .expect("create");
    id
}

#[test]
fn transition_table_every_pair() {
    use StateKind::*;
    let expected = [
        (Active, Active, false),
        (Active, KeyInaccessible, true),
        (Active, Deleted, true),
        (KeyInaccessible, Active, true),
        (KeyInaccessible, KeyInaccessible, false),
        (KeyInaccessible, Deleted, true),
        (Deleted, Active, false),
        (Deleted, KeyInaccessible, false),
        (Deleted, Deleted, false),
    ];
    assert_eq!(expected.len(), StateKind::ALL.len() * StateKind::ALL.len());
    for (from, to, allowed) in expected {
        assert_eq!(from.can_transition_to(to), allowed, "{from} -> {to}");
    }
}

#[tokio::test]
async fn the_manager_performs_exactly_the_allowed_transitions() {
    let w = World::new().await;
    let id = cmk_account(&w, "walk", Policy::video_analyzer()).await;
    let state = |r: AccountRecord| r.state.kind();
    // Active -> KeyInaccessible
    w.vault.remove_identity(&w.identity).await.expect("revoke");
    assert_eq!(
        w.manager.monitor().await.expect("monitor")[0]
            .result
            .as_ref()
            .ok(),
        Some(&StateKind::KeyInaccessible)
    );
    assert_eq!(
        state(w.manager.account(&id).await.expect("get")),
        StateKind::KeyInaccessible
    );
    // KeyInaccessible -> KeyInaccessible is not a transition: a second failure keeps `since`.
    let since = match w.manager.account(&id).await.expect("get").state {
        byok::account::AccountState::KeyInaccessible { since, .. } => since,
        s => panic!("{s:?}"),
    };
    w.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    match w.manager.account(&id).await.expect("get").state {
        byok::account::AccountState::KeyInaccessible { since: s2, .. } => assert_eq!(s2, since),
        s => panic!("{s:?}"),
    }
    // KeyInaccessible -> Active
    w.vault
        .set_access(&w.identity, byok::provider::Permissions::CMK)
        .await
        .expect("restore");
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    // Active -> Deleted
    w.manager.delete_account(&id).await.expect("delete");
    // Deleted -> anything: refused.
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::AccountNotFound(_))
    ));
    assert!(matches!(
        w.manager.delete_account(&id).await,
        Err(Error::AccountNotFound(_))
    ));
    assert!(matches!(
        w.manager.use_platform_key(&id).await,
        Err(Error::AccountNotFound(_))
    ));
    assert!(matches!(
        w.manager.encrypt(&id, &class("blob"), b"", b"x").await,
        Err(Error::AccountNotFound(_))
    ));
    // KeyInaccessible -> Deleted, and the wrapped keys are destroyed.
    let id2 = cmk_account(&w, "walk2", Policy::video_analyzer()).await;
    w.vault.remove_identity(&w.identity).await.expect("revoke");
    assert!(matches!(
        w.manager.probe(&id2).await,
        Err(Error::KeyInaccessible { .. })
    ));
    w.manager
        .delete_account(&id2)
        .await
        .expect("delete while inaccessible");
    let store_view = w.manager.accounts().await.expect("list");
    assert!(store_view.iter().all(|r| r.id != id2 && r.id != id));
    let changes: Vec<_> = w
        .audit
        .events()
        .into_iter()
        .filter_map(|e| match e.action {
            AuditAction::StateChange { from, to } => Some(format!("{}:{from}->{to}", e.account)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            "walk:Active->KeyInaccessible",
            "walk:KeyInaccessible->Active",
            "walk:Active->Deleted",
            "walk2:Active->KeyInaccessible",
            "walk2:KeyInaccessible->Deleted"
        ]
    );
}

#[tokio::test]
async fn one_unwrap_per_cache_period_for_100_000_operations() {
    let w = World::new().await;
    let policy = Policy::builder("cache")
        .cache_max_age(Duration::from_secs(300))
        .build();
    let id = cmk_account(&w, "cache", policy).await;
    let before = w.unwraps();
    let blob = class("blob");
    let obj = w
        .manager
        .encrypt(&id, &blob, b"o", b"payload")
        .await
        .expect("encrypt");
    for i in 0..99_999u32 {
        if i % 2 == 0 {
            w.manager
                .encrypt(&id, &blob, b"o", b"payload")
                .await
                .expect("encrypt");
        } else {
            assert_eq!(
                w.manager.decrypt(&id, b"o", &obj).await.expect("decrypt"),
                b"payload"
            );
        }
    }
    assert_eq!(w.unwraps() - before, 1, "100 000 operations, one unwrap");
    w.clock.advance(Duration::from_secs(301));
    w.manager.decrypt(&id, b"o", &obj).await.expect("decrypt");
    assert_eq!(w.unwraps() - before, 2, "a new cache period, a new unwrap");
}

#[tokio::test]
async fn transient_failures_never_change_the_state() {
    let w = World::new().await;
    let policy = Policy::builder("transient")
        .cache_max_age(Duration::from_secs(60))
        .build();
    let id = cmk_account(&w, "transient", policy).await;
    let blob = class("blob");
    let obj = w
        .manager
        .encrypt(&id, &blob, b"o", b"data")
        .await
        .expect("encrypt");
    w.faults.cut(ProviderErrorKind::Unavailable);
    // With a cached key, work continues until the cache's maximum age.
    assert_eq!(
        w.manager.decrypt(&id, b"o", &obj).await.expect("cached"),
        b"data"
    );
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(
        w.manager.account(&id).await.expect("get").state.kind(),
        StateKind::Active
    );
    // Past it, operations fail with 503 and the account stays Active.
    w.clock.advance(Duration::from_secs(61));
    let e = w
        .manager
        .decrypt(&id, b"o", &obj)
        .await
        .expect_err("no cache, no provider");
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert_eq!(e.http_status(), 503);
    for kind in [ProviderErrorKind::Timeout, ProviderErrorKind::Throttled] {
        w.faults.cut(kind);
        assert!(matches!(
            w.manager.decrypt(&id, b"o", &obj).await,
            Err(Error::Unavailable { .. })
        ));
    }
    assert_eq!(
        w.manager.account(&id).await.expect("get").state.kind(),
        StateKind::Active
    );
    w.faults.restore();
    // A transient failure is shared for the failure window (one provider call per outage
    // attempt, not one per caller); past it the provider is asked again.
    w.clock.advance(byok::account::DEFAULT_FAILURE_WINDOW);
    assert_eq!(
        w.manager.decrypt(&id, b"o", &obj).await.expect("back"),
        b"data"
    );
    // A definitive failure seen by a data operation does change it, at once.
    w.faults.cut(ProviderErrorKind::Forbidden);
    w.clock.advance(Duration::from_secs(61));
    let e = w
        .manager
        .decrypt(&id, b"o", &obj)
        .await
        .expect_err("forbidden");
    // Issue 17: the error carries the kind of failure observed, typed.
    assert!(
        matches!(
            e,
            Error::KeyInaccessible {
                kind: Some(ProviderErrorKind::Forbidden),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.http_status(), 403);
    assert_eq!(
        w.manager.account(&id).await.expect("get").state.kind(),
        StateKind::KeyInaccessible
    );
}

#[tokio::test]
async fn stale_revisions_conflict_and_records_round_trip() {
    let store = InMemoryAccountStore::new();
    let w = World::new().await;
    let id = cmk_account(&w, "rec", Policy::storage_like_for_tests()).await;
    let rec = w.manager.account(&id).await.expect("get");
    let json = serde_json::to_string(&rec).expect("serialize");
    assert!(!json.contains("BEGIN"), "no key material in records");
    let back: AccountRecord = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rec);
    assert_eq!(back.format, byok::account::RECORD_FORMAT);
    store.create(&rec).await.expect("create");
    assert!(matches!(store.create(&rec).await, Err(Error::Conflict(_))));
    let mut a = rec.clone();
    a.revision += 1;
    a.region = "a".into();
    let mut b = rec.clone();
    b.revision += 1;
    b.region = "b".into();
    store.update(&a).await.expect("first writer wins");
    assert!(
        matches!(store.update(&b).await, Err(Error::Conflict(_))),
        "no lost update"
    );
    assert_eq!(
        store.get(&id).await.expect("get").expect("some").region,
        "a"
    );
}

trait TestPolicies {
    fn storage_like_for_tests() -> Policy;
}
impl TestPolicies for Policy {
    fn storage_like_for_tests() -> Policy {
        Policy::builder("records")
            .double_encryption(byok::account::DoubleEncryption::Always)
            .build()
    }
}

#[tokio::test]
async fn audit_events_carry_no_key_material() {
    let w = World::new().await;
    let id = cmk_account(&w, "audit", Policy::video_analyzer()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"secret data")
        .await
        .expect("enc");
    w.manager.decrypt(&id, b"o", &obj).await.expect("dec");
    let events = w.audit.events();
    let json = serde_json::to_string(&events).expect("json");
    assert!(!json.contains("secret data"));
    assert!(events.iter().any(|e| {
        e.action == AuditAction::Unwrap
            && e.identity.as_ref() == Some(&w.identity)
            && e.key
                .as_deref()
                .is_some_and(|k| k.starts_with("https://contoso.vault.example/keys/audit-key/"))
    }));
    assert!(events.iter().any(|e| e.action == AuditAction::Wrap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_and_rotation_under_concurrent_load() {
    let w = Arc::new(World::new().await);
    let policy = Policy::builder("load")
        .cache_max_age(Duration::from_secs(3600))
        .build();
    let id = cmk_account(&w, "load", policy).await;
    // `revoked`: revocation has been observed (check returned); `restoring`: the owner is
    // restoring access. An operation that starts after the first and ends before the second
    // must fail.
    let revoked = Arc::new(AtomicBool::new(false));
    let restoring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..6u32 {
        let (w, id, revoked, restoring, stop) = (
            w.clone(),
            id.clone(),
            revoked.clone(),
            restoring.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut after_revocation_ok = 0u32;
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ctx = format!("t{t}/o{n}");
                let was_revoked = revoked.load(Ordering::SeqCst);
                match w
                    .manager
                    .encrypt(&id, &class("blob"), ctx.as_bytes(), ctx.as_bytes())
                    .await
                {
                    Ok(obj) => {
                        if was_revoked && !restoring.load(Ordering::SeqCst) {
                            after_revocation_ok += 1;
                        }
                        written.push((ctx, obj));
                    }
                    Err(Error::KeyInaccessible { .. }) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
                tokio::task::yield_now().await;
            }
            (written, after_revocation_ok)
        }));
    }
    let vault = &w.vault;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        vault.rotate_key("load-key").await.expect("rotate");
        w.manager
            .refresh(&id)
            .await
            .expect("refresh picks up the version");
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    vault.remove_identity(&w.identity).await.expect("revoke");
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::KeyInaccessible { .. })
    ));
    revoked.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    restoring.store(true, Ordering::SeqCst);
    vault
        .set_access(&w.identity, byok::provider::Permissions::CMK)
        .await
        .expect("restore");
    assert_eq!(
        w.manager.probe(&id).await.expect("restored"),
        StateKind::Active
    );
    revoked.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        let (written, after) = t.await.expect("task");
        assert_eq!(
            after, 0,
            "an operation succeeded after revocation was observed"
        );
        for (ctx, obj) in &written {
            assert_eq!(
                &w.manager
                    .decrypt(&id, ctx.as_bytes(), obj)
                    .await
                    .expect("no object lost"),
                ctx.as_bytes()
            );
        }
        total += written.len();
    }
    assert!(total > 20, "the load ran ({total} objects)");
    let rec = w.manager.account(&id).await.expect("get");
    assert_eq!(rec.account_key.expect("key").wrapped.key_version, "4");
    assert!(matches!(
        w.manager.ensure_allowed(&id, Operation::DataRead).await,
        Ok(())
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_on_a_cold_cache_unwrap_once() {
    let w = Arc::new(World::new().await);
    let id = cmk_account(&w, "cold", Policy::builder("cold").build()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"x")
        .await
        .expect("encrypt");
    // Expire the cache, and make the provider slow so that every task arrives while the one
    // unwrap is under way.
    w.clock.advance(Duration::from_secs(3600));
    w.faults.set_latency(Duration::from_millis(100));
    let before = w.unwraps();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (w, id, obj) = (w.clone(), id.clone(), obj.clone());
            tokio::spawn(async move { w.manager.decrypt(&id, b"o", &obj).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("decrypt"), b"x");
    }
    assert_eq!(w.unwraps() - before, 1, "32 concurrent reads, one unwrap");
    // A failing flight does not strand its waiters: they get the error (here: the state
    // change it caused), not a hang.
    w.clock.advance(Duration::from_secs(3600));
    w.faults.cut(ProviderErrorKind::Forbidden);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (w, id, obj) = (w.clone(), id.clone(), obj.clone());
            tokio::spawn(async move { w.manager.decrypt(&id, b"o", &obj).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(
            t.await.expect("task"),
            Err(Error::KeyInaccessible { .. })
        ));
    }
}

/// Issue 16 item 5: spellings of one key URI that differ only where RFC 3986 says they are
/// equivalent (scheme and host case, default port, leading zeros, trailing dot) and in the
/// case of the key name are one key everywhere in the account layer.
#[tokio::test]
async fn equivalent_key_uris_are_one_key() {
    let w = World::new().await;
    w.cmk("cmk-a", 2048).await;
    w.cmk("cmk-b", 2048).await;
    let spelled = |s: String| -> byok::KeyId { s.parse().expect(&s) };
    let host = common::HOST;
    let policy = Policy::builder("same-vault")
        .key_change_same_vault_only(true)
        .build();

    // Platform -> customer with a ":443" spelling: the vault is found.
    let id = w.platform_account("uri-1", policy.clone()).await;
    let a443 = spelled(format!("HTTPS://{}:443/keys/CMK-A", host.to_uppercase()));
    w.manager
        .set_customer_key(&id, a443, w.identity.clone())
        .await
        .expect("platform -> customer through host:443");

    // The same-vault rule sees one vault behind different spellings.
    let b = spelled(format!("https://{host}./keys/cmk-b"));
    let rec = w
        .manager
        .set_customer_key(&id, b, w.identity.clone())
        .await
        .expect("key change within the same vault");
    let KeySource::Customer { key, .. } = &rec.key_source else {
        panic!("customer key expected");
    };
    assert_eq!(key.to_string(), format!("https://{host}/keys/cmk-b"));

    // accounts_using finds the account whatever the spelling of the version's URI.
    for s in [
        format!("https://{host}/keys/cmk-b/1"),
        format!("https://{host}:443/keys/cmk-b/1"),
        format!("https://{host}:00443/keys/CMK-B/1/"),
    ] {
        let found = w
            .manager
            .accounts_using(&spelled(s.clone()))
            .await
            .expect("using");
        assert_eq!(found, vec![id.clone()], "{s}");
    }
}

/// Issue 17: a failure of the service's own platform key is the service's fault (500, or 503
/// when transient), never the tenant's 403 or a policy violation; the provider error is kept
/// as the cause. And the revoked state, the error and the audit event carry typed kinds.
#[tokio::test]
async fn platform_key_failures_are_the_services_fault() {
    let w = World::new().await;
    let service = byok::provider::Identity::new("service");
    let platform = common::vault("platform2.internal", common::REGION, "op", 9, &w.clock);
    platform
        .create_key("platform-kek", byok::provider::KeySpec::Aes256)
        .await
        .expect("key");
    platform
        .set_access(&service, byok::provider::Permissions::CMK)
        .await
        .expect("grant");
    let faults = byok::testing::FaultInjector::new(Arc::new(platform.provider(&service)), 7);
    let manager = byok::AccountManager::builder(
        byok::account::PlatformKey::new(
            Arc::new(faults.clone()),
            "platform-kek",
            byok::provider::WrapAlgorithm::A256Kw,
        ),
        w.directory.clone(),
    )
    .clock(w.clock.clone())
    .build();
    let new = |id: &str| {
        NewAccount::new(
            byok::AccountId::new(id).expect("id"),
            common::REGION,
            common::TENANT,
            Policy::storage(),
        )
    };
    // Creating an account while the platform key refuses: not a policy violation (400).
    faults.cut(ProviderErrorKind::Forbidden);
    let e = manager
        .create_account(new("p1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, Error::PlatformKey(p) if p.kind() == ProviderErrorKind::Forbidden),
        "{e}"
    );
    assert_eq!(e.http_status(), 500);
    faults.restore();
    let record = manager.create_account(new("p1")).await.expect("create");
    let obj = manager
        .encrypt(&record.id, &class("blob"), b"o", b"data")
        .await
        .expect("seal");
    // Past the cache, a definitive failure of the platform key: 500 with its cause, and the
    // account's state does not change (it is not the tenant's key).
    w.clock.advance(Duration::from_secs(3600));
    faults.cut(ProviderErrorKind::KeyDisabled);
    let e = manager
        .decrypt(&record.id, b"o", &obj)
        .await
        .expect_err("disabled");
    assert!(matches!(&e, Error::PlatformKey(_)), "{e}");
    assert_eq!(e.http_status(), 500);
    let cause = std::error::Error::source(&e).expect("the provider error is the source");
    assert_eq!(
        cause
            .downcast_ref::<byok::ProviderError>()
            .map(|p| p.kind()),
        Some(ProviderErrorKind::KeyDisabled)
    );
    assert_eq!(
        manager.account(&record.id).await.expect("get").state.kind(),
        StateKind::Active
    );
    // A transient failure of it is 503.
    faults.cut(ProviderErrorKind::Timeout);
    let e = manager
        .decrypt(&record.id, b"o", &obj)
        .await
        .expect_err("timeout");
    assert_eq!(e.http_status(), 503, "{e}");
    faults.restore();
    w.clock.advance(byok::account::DEFAULT_FAILURE_WINDOW);
    assert_eq!(
        manager.decrypt(&record.id, b"o", &obj).await.expect("back"),
        b"data"
    );
    // Tampered stored data is a server error too.
    let mut bad = obj.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = manager
        .decrypt(&record.id, b"o", &bad)
        .await
        .expect_err("tampered");
    assert!(matches!(e, Error::Decryption));
    assert_eq!(e.http_status(), 500);
}

/// Issue 17: the audit trail's state changes and denials are typed, not Debug strings.
#[tokio::test]
async fn audit_events_are_typed() {
    let w = World::new().await;
    let id = cmk_account(&w, "typed-audit", Policy::content_safety()).await;
    w.vault.remove_identity(&w.identity).await.expect("revoke");
    w.manager.monitor().await.expect("monitor");
    let e = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"x")
        .await
        .expect_err("denied");
    assert!(
        matches!(
            e,
            Error::KeyInaccessible {
                kind: Some(ProviderErrorKind::Forbidden),
                ..
            }
        ),
        "{e}"
    );
    let events = w.audit.events();
    assert!(events.iter().any(|e| e.action
        == AuditAction::StateChange {
            from: StateKind::Active,
            to: StateKind::KeyInaccessible
        }));
    assert!(
        events.iter().any(|e| e.action
            == AuditAction::Denied {
                operation: Operation::DataWrite
            }),
        "{events:?}"
    );
    // The stored state carries the kind too.
    let rec = w.manager.account(&id).await.expect("get");
    assert!(matches!(
        rec.state,
        byok::account::AccountState::KeyInaccessible {
            kind: Some(ProviderErrorKind::Forbidden),
            ..
        }
    ));
}
