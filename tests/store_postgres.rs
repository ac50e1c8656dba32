//! `PostgresAccountStore` against a real, private PostgreSQL cluster (see `pg_support`): the
//! store conformance suite, concurrent migrations, a fresh store over existing data, the
//! listening connection killed and the server restarted mid-run, and bounded failures when
//! the database is unreachable.

#![allow(clippy::unwrap_used)]

mod pg_support;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use byok::account::AccountRecord;
use byok::store::{
    AccountStore, ChangeListener, PostgresAccountStore, PostgresStoreOptions, StoreChange,
};
use byok::testing::store_conformance;
use byok::{AccountId, Error};
use pg_support::Cluster;

/// The shared cluster and a fresh database in it, or `None` (skipped) when PostgreSQL is
/// not installed outside CI.
fn database(label: &str) -> Option<(&'static Cluster, String, String)> {
    let cluster = pg_support::shared()?;
    let (url, name) = cluster.database(label);
    Some((cluster, url, name))
}

#[derive(Default)]
struct Collector(Mutex<Vec<StoreChange>>);

impl ChangeListener for Collector {
    fn changed(&self, change: StoreChange) {
        self.0.lock().unwrap().push(change);
    }
}

impl Collector {
    fn subscribe(store: &dyn AccountStore) -> Arc<Collector> {
        let c = Arc::new(Collector::default());
        let weak: Weak<dyn ChangeListener> = Arc::downgrade(&c) as Weak<dyn ChangeListener>;
        assert!(store.subscribe(weak), "the PostgreSQL store notifies");
        c
    }

    fn unknowns(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == StoreChange::Unknown)
            .count()
    }

    fn saw(&self, id: &AccountId, revision: u64) -> bool {
        self.0.lock().unwrap().iter().any(
            |c| matches!(c, StoreChange::Account { id: i, revision: r } if i == id && *r == revision),
        )
    }

    async fn wait(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; hints so far: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A record to play with: the suite's records are internal, so take one from a run.
async fn some_record(store: &PostgresAccountStore) -> AccountRecord {
    store
        .list_page(None, 1)
        .await
        .expect("list_page")
        .pop()
        .expect("the store holds records")
}

fn renamed(r: &AccountRecord, id: &str) -> AccountRecord {
    let mut r = r.clone();
    r.id = AccountId::new(id).unwrap();
    r.revision = 1;
    r.state = byok::account::AccountState::Active;
    r
}

fn next(r: &AccountRecord) -> AccountRecord {
    let mut n = r.clone();
    n.revision += 1;
    n.tenant = format!("tenant-rev-{}", n.revision);
    n
}

/// Updates `current` until the hint of one of the updates arrives (the listening connection
/// may still be starting), returning the last record written.
async fn until_hinted(
    store: &PostgresAccountStore,
    hints: &Collector,
    mut current: AccountRecord,
) -> AccountRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        current = next(&current);
        store.update(&current).await.expect("update");
        let wait = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait {
            if hints.saw(&current.id, current.revision) {
                return current;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(Instant::now() < deadline, "no hints at all");
    }
}

fn is_store_error<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Store { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    let Some((_, url, _)) = database("conformance") else {
        return;
    };
    let store = PostgresAccountStore::connect(&url).await.expect("connect");
    let report = store_conformance::run(&store).await;
    report.assert_passed();
    assert_eq!(report.passed(), report.scenarios.len(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_sees_every_record() {
    let Some((_, url, _)) = database("restart_app") else {
        return;
    };
    let before = {
        let store = PostgresAccountStore::connect(&url).await.expect("connect");
        store_conformance::run(&store).await.assert_passed();
        store.list().await.expect("list")
    };
    assert!(before.len() > 25, "{} records", before.len());
    let store = PostgresAccountStore::connect(&url)
        .await
        .expect("reconnect");
    assert_eq!(store.list().await.expect("list"), before);
    for r in &before {
        assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(r));
    }
    // And the suite passes again on the same database (ids never clash).
    store_conformance::run(&store).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations() {
    let Some((cluster, url, db)) = database("migrations") else {
        return;
    };
    let connects: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresAccountStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for c in connects {
        stores.push(
            c.await
                .expect("join")
                .expect("concurrent connect and migrate"),
        );
    }
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT string_agg(version::text, ',') FROM byok_schema_migrations"
        ),
        PostgresAccountStore::SCHEMA_VERSION.to_string()
    );
    store_conformance::run(&stores[5]).await.assert_passed();
    assert_eq!(
        stores[0].list().await.expect("list"),
        stores[5].list().await.expect("list")
    );
    // A schema newer than the crate is refused, not silently used.
    cluster.psql(&db, "INSERT INTO byok_schema_migrations VALUES (999)");
    let err = PostgresAccountStore::connect(&url)
        .await
        .expect_err("a newer schema");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnects_after_its_connection_is_killed() {
    let Some((cluster, url, db)) = database("listener_kill") else {
        return;
    };
    let store = PostgresAccountStore::connect_with(
        &url,
        PostgresStoreOptions::new()
            .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    store_conformance::run(&store).await.assert_passed();
    let base = renamed(&some_record(&store).await, "listener-kill");
    store.create(&base).await.expect("create");
    let hints = Collector::subscribe(&store);
    let r2 = until_hinted(&store, &hints, base).await;
    let unknowns = hints.unknowns();

    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{}' AND datname = '{db}'",
        PostgresAccountStore::LISTENER_APPLICATION_NAME
    );
    assert_eq!(
        cluster.psql("postgres", &kill),
        "1",
        "one listening connection"
    );
    hints
        .wait("an Unknown after the reconnect", |h| {
            h.unknowns() > unknowns
        })
        .await;
    let r3 = next(&r2);
    store.update(&r3).await.expect("update after the kill");
    hints
        .wait("the hint after the kill", |h| h.saw(&r3.id, r3.revision))
        .await;
    // Still one listening connection, and the pool was untouched.
    assert_eq!(
        cluster.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' \
                 AND datname = '{db}'",
                PostgresAccountStore::LISTENER_APPLICATION_NAME
            )
        ),
        "1"
    );

    // Dropping the store ends the listening task and its connection.
    drop(store);
    let count = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' \
         AND datname = '{db}'",
        PostgresAccountStore::LISTENER_APPLICATION_NAME
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.psql("postgres", &count) != "0" {
        assert!(
            Instant::now() < deadline,
            "the listening connection outlived the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_run() {
    // Its own cluster: the restart must not disturb the other tests.
    let Some(cluster) = Cluster::try_start("restart") else {
        return;
    };
    let (url, _) = cluster.database("restart");
    let timeout = Duration::from_secs(2);
    let store = PostgresAccountStore::connect_with(
        &url,
        PostgresStoreOptions::new()
            .timeout(timeout)
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    store_conformance::run(&store).await.assert_passed();
    let hints = Collector::subscribe(&store);
    let mut current = renamed(&some_record(&store).await, "restart");
    store.create(&current).await.expect("create");
    current = until_hinted(&store, &hints, current).await;
    for _ in 0..5 {
        current = next(&current);
        store
            .update(&current)
            .await
            .expect("update before the restart");
    }

    cluster.stop_server();
    // Down: every operation fails with Error::Store, in bounded time.
    let probe_id = current.id.clone();
    let started = Instant::now();
    let down = next(&current);
    let results = [
        format!("{:?}", store.get(&probe_id).await),
        format!("{:?}", store.update(&down).await),
        format!(
            "{:?}",
            store.create(&renamed(&current, "restart-new")).await
        ),
        format!("{:?}", store.list().await.map(|l| l.len())),
        format!("{:?}", store.list_page(None, 5).await.map(|l| l.len())),
        format!("{:?}", store.accounts_using("v", "k", "1").await),
        format!(
            "{:?}",
            store
                .record_probe(&probe_id, std::time::SystemTime::now())
                .await
        ),
        format!("{:?}", store.purge_deleted(std::time::UNIX_EPOCH).await),
    ];
    for r in &results {
        assert!(r.starts_with("Err(Store"), "while the server is down: {r}");
    }
    assert!(is_store_error(&store.get(&probe_id).await));
    assert!(
        started.elapsed() < timeout * 9 + Duration::from_secs(2),
        "failures took {:?}",
        started.elapsed()
    );

    let unknowns_before = hints.unknowns();
    cluster.start_server();
    // Up again: the same update succeeds (after at most a few Store errors from connections
    // that died with the old server), never a Conflict.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.update(&down).await {
            Ok(()) => break,
            Err(Error::Store { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("update after the restart: {e:?}"),
        }
    }
    current = down;
    // No update was lost.
    assert_eq!(
        store.get(&current.id).await.expect("get"),
        Some(current.clone())
    );
    // The listener reconnected (Unknown) and hints flow again.
    hints
        .wait("an Unknown after the restart", |h| {
            h.unknowns() > unknowns_before
        })
        .await;
    current = next(&current);
    store
        .update(&current)
        .await
        .expect("update after the restart");
    hints
        .wait("the hint after the restart", |h| {
            h.saw(&current.id, current.revision)
        })
        .await;
    // A fresh store over the restarted server sees everything.
    let fresh = PostgresAccountStore::connect(&url)
        .await
        .expect("reconnect");
    assert_eq!(
        fresh.list().await.expect("list"),
        store.list().await.expect("list")
    );
    drop(fresh);
    drop(store);
    cluster.stop_server();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_in_bounded_time() {
    // Nothing listens on a freshly released port: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let started = Instant::now();
    let err = PostgresAccountStore::connect_with(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=x"),
        PostgresStoreOptions::new().timeout(Duration::from_secs(1)),
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A server that accepts the TCP connection but never answers: the timeout bounds it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let err = PostgresAccountStore::connect_with(
        &format!("host=127.0.0.1 port={} user=postgres dbname=x", addr.port()),
        PostgresStoreOptions::new().timeout(Duration::from_millis(500)),
    )
    .await
    .expect_err("a silent server");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.http_status(), 503);

    // A malformed connection string is the caller's mistake.
    let err = PostgresAccountStore::connect("host=127.0.0.1 port=notaport")
        .await
        .expect_err("malformed");
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}
