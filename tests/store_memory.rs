//! The store conformance suite against `InMemoryAccountStore`, plus proof that the suite
//! catches a store that loses updates.

use std::sync::Weak;

use async_trait::async_trait;
use byok::account::AccountRecord;
use byok::store::{AccountStore, ChangeListener, InMemoryAccountStore};
use byok::testing::store_conformance::{self, Outcome};
use byok::{AccountId, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    let report = store_conformance::run(&InMemoryAccountStore::new()).await;
    report.assert_passed();
    assert_eq!(report.passed(), report.scenarios.len(), "{report:?}");
}

/// Passes everything through but ignores the revision on update (last writer wins).
#[derive(Debug, Default)]
struct LastWriterWins(InMemoryAccountStore);

#[async_trait]
impl AccountStore for LastWriterWins {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        self.0.get(id).await
    }
    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        self.0.list().await
    }
    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        self.0.create(record).await
    }
    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        let Some(stored) = self.0.get(&record.id).await? else {
            return Err(Error::AccountNotFound(record.id.to_string()));
        };
        let mut forced = record.clone();
        forced.revision = stored.revision + 1;
        self.0.update(&forced).await
    }
    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        _after: std::time::SystemTime,
    ) -> Result<(), Error> {
        self.update(record).await
    }
    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.0.subscribe(listener)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_catches_lost_updates() {
    let report = store_conformance::run(&LastWriterWins::default()).await;
    for name in [
        "update_compare_and_swap",
        "concurrent_writers_one_wins",
        "update_guarded_by_probe_time",
    ] {
        assert!(
            matches!(report.outcome(name), Some(Outcome::Failed(_))),
            "{name} should fail for a last-writer-wins store: {report:?}"
        );
    }
    // The defaults of the trait (list_page, accounts_using over list) still conform.
    assert_eq!(report.outcome("list_and_pages"), Some(&Outcome::Passed));
    assert_eq!(
        report.outcome("accounts_using_exact_key"),
        Some(&Outcome::Passed)
    );
}
