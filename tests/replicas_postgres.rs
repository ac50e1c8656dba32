//! Two replicas over PostgreSQL: two `AccountManager`s, each on its own `PostgresAccountStore`
//! connection to one database of a throwaway cluster (`pg_support`), with the system clock.
//!
//! - a revocation committed by A is refused by B within the notification latency (far below
//!   B's `record_max_age`), and a restore likewise;
//! - a stale replica never locks the fleet on an old wrapping (v1 disabled after a re-pin to
//!   v2);
//! - with its listening connection killed, B still follows within `record_max_age`, and
//!   within the notification latency again once the listener reconnected;
//! - PostgreSQL restarted mid-run: 503s while it is down, no state change, nothing lost;
//! - a fresh manager over the same database opens every object the first one wrote;
//! - the hot path makes no store call with a warm cache.

#![allow(clippy::unwrap_used)]

mod common;
mod pg_support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use byok::account::{AccountRecord, AccountState, NewAccount, StateKind};
use byok::audit::AuditAction;
use byok::clock::SystemClock;
use byok::store::{
    AccountStore, ChangeListener, PostgresAccountStore, PostgresStoreOptions, StoreChange,
};
use byok::{
    AccountId, AccountManager, Error, KeyId, KeySource, Policy, ProviderErrorKind, VaultAdmin,
};
use common::{HOST, REGION, TENANT, World, class};
use pg_support::Cluster;

/// How long a convergence check polls before it fails. Generous (a loaded 2-core machine),
/// yet far below [`B_RECORD_MAX_AGE`]: only a change hint explains convergence within it.
const HINT_BOUND: Duration = Duration::from_secs(3);

/// B's `record_max_age` where the hint path is under test.
const B_RECORD_MAX_AGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Test aids.

/// The shared cluster and a fresh database in it, or `None` (skipped) when PostgreSQL is
/// not installed outside CI (under `CI=true`, `pg_support` fails instead).
fn database(label: &str) -> Option<(&'static Cluster, String, String)> {
    let cluster = pg_support::shared()?;
    let (url, name) = cluster.database(label);
    Some((cluster, url, name))
}

async fn store(url: &str, options: PostgresStoreOptions) -> Arc<PostgresAccountStore> {
    Arc::new(
        PostgresAccountStore::connect_with(url, options)
            .await
            .expect("connect"),
    )
}

/// A replica of the world's service (same keys, directory and audit sink) over `store`, on
/// the system clock.
fn replica(w: &World, store: Arc<dyn AccountStore>, record_max_age: Duration) -> AccountManager {
    w.replica_builder(store, w.directory.clone())
        .clock(Arc::new(SystemClock))
        .record_max_age(record_max_age)
        .build()
}

/// Counts the hints a store sends; [`Listening::up`] waits until its listening connection
/// has run `LISTEN` (the store sends `Unknown` after every successful (re)connect).
#[derive(Default)]
struct Listening {
    unknowns: AtomicUsize,
    accounts: AtomicUsize,
}

impl ChangeListener for Listening {
    fn changed(&self, change: StoreChange) {
        match change {
            StoreChange::Unknown => self.unknowns.fetch_add(1, Ordering::SeqCst),
            _ => self.accounts.fetch_add(1, Ordering::SeqCst),
        };
    }
}

impl Listening {
    /// Subscribes to `store` (starting its listening connection).
    fn on(store: &dyn AccountStore) -> Arc<Listening> {
        let l = Arc::new(Listening::default());
        let weak: Weak<dyn ChangeListener> = Arc::downgrade(&l) as Weak<dyn ChangeListener>;
        assert!(store.subscribe(weak), "the PostgreSQL store notifies");
        l
    }

    fn unknowns(&self) -> usize {
        self.unknowns.load(Ordering::SeqCst)
    }

    /// Waits until more than `seen` `Unknown`s arrived (a (re)connect completed).
    async fn reconnected_after(&self, seen: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.unknowns() <= seen {
            assert!(
                Instant::now() < deadline,
                "the listening connection did not (re)connect within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn up(&self) {
        self.reconnected_after(0, Duration::from_secs(10)).await;
    }
}

/// Calls to a [`Counting`] store, per method.
#[derive(Debug, Default)]
struct Calls {
    get: AtomicU64,
    list: AtomicU64,
    list_page: AtomicU64,
    create: AtomicU64,
    update: AtomicU64,
    update_unless_probed_after: AtomicU64,
    accounts_using: AtomicU64,
    record_probe: AtomicU64,
    purge_deleted: AtomicU64,
    subscribe: AtomicU64,
}

impl Calls {
    fn all(&self) -> [(&'static str, u64); 10] {
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        [
            ("get", n(&self.get)),
            ("list", n(&self.list)),
            ("list_page", n(&self.list_page)),
            ("create", n(&self.create)),
            ("update", n(&self.update)),
            (
                "update_unless_probed_after",
                n(&self.update_unless_probed_after),
            ),
            ("accounts_using", n(&self.accounts_using)),
            ("record_probe", n(&self.record_probe)),
            ("purge_deleted", n(&self.purge_deleted)),
            ("subscribe", n(&self.subscribe)),
        ]
    }

    fn total(&self) -> u64 {
        self.all().iter().map(|(_, n)| n).sum()
    }

    /// Revision-changing writes.
    fn writes(&self) -> u64 {
        self.create.load(Ordering::SeqCst)
            + self.update.load(Ordering::SeqCst)
            + self.update_unless_probed_after.load(Ordering::SeqCst)
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::SeqCst);
}

/// Forwards every method to another store and counts the calls.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn AccountStore>,
    calls: Calls,
}

impl Counting {
    fn new(inner: Arc<dyn AccountStore>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            calls: Calls::default(),
        })
    }
}

#[async_trait]
impl AccountStore for Counting {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        bump(&self.calls.get);
        self.inner.get(id).await
    }
    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        bump(&self.calls.list);
        self.inner.list().await
    }
    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        bump(&self.calls.list_page);
        self.inner.list_page(after, limit).await
    }
    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        bump(&self.calls.create);
        self.inner.create(record).await
    }
    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        bump(&self.calls.update);
        self.inner.update(record).await
    }
    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        bump(&self.calls.update_unless_probed_after);
        self.inner.update_unless_probed_after(record, after).await
    }
    async fn accounts_using(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<AccountId>, Error> {
        bump(&self.calls.accounts_using);
        self.inner.accounts_using(vault, name, version).await
    }
    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        bump(&self.calls.record_probe);
        self.inner.record_probe(id, at).await
    }
    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        bump(&self.calls.purge_deleted);
        self.inner.purge_deleted(before).await
    }
    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        bump(&self.calls.subscribe);
        self.inner.subscribe(listener)
    }
}

/// An account under a fresh RSA 2048 customer key of the world's tenant vault.
async fn cmk_account(w: &World, m: &AccountManager, id: &str, policy: Policy) -> AccountId {
    let key = w.cmk(&format!("{id}-key"), 2048).await;
    let id = AccountId::new(id).expect("id");
    m.create_account(
        NewAccount::new(id.clone(), REGION, TENANT, policy)
            .key_source(KeySource::customer(key, w.identity.clone())),
    )
    .await
    .expect("create");
    id
}

fn inaccessible<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::KeyInaccessible { .. }))
}

/// Polls `done` (every 2 ms) until it holds or `limit` passed; returns how long it took.
async fn converge(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn stored(store: &dyn AccountStore, id: &AccountId) -> AccountRecord {
    store.get(id).await.expect("get").expect("record")
}

// ---------------------------------------------------------------------------------------------
// 1. Revocation and restore propagate through LISTEN/NOTIFY.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_a_restore_by_a_reach_b_within_the_notification_latency() {
    let Some((_, url, _)) = database("hinted") else {
        return;
    };
    let w = World::new().await;
    let sa = store(&url, PostgresStoreOptions::new()).await;
    let sb = store(&url, PostgresStoreOptions::new()).await;
    let b_hints = Listening::on(&*sb);
    let a = replica(&w, sa.clone(), byok::account::DEFAULT_RECORD_MAX_AGE);
    let b = replica(&w, sb.clone(), B_RECORD_MAX_AGE);
    b_hints.up().await;

    let id = cmk_account(&w, &a, "hinted", Policy::video_analyzer()).await;
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    // B warm: its record copy is good for 30 s and its account keys for 5 minutes.
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");
    b.encrypt(&id, &class("blob"), b"o2", b"x")
        .await
        .expect("b writes");
    let unwraps = w.unwraps();

    // The tenant cuts the service's access; A observes it and commits the revocation.
    w.faults.cut(ProviderErrorKind::Forbidden);
    let started = Instant::now();
    assert!(inaccessible(&a.probe(&id).await));
    assert_eq!(
        stored(&*sa, &id).await.state.kind(),
        StateKind::KeyInaccessible
    );
    let refused = converge(HINT_BOUND, async || {
        inaccessible(&b.decrypt(&id, b"o", &obj).await)
    })
    .await
    .map(|_| started.elapsed());
    let revoked_in = refused.unwrap_or_else(|| {
        panic!("B still served {HINT_BOUND:?} after A committed the revocation")
    });
    assert!(revoked_in < B_RECORD_MAX_AGE / 10);
    assert!(inaccessible(
        &b.encrypt(&id, &class("blob"), b"o3", b"x").await
    ));
    assert_eq!(
        w.unwraps(),
        unwraps,
        "B learnt it from the store, not from its own unwrap"
    );

    // The tenant restores access; A's probe commits Active; B serves again.
    w.faults.restore();
    let started = Instant::now();
    assert_eq!(a.probe(&id).await.expect("restore"), StateKind::Active);
    let restored_in = converge(HINT_BOUND, async || {
        b.decrypt(&id, b"o", &obj).await.is_ok()
    })
    .await
    .map(|_| started.elapsed())
    .unwrap_or_else(|| panic!("B still refused {HINT_BOUND:?} after A restored"));
    assert!(restored_in < B_RECORD_MAX_AGE / 10);
    b.encrypt(&id, &class("blob"), b"o4", b"x")
        .await
        .expect("b writes again");
    eprintln!(
        "B followed the revocation in {revoked_in:?} and the restore in {restored_in:?} \
         (record_max_age {B_RECORD_MAX_AGE:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A stale replica never locks the fleet on an old wrapping.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_never_locks_the_fleet_on_an_old_wrapping() {
    let Some((_, url, _)) = database("stale_wrap") else {
        return;
    };
    let w = World::new().await;
    let sa = store(&url, PostgresStoreOptions::new()).await;
    // B as stale as a replica can be: no hints, and its copy kept for an hour.
    let sb = Counting::new(store(&url, PostgresStoreOptions::new().notifications(false)).await);
    let a = replica(&w, sa.clone(), byok::account::DEFAULT_RECORD_MAX_AGE);
    let b = replica(&w, sb.clone(), Duration::from_secs(3600));
    assert_eq!(sb.calls.subscribe.load(Ordering::SeqCst), 1);

    // Storage rules (pinned versions), with a short account-key cache.
    let cache = Duration::from_millis(500);
    let mut policy = Policy::storage();
    policy.cache_max_age = cache;
    let name = "pinned-key";
    w.cmk(name, 2048).await;
    let v1 = w.vault.list_versions(name).await.expect("versions")[0]
        .version
        .clone();
    let id = AccountId::new("stale-wrap").expect("id");
    a.create_account(NewAccount::new(id.clone(), REGION, TENANT, policy))
        .await
        .expect("create with the platform key");
    let k1 = KeyId::new(HOST, name, Some(&v1)).expect("id");
    a.set_customer_key(&id, k1.clone(), w.identity.clone())
        .await
        .expect("pin v1");
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b on v1"), b"data");
    let b_read_at = Instant::now();

    // A re-pins to version 2; nothing uses v1 any more, so the operator disables it.
    let v2 = w.vault.rotate_key(name).await.expect("rotate").version;
    let k2 = KeyId::new(HOST, name, Some(&v2)).expect("id");
    a.set_customer_key(&id, k2.clone(), w.identity.clone())
        .await
        .expect("re-pin v2");
    assert!(a.accounts_using(&k1).await.expect("using").is_empty());
    assert_eq!(
        a.accounts_using(&k2).await.expect("using"),
        vec![id.clone()]
    );
    w.vault
        .set_enabled(name, &v1, false)
        .await
        .expect("disable v1");

    // B's cached key expires; its copy still names v1, whose unwrap now fails definitively.
    tokio::time::sleep((cache + Duration::from_millis(300)).saturating_sub(b_read_at.elapsed()))
        .await;
    let writes = sb.calls.writes();
    let events = w.audit.events().len();
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b on v2"), b"data");
    // B did try its stale v1 wrapping (and failed definitively) before it re-read the record.
    let v1_uri = format!("https://{HOST}/keys/{name}/{v1}");
    assert!(
        w.audit.events()[events..]
            .iter()
            .any(|e| e.action == AuditAction::Unwrap
                && e.key.as_deref() == Some(v1_uri.as_str())
                && matches!(e.outcome, byok::audit::AuditOutcome::Failure(_))),
        "B's unwrap of v1 failed: {:?}",
        &w.audit.events()[events..]
    );
    let fresh = b
        .encrypt(&id, &class("blob"), b"o2", b"new")
        .await
        .expect("b writes under v2");
    assert_eq!(
        a.decrypt(&id, b"o2", &fresh).await.expect("a reads"),
        b"new"
    );
    assert_eq!(sb.calls.writes(), writes, "B wrote nothing");
    let rec = stored(&*sa, &id).await;
    assert_eq!(rec.state, AccountState::Active);
    assert_eq!(rec.current_customer_key(), Some(k2));
    assert!(
        !w.audit.events().iter().any(|e| matches!(&e.action,
            AuditAction::StateChange { to, .. } if *to == byok::account::StateKind::KeyInaccessible)),
        "nobody observed a revocation"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The listening connection killed mid-run.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_listener_killed_b_follows_within_record_max_age_then_by_hint_again() {
    let Some((cluster, url, db)) = database("listener_kill") else {
        return;
    };
    let b_max_age = Duration::from_secs(2);
    // B's listener stays away 6 s after it drops: long enough to see the fallback bound.
    let reconnect = Duration::from_secs(6);
    let w = World::new().await;
    let sa = store(&url, PostgresStoreOptions::new()).await;
    let sb = store(
        &url,
        PostgresStoreOptions::new().reconnect_backoff(reconnect, reconnect),
    )
    .await;
    let a_hints = Listening::on(&*sa);
    let b_hints = Listening::on(&*sb);
    let a = replica(&w, sa.clone(), byok::account::DEFAULT_RECORD_MAX_AGE);
    let b = replica(&w, sb.clone(), b_max_age);
    a_hints.up().await;
    b_hints.up().await;

    let id = cmk_account(&w, &a, "listener-kill", Policy::video_analyzer()).await;
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("b reads"), b"data");

    // Kill every listening connection on this database (B's and A's).
    let unknowns = b_hints.unknowns();
    let killed = cluster.psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = '{db}'",
            PostgresAccountStore::LISTENER_APPLICATION_NAME
        ),
    );
    assert_eq!(killed, "2", "A's and B's listening connections");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();

    // A revokes while B hears nothing: B follows when its copy is due.
    w.faults.cut(ProviderErrorKind::Forbidden);
    let started = Instant::now();
    assert!(inaccessible(&a.probe(&id).await));
    let slack = Duration::from_millis(1500);
    let fallback = converge(b_max_age + slack, async || {
        inaccessible(&b.decrypt(&id, b"o", &obj).await)
    })
    .await
    .map(|_| started.elapsed())
    .unwrap_or_else(|| {
        panic!(
            "B still served {:?} after the revocation",
            b_max_age + slack
        )
    });
    assert!(fallback <= b_max_age + slack, "{fallback:?}");
    assert_eq!(
        b_hints.unknowns(),
        unknowns,
        "B's listener was still down (it reconnects {reconnect:?} after the kill, {:?} ago)",
        killed_at.elapsed()
    );

    // The listener comes back (and B re-reads what it holds); hints flow again.
    b_hints
        .reconnected_after(unknowns, reconnect + Duration::from_secs(10))
        .await;
    assert!(
        killed_at.elapsed() >= reconnect - Duration::from_millis(500),
        "reconnected after {:?}",
        killed_at.elapsed()
    );
    // A fresh copy in B (still revoked), valid for another 2 s.
    assert!(inaccessible(&b.decrypt(&id, b"o", &obj).await));
    w.faults.restore();
    let started = Instant::now();
    assert_eq!(a.probe(&id).await.expect("restore"), StateKind::Active);
    let hinted = converge(b_max_age / 2, async || {
        b.decrypt(&id, b"o", &obj).await.is_ok()
    })
    .await
    .map(|_| started.elapsed())
    .unwrap_or_else(|| {
        panic!(
            "B did not follow the restore within {:?} (the hint path, below its \
             record_max_age {b_max_age:?})",
            b_max_age / 2
        )
    });
    eprintln!(
        "listener down: B followed the revocation in {fallback:?} (record_max_age \
         {b_max_age:?}); listener back: B followed the restore in {hinted:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. PostgreSQL restarted mid-run.

fn unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(e @ (Error::Store { .. } | Error::Unavailable { .. })) => {
            assert_eq!(e.http_status(), 503, "{what}: {e:?}");
        }
        other => panic!("{what} while PostgreSQL is down: {other:?}"),
    }
}

/// Retries `op` while it fails with a 503 (pooled connections that died with the old
/// server), for at most 20 s.
async fn after_restart<T: std::fmt::Debug>(
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T, Error>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.http_status() == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what} after the restart: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() {
    // Its own cluster: the restart must not disturb the other tests.
    let Some(cluster) = Cluster::try_start("replicas_restart") else {
        return;
    };
    let (url, _) = cluster.database("restart");
    let timeout = Duration::from_secs(2);
    let options = PostgresStoreOptions::new()
        .timeout(timeout)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let w = World::new().await;
    let sa = store(&url, options.clone()).await;
    let sb = store(&url, options).await;
    let b_hints = Listening::on(&*sb);
    // A re-reads often (its copies are due during the outage); B holds them for 30 s.
    let a_max_age = Duration::from_millis(200);
    let a = replica(&w, sa.clone(), a_max_age);
    let b = replica(&w, sb.clone(), B_RECORD_MAX_AGE);
    b_hints.up().await;

    let warm = cmk_account(&w, &a, "warm", Policy::video_analyzer()).await;
    let cold = cmk_account(&w, &a, "cold", Policy::video_analyzer()).await;
    let warm_obj = a
        .encrypt(&warm, &class("blob"), b"w", b"warm data")
        .await
        .expect("encrypt");
    let cold_obj = a
        .encrypt(&cold, &class("blob"), b"c", b"cold data")
        .await
        .expect("encrypt");
    // Committed updates before the restart: a revocation and a restore of `warm`.
    w.faults.cut(ProviderErrorKind::Forbidden);
    assert!(inaccessible(&a.probe(&warm).await));
    w.faults.restore();
    assert_eq!(a.probe(&warm).await.expect("restore"), StateKind::Active);
    converge(HINT_BOUND, async || {
        b.decrypt(&warm, b"w", &warm_obj).await.is_ok()
    })
    .await
    .expect("B serves warm");
    let before: Vec<(AccountId, u64, StateKind)> = sa
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.id.clone(), r.revision, r.state.kind()))
        .collect();
    assert_eq!(before.len(), 2);
    assert!(before.iter().any(|(id, rev, _)| *id == warm && *rev >= 3));
    let unknowns = b_hints.unknowns();

    cluster.stop_server();
    tokio::time::sleep(a_max_age + Duration::from_millis(100)).await;
    let started = Instant::now();
    // A cold-cache operation: B never loaded `cold`.
    unavailable("B decrypt, cold", b.decrypt(&cold, b"c", &cold_obj).await);
    // Account operations whose copy is due.
    unavailable("A check", a.probe(&warm).await);
    unavailable("A decrypt", a.decrypt(&warm, b"w", &warm_obj).await);
    unavailable(
        "A encrypt",
        a.encrypt(&cold, &class("blob"), b"x", b"x").await,
    );
    unavailable("A account", a.account(&warm).await);
    unavailable("A accounts", a.accounts().await);
    unavailable("A monitor", a.monitor().await.map(|e| e.len()));
    unavailable("A use_platform_key", a.use_platform_key(&cold).await);
    unavailable("A delete", a.delete_account(&cold).await);
    unavailable(
        "A create",
        a.create_account(NewAccount::new(
            AccountId::new("during-outage").expect("id"),
            REGION,
            TENANT,
            Policy::video_analyzer(),
        ))
        .await,
    );
    // The store itself.
    unavailable("store get", sb.get(&warm).await);
    unavailable("store list", sb.list().await);
    unavailable("store list_page", sb.list_page(None, 10).await);
    unavailable(
        "store accounts_using",
        sb.accounts_using(HOST, "warm-key", "1").await,
    );
    unavailable(
        "store record_probe",
        sb.record_probe(&warm, SystemTime::now()).await,
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < timeout * 15 + Duration::from_secs(5),
        "failures took {elapsed:?}"
    );
    // Within its bound B may still serve `warm` from its copy and cache (no database on the
    // hot path).
    assert_eq!(
        b.decrypt(&warm, b"w", &warm_obj).await.expect("b warm"),
        b"warm data"
    );

    cluster.start_server();
    let after: Vec<(AccountId, u64, StateKind)> = after_restart("list", async || sa.list().await)
        .await
        .into_iter()
        .map(|r| (r.id.clone(), r.revision, r.state.kind()))
        .collect();
    assert_eq!(after, before, "no state, revision or account changed");
    // Operations succeed again.
    assert_eq!(
        after_restart("A decrypt", async || a
            .decrypt(&warm, b"w", &warm_obj)
            .await)
        .await,
        b"warm data"
    );
    assert_eq!(
        after_restart("B decrypt, cold", async || b
            .decrypt(&cold, b"c", &cold_obj)
            .await)
        .await,
        b"cold data"
    );
    assert_eq!(
        after_restart("A check", async || a.probe(&cold).await).await,
        StateKind::Active
    );
    // B's listener is back; a revocation committed now reaches B by hint again.
    b_hints
        .reconnected_after(unknowns, Duration::from_secs(20))
        .await;
    w.faults.cut(ProviderErrorKind::Forbidden);
    let started = Instant::now();
    assert!(inaccessible(&a.probe(&warm).await));
    let refused = converge(HINT_BOUND, async || {
        inaccessible(&b.decrypt(&warm, b"w", &warm_obj).await)
    })
    .await
    .map(|_| started.elapsed())
    .unwrap_or_else(|| panic!("B still served {HINT_BOUND:?} after the revocation"));
    w.faults.restore();
    // No committed update lost: a fresh connection reads every revision.
    let fresh = store(&url, PostgresStoreOptions::new().notifications(false)).await;
    let rec = stored(&*fresh, &warm).await;
    let warm_before = before.iter().find(|(id, ..)| *id == warm).unwrap().1;
    assert_eq!(rec.revision, warm_before + 1);
    assert_eq!(rec.state.kind(), StateKind::KeyInaccessible);
    assert_eq!(stored(&*fresh, &cold).await.state.kind(), StateKind::Active);
    eprintln!("after the restart B followed a revocation in {refused:?}");
    drop((a, b, sa, sb, fresh));
    cluster.stop_server();
}

// ---------------------------------------------------------------------------------------------
// 5. A fresh manager over the same database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_manager_opens_everything_the_first_wrote() {
    let Some((_, url, _)) = database("fresh_manager") else {
        return;
    };
    let w = World::new().await;
    // (account, context, sealed bytes, plaintext)
    type Written = Vec<(AccountId, Vec<u8>, Vec<u8>, Vec<u8>)>;
    let mut objects: Written = Vec::new();
    let mut fields: Written = Vec::new();
    let records = {
        let sa = store(&url, PostgresStoreOptions::new()).await;
        let a = replica(&w, sa.clone(), byok::account::DEFAULT_RECORD_MAX_AGE);
        // A customer-keyed account with double encryption.
        let cmk = cmk_account(&w, &a, "fresh-cmk", Policy::video_analyzer()).await;
        // A platform-keyed account that later takes a customer key (a re-wrap).
        let switched = AccountId::new("fresh-switched").expect("id");
        a.create_account(NewAccount::new(
            switched.clone(),
            REGION,
            TENANT,
            Policy::content_safety(),
        ))
        .await
        .expect("create");
        // Storage with one optional class chosen, one not.
        let storage = AccountId::new("fresh-storage").expect("id");
        a.create_account(
            NewAccount::new(storage.clone(), REGION, TENANT, Policy::storage())
                .choose_classes(&["queue"]),
        )
        .await
        .expect("create");
        let mut write = async |id: &AccountId, class_name: &str, n: usize| {
            for i in 0..n {
                let ctx = format!("{id}/{class_name}/{i}").into_bytes();
                let plain = format!("object {i} of {id} ({class_name})").into_bytes();
                let obj = a
                    .encrypt(id, &class(class_name), &ctx, &plain)
                    .await
                    .expect("encrypt");
                objects.push((id.clone(), ctx.clone(), obj, plain.clone()));
                let sealed = a.seal_field(id, &ctx, &plain).await.expect("seal");
                fields.push((id.clone(), ctx, sealed, plain));
            }
        };
        write(&cmk, "blob", 5).await;
        write(&switched, "blob", 3).await;
        write(&switched, "blocklist-names", 2).await;
        write(&storage, "blob", 3).await;
        write(&storage, "queue", 2).await;
        write(&storage, "table", 2).await;
        let key = w.cmk("switched-key", 2048).await;
        a.set_customer_key(&switched, key, w.identity.clone())
            .await
            .expect("customer key");
        let key = w.cmk("storage-key", 2048).await;
        a.set_customer_key(&storage, key, w.identity.clone())
            .await
            .expect("customer key");
        write(&switched, "blob", 2).await;
        write(&storage, "blob", 2).await;
        write(&storage, "table", 1).await;
        let records = a.accounts().await.expect("accounts");
        assert_eq!(records.len(), 3);
        records
        // A and its connection end here.
    };

    let sc = store(&url, PostgresStoreOptions::new()).await;
    let c = replica(&w, sc, byok::account::DEFAULT_RECORD_MAX_AGE);
    assert_eq!(c.accounts().await.expect("accounts"), records);
    for (id, ctx, obj, plain) in &objects {
        assert_eq!(
            &c.decrypt(id, ctx, obj)
                .await
                .expect("the fresh manager reads"),
            plain
        );
    }
    for (id, ctx, sealed, plain) in &fields {
        assert_eq!(&c.open_field(id, ctx, sealed).await.expect("field"), plain);
    }
    assert_eq!(objects.len(), 22);
}

// ---------------------------------------------------------------------------------------------
// 6. The hot path touches no database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_makes_no_store_call_with_a_warm_cache() {
    let Some((_, url, _)) = database("hot_path") else {
        return;
    };
    let w = World::new().await;
    let sa = store(&url, PostgresStoreOptions::new()).await;
    let pg_b = store(&url, PostgresStoreOptions::new()).await;
    let b_hints = Listening::on(&*pg_b);
    let sb = Counting::new(pg_b.clone());
    let a = replica(&w, sa.clone(), byok::account::DEFAULT_RECORD_MAX_AGE);
    let b = replica(&w, sb.clone(), Duration::from_secs(60));
    // Hints after the warm-up would (rightly) cost a re-read: let the listener settle first.
    b_hints.up().await;

    let id = cmk_account(&w, &a, "hot-path", Policy::video_analyzer()).await;
    let obj = a
        .encrypt(&id, &class("blob"), b"o", b"data")
        .await
        .expect("encrypt");
    assert_eq!(b.decrypt(&id, b"o", &obj).await.expect("warm"), b"data");
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.encrypt(&id, &class("blob"), b"o", b"warm")
        .await
        .expect("warm");
    assert!(sb.calls.get.load(Ordering::SeqCst) >= 1, "the warm-up read");
    let calls = sb.calls.total();
    let unwraps = w.unwraps();

    let started = Instant::now();
    for i in 0..500u32 {
        let ctx = i.to_be_bytes();
        let o = b
            .encrypt(&id, &class("blob"), &ctx, b"hot")
            .await
            .expect("encrypt");
        assert_eq!(b.decrypt(&id, &ctx, &o).await.expect("decrypt"), b"hot");
    }
    let took = started.elapsed();
    assert_eq!(
        sb.calls.total(),
        calls,
        "store calls during 1000 warm operations: {:?}",
        sb.calls.all()
    );
    assert_eq!(w.unwraps(), unwraps, "no provider call either");
    eprintln!(
        "1000 warm operations in {took:?}, 0 store calls (calls so far: {:?})",
        sb.calls.all()
    );
}
