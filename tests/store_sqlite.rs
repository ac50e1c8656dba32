//! `SqliteAccountStore`: the store conformance suite on a file in a temporary directory,
//! persistence across reopening, concurrent opening (migrations), and failures as
//! `Error::Store`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use byok::Error;
use byok::store::{AccountStore, SqliteAccountStore};
use byok::testing::store_conformance::{self, Outcome};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "byok-sqlite-{}-{}-{label}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let dir = TempDir::new("conformance");
    let store = SqliteAccountStore::open(dir.0.join("accounts.db"))
        .await
        .expect("open");
    let report = store_conformance::run(&store).await;
    report.assert_passed();
    assert!(
        matches!(report.outcome("change_hints"), Some(Outcome::Skipped(_))),
        "the SQLite store sends no hints: {report:?}"
    );
    assert_eq!(report.passed(), report.scenarios.len() - 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_reopening() {
    let dir = TempDir::new("reopen");
    let path = dir.0.join("accounts.db");
    let before = {
        let store = SqliteAccountStore::open(&path).await.expect("open");
        // The suite leaves records behind (and runs twice on one file without clashing).
        store_conformance::run(&store).await.assert_passed();
        store.list().await.expect("list")
    };
    assert!(before.len() > 25, "{} records", before.len());
    let store = SqliteAccountStore::open(&path).await.expect("reopen");
    let after = store.list().await.expect("list after reopening");
    assert_eq!(before, after, "records changed across reopening");
    store_conformance::run(&store).await.assert_passed();
    for r in &before {
        assert_eq!(store.get(&r.id).await.expect("get").as_ref(), Some(r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let dir = TempDir::new("migrate");
    let path = dir.0.join("accounts.db");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let p = path.clone();
            tokio::spawn(async move { SqliteAccountStore::open(p).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.expect("join").expect("concurrent open"));
    }
    // Every handle works on the same data.
    store_conformance::run(&stores[0]).await.assert_passed();
    let a = stores[0].list().await.expect("list");
    let b = stores[3].list().await.expect("list");
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_files_are_store_errors() {
    let dir = TempDir::new("bad");
    // A directory is not a database file.
    let err = SqliteAccountStore::open(&dir.0)
        .await
        .expect_err("open a directory");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    // Nor is a text file.
    let junk = dir.0.join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a SQLite database, just some text\n".repeat(100),
    )
    .expect("write");
    let err = SqliteAccountStore::open(&junk)
        .await
        .expect_err("open junk");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
}
