//! Revocation that holds: every recipe of the issue as a deterministic test — stale probes,
//! re-keys and monitors that began before a revocation, a definitive failure of the
//! latest-version lookup, a revision conflict while a revocation is persisted, key handles
//! given out before a revocation, two replicas over one store (with and without change
//! hints, and the stale-wrapping lockout), the monitor's writes, skips and concurrency,
//! failures shared by single flight, and per-class gating.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use byok::account::{AccountRecord, AccountState, NewAccount, StateKind};
use byok::audit::AuditAction;
use byok::clock::Clock;
use byok::provider::{KeyProperties, VaultProperties, WrapAlgorithm, WrappedKey};
use byok::store::{AccountStore, ChangeListener, InMemoryAccountStore};
use byok::{
    AccountId, AccountManager, Error, KeyId, KeyProvider, KeySource, Policy, ProviderError,
    ProviderErrorKind, SecretBytes, VaultAdmin,
};
use common::{HOST, World, class};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------
// Test aids: a provider wrapper that can hold an answer back, and store wrappers.

/// Controls for [`Gated`].
#[derive(Debug, Default)]
struct Hooks {
    /// The next unwrap gets its answer from the vault at once but hands it over only after
    /// `release`: the vault's answer "arrives late".
    park_unwrap: AtomicBool,
    parked: Notify,
    release: Notify,
    /// `key_properties(name, None)` (the latest-version lookup) fails with `Forbidden`.
    fail_latest: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Hooks {
    fn park_next_unwrap(&self) {
        self.park_unwrap.store(true, Ordering::SeqCst);
    }

    fn enter(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Gated {
    inner: Arc<dyn KeyProvider>,
    hooks: Arc<Hooks>,
}

#[async_trait]
impl KeyProvider for Gated {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        self.inner.vault_properties().await
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        if version.is_none() && self.hooks.fail_latest.load(Ordering::SeqCst) {
            return Err(ProviderError::new(
                ProviderErrorKind::Forbidden,
                "the identity lost get on the key",
            ));
        }
        self.hooks.enter();
        let r = self.inner.key_properties(name, version).await;
        self.hooks.leave();
        r
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.inner.wrap_key(name, version, algorithm, key).await
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        self.hooks.enter();
        let r = self.inner.unwrap_key(wrapped).await;
        self.hooks.leave();
        if self.hooks.park_unwrap.swap(false, Ordering::SeqCst) {
            self.hooks.parked.notify_one();
            self.hooks.release.notified().await;
        }
        r
    }
}

/// Puts a [`Gated`] in front of the world's fault injector for its identity.
fn gate(w: &World) -> Arc<Hooks> {
    let hooks = Arc::new(Hooks::default());
    w.directory.override_provider(
        HOST,
        &w.identity,
        Arc::new(Gated {
            inner: Arc::new(w.faults.clone()),
            hooks: hooks.clone(),
        }),
    );
    hooks
}

/// A store that forwards to another but never sends change hints (a store that cannot
/// notify, or a replica whose listener is down), and counts revision-changing writes.
#[derive(Debug)]
struct Quiet {
    inner: Arc<InMemoryAccountStore>,
    updates: AtomicU64,
}

impl Quiet {
    fn new(inner: Arc<InMemoryAccountStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            updates: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl AccountStore for Quiet {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        self.inner.get(id).await
    }
    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        self.inner.list().await
    }
    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        self.inner.create(record).await
    }
    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.update(record).await
    }
    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.update_unless_probed_after(record, after).await
    }
    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        self.inner.record_probe(id, at).await
    }
}

async fn cmk_account(w: &World, m: &AccountManager, id: &str, policy: Policy) -> AccountId {
    let key = w.cmk(&format!("{id}-key"), 2048).await;
    let id = AccountId::new(id).expect("id");
    m.create_account(
        NewAccount::new(id.clone(), common::REGION, common::TENANT, policy)
            .key_source(KeySource::customer(key, w.identity.clone())),
    )
    .await
    .expect("create");
    id
}

async fn stored_state(w: &World, id: &AccountId) -> StateKind {
    w.store
        .get(id)
        .await
        .expect("store")
        .expect("record")
        .state
        .kind()
}

fn restored_to_active(w: &World) -> bool {
    w.audit.events().iter().any(|e| {
        matches!(&e.action, AuditAction::StateChange { from, to }
            if *from == StateKind::KeyInaccessible && *to == StateKind::Active)
    })
}

fn inaccessible<T, E: std::borrow::Borrow<Error>>(r: Result<T, E>) -> bool {
    r.is_err_and(|e| matches!(e.borrow(), Error::KeyInaccessible { .. }))
}

// ---------------------------------------------------------------------------------------------
// 1. A stale probe (or monitor, or re-key) does not undo an observed revocation.

#[tokio::test]
async fn a_probe_that_began_before_a_revocation_does_not_undo_it() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "stale-probe", Policy::video_analyzer()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    let hooks = gate(&w);
    hooks.park_next_unwrap();
    let first = tokio::spawn({
        let (m, id) = (w.manager.clone(), id.clone());
        async move { m.probe(&id).await }
    });
    // The first probe's unwrap succeeded at the vault; its answer is still on the way.
    hooks.parked.notified().await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    hooks.release.notify_one();
    let late = first.await.expect("task");
    assert!(inaccessible(late.as_ref()), "a stale probe said {late:?}");
    assert_eq!(stored_state(&w, &id).await, StateKind::KeyInaccessible);
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
    assert!(inaccessible(
        w.manager.encrypt(&id, &class("blob"), b"o", b"x").await
    ));
    assert!(
        !restored_to_active(&w),
        "no return to Active may be audited"
    );
    // A probe that begins after the revocation, once access is back, restores.
    w.faults.restore();
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        w.manager.decrypt(&id, b"o", &obj).await.expect("open"),
        b"data"
    );
    assert!(restored_to_active(&w));
}

#[tokio::test]
async fn a_restore_probe_overtaken_by_a_newer_failure_does_not_restore() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "overtaken", Policy::video_analyzer()).await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    // Access comes back; a probe starts and its unwrap succeeds, but the answer is late.
    w.faults.restore();
    let hooks = gate(&w);
    hooks.park_next_unwrap();
    let first = tokio::spawn({
        let (m, id) = (w.manager.clone(), id.clone());
        async move { m.probe(&id).await }
    });
    hooks.parked.notified().await;
    // Access is cut again, and a newer probe sees it before the first one answers.
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    hooks.release.notify_one();
    let late = first.await.expect("task");
    assert!(inaccessible(late.as_ref()), "{late:?}");
    assert_eq!(stored_state(&w, &id).await, StateKind::KeyInaccessible);
    assert!(!restored_to_active(&w));
}

#[tokio::test]
async fn a_monitor_in_flight_does_not_undo_what_a_data_operation_observed() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "stale-monitor", Policy::video_analyzer()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    let hooks = gate(&w);
    // Past the cache age: the next data operation unwraps.
    w.clock.advance(Duration::from_secs(301));
    hooks.park_next_unwrap();
    let monitor = tokio::spawn({
        let m = w.manager.clone();
        async move { m.monitor().await }
    });
    hooks.parked.notified().await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
    hooks.release.notify_one();
    let entries = monitor.await.expect("task").expect("monitor");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].result.as_ref().ok(),
        Some(&StateKind::KeyInaccessible)
    );
    assert_eq!(stored_state(&w, &id).await, StateKind::KeyInaccessible);
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
    assert!(!restored_to_active(&w));
}

#[tokio::test]
async fn a_rekey_that_began_before_a_revocation_does_not_undo_it() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "stale-rekey", Policy::video_analyzer()).await;
    let hooks = gate(&w);
    hooks.park_next_unwrap();
    let rekey = tokio::spawn({
        let (m, id) = (w.manager.clone(), id.clone());
        async move { m.use_platform_key(&id).await }
    });
    hooks.parked.notified().await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    hooks.release.notify_one();
    let late = rekey.await.expect("task");
    assert!(
        matches!(
            late,
            Err(Error::Conflict(_)) | Err(Error::KeyInaccessible { .. })
        ),
        "{late:?}"
    );
    let rec = w.store.get(&id).await.expect("store").expect("record");
    assert_eq!(rec.state.kind(), StateKind::KeyInaccessible);
    assert!(matches!(rec.key_source, KeySource::Customer { .. }));
    assert!(!restored_to_active(&w));
}

// ---------------------------------------------------------------------------------------------
// 2. A definitive failure of the latest-version lookup locks the account.

#[tokio::test]
async fn refresh_and_monitor_lock_on_a_definitive_latest_version_failure() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "latest", Policy::video_analyzer()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    let hooks = gate(&w);
    hooks.fail_latest.store(true, Ordering::SeqCst);
    let r = w.manager.refresh(&id).await;
    assert!(inaccessible(r.as_ref()), "{r:?}");
    assert_eq!(stored_state(&w, &id).await, StateKind::KeyInaccessible);
    // Reads from the cache stop at once.
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
    let entries = w.manager.monitor().await.expect("monitor");
    assert_eq!(
        entries[0].result.as_ref().ok(),
        Some(&StateKind::KeyInaccessible)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A revision conflict while persisting a revocation does not forget it.

/// Forwards to the world's store; the first write of `KeyInaccessible` meets a concurrent
/// write by "another replica" (a conflict), the next ones fail as a store outage while
/// `outage` is set.
#[derive(Debug)]
struct Meddling {
    inner: Arc<InMemoryAccountStore>,
    meddled: AtomicBool,
    outage: AtomicBool,
}

#[async_trait]
impl AccountStore for Meddling {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        self.inner.get(id).await
    }
    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        self.inner.list().await
    }
    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        self.inner.create(record).await
    }
    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.meddle(record).await?;
        self.inner.update(record).await
    }
    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.meddle(record).await?;
        self.inner.update_unless_probed_after(record, after).await
    }
    fn subscribe(&self, listener: std::sync::Weak<dyn ChangeListener>) -> bool {
        self.inner.subscribe(listener)
    }
}

impl Meddling {
    async fn meddle(&self, record: &AccountRecord) -> Result<(), Error> {
        if record.state.kind() == StateKind::KeyInaccessible {
            if !self.meddled.swap(true, Ordering::SeqCst) {
                // Another replica wrote an unrelated change first.
                let mut other = self.inner.get(&record.id).await?.expect("record");
                other.revision += 1;
                other.updated += Duration::from_millis(1);
                self.inner.update(&other).await?;
            } else if self.outage.load(Ordering::SeqCst) {
                return Err(Error::Store {
                    message: "connection refused".into(),
                    source: None,
                });
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_conflict_while_persisting_a_revocation_does_not_forget_it() {
    let w = World::new().await;
    let store = Arc::new(Meddling {
        inner: w.store.clone(),
        meddled: AtomicBool::new(false),
        outage: AtomicBool::new(true),
    });
    let m = w
        .replica_builder(store.clone(), w.directory.clone())
        .build();
    let id = cmk_account(&w, &m, "conflict", Policy::video_analyzer()).await;
    let obj = m
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    w.clock.advance(Duration::from_secs(301));
    w.faults.cut(ProviderErrorKind::Forbidden);
    // Conflict, then the retry fails as an outage: the observation stays in force here.
    assert!(inaccessible(m.decrypt(&id, b"o", &obj).await));
    assert!(store.meddled.load(Ordering::SeqCst));
    assert_eq!(stored_state(&w, &id).await, StateKind::Active);
    for _ in 0..3 {
        assert!(inaccessible(m.decrypt(&id, b"o", &obj).await));
        assert!(inaccessible(
            m.encrypt(&id, &class("blob"), b"o", b"x").await
        ));
        assert_eq!(
            m.account(&id).await.map(|r| r.state.kind()).ok(),
            Some(StateKind::KeyInaccessible)
        );
    }
    // Once the store is back, the next probe persists it.
    store.outage.store(false, Ordering::SeqCst);
    assert!(inaccessible(m.probe(&id).await));
    assert_eq!(stored_state(&w, &id).await, StateKind::KeyInaccessible);
}

// ---------------------------------------------------------------------------------------------
// 4. Key handles given out before a revocation stop working.

#[tokio::test]
async fn key_handles_and_streams_die_with_the_revocation() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "handles", Policy::video_analyzer()).await;
    let blob = class("blob");
    let big = vec![7u8; 200 * 1024];
    let obj = w
        .manager
        .encrypt(&id, &blob, b"o", &big)
        .await
        .expect("encrypt");
    let keys = w.manager.keys_for_writing(&id, &blob).await.expect("keys");
    let copy = keys.clone();
    let header = byok::envelope::inspect(&obj).expect("header");
    let read_keys = w
        .manager
        .keys_for_reading(&id, &header)
        .await
        .expect("keys");
    let mut writer = w
        .manager
        .encrypt_writer(&id, &blob, b"s", Vec::new())
        .await
        .expect("writer");
    writer.write_all(&big[..1000]).expect("before");
    let mut reader = w
        .manager
        .decrypt_reader(&id, b"o", std::io::Cursor::new(obj.clone()))
        .await
        .expect("reader");
    let mut first = vec![0u8; 1000];
    reader.read_exact(&mut first).expect("first chunk");

    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));

    for k in [&keys, &copy] {
        let e = k.envelope().expect("envelope").seal(b"o", b"x");
        assert!(inaccessible(e.as_ref()), "{e:?}");
    }
    let e = read_keys.envelope().expect("envelope").open(b"o", &obj);
    assert!(inaccessible(e.as_ref()), "{e:?}");
    let e = writer.write_all(&big).and_then(|()| writer.flush());
    let e = e.expect_err("the writer must stop");
    assert!(inaccessible(Err::<(), _>(into_byok(e))));
    let mut rest = Vec::new();
    let e = reader
        .read_to_end(&mut rest)
        .expect_err("the reader must stop");
    assert!(inaccessible(Err::<(), _>(into_byok(e))));

    // A restore gives new handles; the old ones stay dead.
    w.faults.restore();
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert!(inaccessible(keys.envelope().expect("env").seal(b"o", b"x")));
    let fresh = w.manager.keys_for_writing(&id, &blob).await.expect("keys");
    fresh
        .envelope()
        .expect("env")
        .seal(b"o", b"x")
        .expect("seal");
}

fn into_byok(e: std::io::Error) -> Error {
    match e.into_inner().map(|b| b.downcast::<Error>()) {
        Some(Ok(e)) => *e,
        other => panic!("not a byok error: {other:?}"),
    }
}

#[tokio::test]
async fn deletion_revokes_handles_too() {
    let w = World::new().await;
    let id = w.platform_account("del", Policy::video_analyzer()).await;
    let keys = w
        .manager
        .keys_for_writing(&id, &class("blob"))
        .await
        .expect("keys");
    w.manager.delete_account(&id).await.expect("delete");
    let e = keys.envelope().expect("env").seal(b"o", b"x");
    assert!(matches!(e, Err(Error::AccountNotFound(_))), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Two replicas over one store.

#[tokio::test]
async fn with_change_hints_a_replica_follows_a_revocation_and_a_restore_at_once() {
    let w = World::new().await;
    let a = &w.manager;
    let b = w.replica();
    let id = cmk_account(&w, a, "hinted", Policy::video_analyzer()).await;
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(a.probe(&id).await));
    // No clock movement: B refuses reads and writes at once.
    assert!(inaccessible(b.decrypt(&id, b"o", &obj).await));
    assert!(inaccessible(
        b.encrypt(&id, &class("blob"), b"o", b"x").await
    ));
    w.faults.restore();
    assert_eq!(a.probe(&id).await.expect("restore"), StateKind::Active);
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");
    b.encrypt(&id, &class("blob"), b"o", b"x")
        .await
        .expect("b writes");
}

#[tokio::test]
async fn without_change_hints_a_replica_follows_within_record_max_age() {
    let w = World::new().await;
    let a = &w.manager;
    let quiet = Quiet::new(w.store.clone());
    let b = w.replica_builder(quiet, w.directory.clone()).build();
    let id = cmk_account(&w, a, "quiet", Policy::video_analyzer()).await;
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(a.probe(&id).await));
    // Within the bound B may still serve from its cache; at the bound it refuses.
    w.clock.advance(byok::account::DEFAULT_RECORD_MAX_AGE);
    assert!(inaccessible(b.decrypt(&id, b"o", &obj).await));
    assert!(inaccessible(
        b.encrypt(&id, &class("blob"), b"o", b"x").await
    ));
    // Restores propagate the same way (not an hour of 403s).
    w.faults.restore();
    assert_eq!(a.probe(&id).await.expect("restore"), StateKind::Active);
    w.clock.advance(byok::account::DEFAULT_RECORD_MAX_AGE);
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");
}

#[tokio::test]
async fn a_stale_replica_never_locks_the_fleet_on_an_old_wrapping() {
    let w = World::new().await;
    let a = &w.manager;
    // B never gets hints and keeps its copy for an hour: it is as stale as a replica can be.
    let quiet = Quiet::new(w.store.clone());
    let b = w
        .replica_builder(quiet.clone(), w.directory.clone())
        .record_max_age(Duration::from_secs(3600))
        .build();
    let name = "pinned-key";
    w.cmk(name, 2048).await;
    let v1 = w.vault.list_versions(name).await.expect("versions")[0]
        .version
        .clone();
    let id = AccountId::new("stale-wrap").expect("id");
    a.create_account(NewAccount::new(
        id.clone(),
        common::REGION,
        common::TENANT,
        Policy::storage(),
    ))
    .await
    .expect("create");
    let k1 = KeyId::new(HOST, name, Some(&v1)).expect("id");
    a.set_customer_key(&id, k1.clone(), w.identity.clone())
        .await
        .expect("v1");
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b on v1"), b"data");
    // A re-pins to version 2; nothing uses v1 any more, so the operator disables it.
    let v2 = w.vault.rotate_key(name).await.expect("rotate").version;
    let k2 = KeyId::new(HOST, name, Some(&v2)).expect("id");
    a.set_customer_key(&id, k2.clone(), w.identity.clone())
        .await
        .expect("v2");
    assert!(a.accounts_using(&k1).await.expect("using").is_empty());
    assert_eq!(
        a.accounts_using(&k2).await.expect("using"),
        vec![id.clone()]
    );
    w.vault
        .set_enabled(name, &v1, false)
        .await
        .expect("disable v1");
    // B's cache expires; its copy still names v1, whose unwrap now fails definitively.
    w.clock.advance(Duration::from_secs(301));
    let writes = quiet.updates.load(Ordering::SeqCst);
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b on v2"), b"data");
    assert_eq!(
        quiet.updates.load(Ordering::SeqCst),
        writes,
        "B wrote nothing"
    );
    let rec = w.store.get(&id).await.expect("store").expect("record");
    assert_eq!(rec.state, AccountState::Active);
    assert_eq!(rec.current_customer_key(), Some(k2));
    assert!(!w.audit.events().iter().any(|e| matches!(&e.action,
        AuditAction::StateChange { to, .. } if *to == StateKind::KeyInaccessible)));
}

// ---------------------------------------------------------------------------------------------
// 6. The monitor across replicas.

#[tokio::test]
async fn a_probe_that_changes_nothing_writes_no_revision() {
    let w = World::new().await;
    let quiet = Quiet::new(w.store.clone());
    let m = w
        .replica_builder(quiet.clone(), w.directory.clone())
        .build();
    let id = cmk_account(&w, &m, "no-write", Policy::video_analyzer()).await;
    let before = w.store.get(&id).await.expect("store").expect("record");
    w.clock.advance(Duration::from_secs(5));
    let writes = quiet.updates.load(Ordering::SeqCst);
    m.monitor().await.expect("monitor");
    m.probe(&id).await.expect("check");
    let after = w.store.get(&id).await.expect("store").expect("record");
    assert_eq!(quiet.updates.load(Ordering::SeqCst), writes);
    assert_eq!(after.revision, before.revision);
    assert!(
        after.last_probed > before.last_probed,
        "the probe time is kept"
    );
}

#[tokio::test]
async fn accounts_probed_recently_by_any_replica_are_skipped() {
    let w = World::new().await;
    let interval = Duration::from_secs(60);
    let a = w
        .replica_builder(w.store.clone(), w.directory.clone())
        .probe_interval(interval)
        .build();
    let b = w
        .replica_builder(w.store.clone(), w.directory.clone())
        .probe_interval(interval)
        .build();
    for i in 0..3 {
        cmk_account(&w, &a, &format!("skip-{i}"), Policy::video_analyzer()).await;
    }
    w.clock.advance(interval);
    assert_eq!(a.monitor().await.expect("a").len(), 3);
    let calls = w.unwraps();
    assert!(
        b.monitor().await.expect("b").is_empty(),
        "A just probed them"
    );
    assert_eq!(w.unwraps(), calls);
    w.clock.advance(interval);
    assert_eq!(b.monitor().await.expect("b").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_probes_concurrently_within_its_bound() {
    let w = World::new().await;
    let m = w
        .replica_builder(w.store.clone(), w.directory.clone())
        .monitor_concurrency(4)
        .build();
    for i in 0..12 {
        cmk_account(&w, &m, &format!("conc-{i}"), Policy::video_analyzer()).await;
    }
    let hooks = gate(&w);
    w.faults.set_latency(Duration::from_millis(20));
    let entries = m.monitor().await.expect("monitor");
    assert_eq!(entries.len(), 12);
    assert!(entries.iter().all(|e| e.result.is_ok()));
    let max = hooks.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&max),
        "at most 4 at once, more than 1: {max}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Single flight shares failures.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_one_unwrap_per_attempt_not_one_per_caller() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "outage", Policy::video_analyzer()).await;
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    w.clock.advance(Duration::from_secs(301));
    w.faults.set_latency(Duration::from_millis(50));
    w.faults.cut(ProviderErrorKind::Unavailable);
    let before = w.unwraps();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (m, id, obj) = (w.manager.clone(), id.clone(), obj.clone());
            tokio::spawn(async move { m.decrypt(&id, b"o", &obj).await })
        })
        .collect();
    for c in callers {
        let r = c.await.expect("task");
        assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    }
    assert_eq!(w.unwraps() - before, 1, "one unwrap for ten callers");
    // Callers within the failure window share it too.
    for _ in 0..5 {
        assert!(matches!(
            w.manager.decrypt(&id, b"o", &obj).await,
            Err(Error::Unavailable { .. })
        ));
    }
    assert_eq!(w.unwraps() - before, 1);
    // Past it, the provider is asked again; the state never changed.
    w.faults.restore();
    w.faults.set_latency(Duration::ZERO);
    w.clock.advance(byok::account::DEFAULT_FAILURE_WINDOW);
    assert_eq!(
        w.manager.decrypt(&id, b"o", &obj).await.expect("back"),
        b"data"
    );
    assert_eq!(w.unwraps() - before, 2);
    assert_eq!(stored_state(&w, &id).await, StateKind::Active);
}

// ---------------------------------------------------------------------------------------------
// 8. Per-class gating.

#[tokio::test]
async fn storage_queue_and_table_data_outside_the_customer_key_survive_revocation() {
    let w = World::new().await;
    let key = w.cmk("st-key", 2048).await;
    let plain = AccountId::new("st-plain").expect("id");
    let chosen = AccountId::new("st-chosen").expect("id");
    w.manager
        .create_account(NewAccount::new(
            plain.clone(),
            common::REGION,
            common::TENANT,
            Policy::storage(),
        ))
        .await
        .expect("create");
    w.manager
        .create_account(
            NewAccount::new(
                chosen.clone(),
                common::REGION,
                common::TENANT,
                Policy::storage(),
            )
            .choose_classes(&["queue"]),
        )
        .await
        .expect("create");
    for id in [&plain, &chosen] {
        w.manager
            .set_customer_key(id, key.clone(), w.identity.clone())
            .await
            .expect("cmk");
    }
    let mut objs = Vec::new();
    for id in [&plain, &chosen] {
        for c in ["queue", "table", "blob"] {
            let o = w
                .manager
                .encrypt(id, &class(c), b"o", c.as_bytes())
                .await
                .expect("encrypt");
            objs.push((id.clone(), c, o));
        }
    }
    w.faults.cut(ProviderErrorKind::Forbidden);
    for id in [&plain, &chosen] {
        assert!(inaccessible(w.manager.probe(id).await));
    }
    for (id, c, o) in &objs {
        let covered = *c == "blob" || (id == &chosen && *c == "queue");
        let read = w.manager.decrypt(id, b"o", o).await;
        let write = w.manager.encrypt(id, &class(c), b"o", b"new").await;
        if covered {
            assert!(inaccessible(read.as_ref()), "{id} {c}: {read:?}");
            assert!(inaccessible(write.as_ref()), "{id} {c}: {write:?}");
        } else {
            assert_eq!(read.expect("uncovered read"), c.as_bytes(), "{id} {c}");
            write.expect("uncovered write");
        }
    }
}

#[tokio::test]
async fn content_safety_blocklist_names_stay_locked_after_revocation() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "cs", Policy::content_safety()).await;
    let names = class("blocklist-names");
    let obj = w
        .manager
        .encrypt(&id, &names, b"o", b"list")
        .await
        .expect("encrypt");
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
    assert!(inaccessible(
        w.manager.encrypt(&id, &names, b"o", b"x").await
    ));
}

// ---------------------------------------------------------------------------------------------
// Typed key roles: a customer vault named like a service key is still a customer key.

#[tokio::test]
async fn a_customer_vault_named_platform_is_a_customer_key() {
    let w = World::new().await;
    let key = w
        .key_in_other_vault("platform", common::REGION, common::TENANT, true)
        .await;
    let id = AccountId::new("named-platform").expect("id");
    w.manager
        .create_account(
            NewAccount::new(
                id.clone(),
                common::REGION,
                common::TENANT,
                Policy::video_analyzer(),
            )
            .key_source(KeySource::customer(key.clone(), w.identity.clone())),
        )
        .await
        .expect("create");
    let rec = w.store.get(&id).await.expect("store").expect("record");
    let wrapped = rec.account_key.as_ref().expect("wrapped");
    assert_eq!(wrapped.role, byok::account::KeyRole::Customer);
    assert_eq!(
        rec.platform_class_key.as_ref().expect("pc").role,
        byok::account::KeyRole::Platform
    );
    let versioned = key
        .with_version(&wrapped.wrapped.key_version)
        .expect("versioned");
    assert_eq!(
        w.manager.accounts_using(&versioned).await.expect("using"),
        vec![id.clone()]
    );
    let audited = w.audit.events().into_iter().any(|e| {
        e.key
            .as_deref()
            .is_some_and(|k| k.starts_with("https://platform/keys/k/"))
    });
    assert!(audited, "audit names the customer key by its URI");
}

#[tokio::test]
async fn format_1_records_still_load_with_their_roles() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "fmt1", Policy::video_analyzer()).await;
    let rec = w.store.get(&id).await.expect("store").expect("record");
    let mut json = serde_json::to_value(&rec).expect("json");
    json["format"] = 1.into();
    json.as_object_mut().expect("obj").remove("epoch");
    for k in ["account_key", "platform_class_key"] {
        json[k].as_object_mut().expect("key").remove("role");
    }
    let back: AccountRecord = serde_json::from_value(json).expect("format 1 loads");
    assert_eq!(
        back.account_key.expect("ak").role,
        byok::account::KeyRole::Customer
    );
    assert_eq!(
        back.platform_class_key.expect("pc").role,
        byok::account::KeyRole::Platform
    );
    assert_eq!(back.epoch, 0);
}

// ---------------------------------------------------------------------------------------------
// Audit sinks run outside every lock: one that calls back into the manager does not deadlock.

#[derive(Debug, Default)]
struct CallingBack {
    manager: std::sync::OnceLock<AccountManager>,
    called: AtomicBool,
    answered: AtomicBool,
}

impl byok::audit::AuditSink for CallingBack {
    fn record(&self, event: &byok::audit::AuditEvent) {
        if !matches!(event.action, AuditAction::StateChange { .. })
            || self.called.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let m = self.manager.get().expect("manager").clone();
        let id = AccountId::new(event.account.clone()).expect("id");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let _ = rt.block_on(async {
                let _ = m.probe(&id).await;
                m.account(&id).await
            });
            let _ = tx.send(());
        });
        // The sink waits for the manager, as a synchronous sink that queries it would.
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            self.answered.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_sink_may_call_back_into_the_manager() {
    let w = World::new().await;
    let sink = Arc::new(CallingBack::default());
    let m = w
        .replica_builder(w.store.clone(), w.directory.clone())
        .audit(sink.clone())
        .build();
    sink.manager.set(m.clone()).expect("set once");
    let id = cmk_account(&w, &m, "audit-back", Policy::video_analyzer()).await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(m.probe(&id).await));
    assert!(
        sink.called.load(Ordering::SeqCst),
        "a state change was audited"
    );
    assert!(
        sink.answered.load(Ordering::SeqCst),
        "the manager answered a call from inside the audit sink"
    );
}

// ---------------------------------------------------------------------------------------------
// Review findings: handles across cache refills, reused ids, layer 2 of uncovered classes.

#[tokio::test]
async fn handles_from_before_a_cache_refill_die_with_the_revocation() {
    let w = World::new().await;
    let id = cmk_account(&w, &w.manager, "refill", Policy::video_analyzer()).await;
    let blob = class("blob");
    let old = w.manager.keys_for_writing(&id, &blob).await.expect("keys");
    // A successful probe refills the cache; the cache also expires and is refilled.
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    w.clock.advance(Duration::from_secs(301));
    let obj = w
        .manager
        .encrypt(&id, &blob, b"o", b"x")
        .await
        .expect("encrypt");
    let newer = w.manager.keys_for_writing(&id, &blob).await.expect("keys");
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    for k in [&old, &newer] {
        assert!(inaccessible(k.envelope().expect("env").seal(b"o", b"x")));
    }
    assert!(inaccessible(w.manager.decrypt(&id, b"o", &obj).await));
}

#[tokio::test]
async fn a_reused_account_id_is_a_new_account_on_every_replica() {
    let w = World::new().await;
    let a = &w.manager;
    let b = w.replica();
    let id = w.platform_account("reused", Policy::video_analyzer()).await;
    let old = a
        .encrypt(&id, &class("blob"), b"o", b"old")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &old).await.expect("b"), b"old");
    a.delete_account(&id).await.expect("delete");
    w.clock.advance(Duration::from_secs(10));
    assert_eq!(
        w.store.purge_deleted(w.clock.now()).await.expect("purge"),
        1
    );
    a.create_account(NewAccount::new(
        id.clone(),
        common::REGION,
        common::TENANT,
        Policy::video_analyzer(),
    ))
    .await
    .expect("create again");
    // Both replicas serve the new account (not "not found", not the shredded keys).
    let new = a
        .encrypt(&id, &class("blob"), b"o", b"new")
        .await
        .expect("a writes");
    let from_b = b
        .encrypt(&id, &class("blob"), b"o", b"from b")
        .await
        .expect("b writes");
    assert_eq!(b.decrypt(&id, b"o", &new).await.expect("b reads"), b"new");
    assert_eq!(
        a.decrypt(&id, b"o", &from_b).await.expect("a reads"),
        b"from b"
    );
    // The deleted account's objects stay unreadable.
    for m in [a, &b] {
        assert!(matches!(
            m.decrypt(&id, b"o", &old).await,
            Err(Error::Decryption)
        ));
    }
}

#[tokio::test]
async fn double_encrypted_uncovered_classes_survive_revocation_past_the_cache() {
    let w = World::new().await;
    let key = w.cmk("de-st-key", 2048).await;
    let id = AccountId::new("de-storage").expect("id");
    w.manager
        .create_account(
            NewAccount::new(
                id.clone(),
                common::REGION,
                common::TENANT,
                Policy::storage(),
            )
            .double_encryption(true),
        )
        .await
        .expect("create");
    w.manager
        .set_customer_key(&id, key, w.identity.clone())
        .await
        .expect("cmk");
    let queue = w
        .manager
        .encrypt(&id, &class("queue"), b"o", b"q")
        .await
        .expect("encrypt");
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(w.manager.probe(&id).await));
    assert_eq!(
        w.manager.decrypt(&id, b"o", &queue).await.expect("warm"),
        b"q"
    );
    // Past the cache: the platform-class and layer-2 keys are unwrapped again.
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.decrypt(&id, b"o", &queue).await.expect("cold"),
        b"q"
    );
    w.manager
        .encrypt(&id, &class("queue"), b"o", b"q2")
        .await
        .expect("cold write");
}
