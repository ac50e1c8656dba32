//! The account store conformance suite: the same scenarios and the same expected errors for
//! every [`AccountStore`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = byok::store::InMemoryAccountStore::new(); // your AccountStore here
//! let report = byok::testing::store_conformance::run(&store).await;
//! report.assert_passed();
//! # });
//! ```
//!
//! The suite writes records whose ids start with a random prefix, so it can run against a
//! store that holds other records, as long as nobody else writes to it meanwhile (it compares
//! whole listings) and it holds no tombstones deleted before 1971 (it purges those). It
//! needs no particular async runtime (its waits use a helper thread), but the store may.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::account::policy::Policy;
use crate::account::record::{
    AccountId, AccountRecord, AccountState, KeyRole, KeySource, RECORD_FORMAT, WrappedAccountKey,
};
use crate::error::Error;
use crate::key_id::KeyId;
use crate::provider::conformance::{ConformanceReport, Outcome};
use crate::provider::{Identity, WrapAlgorithm, WrappedKey};
use crate::store::{AccountStore, ChangeListener, StoreChange};

/// The result of a store conformance run: one line per scenario (the provider suite's report
/// type; only the change-hint scenario skips, for a store whose `subscribe` returns `false`).
pub type StoreConformanceReport = ConformanceReport;

type CheckResult = Result<(), String>;

struct Ctx<'a> {
    store: &'a dyn AccountStore,
    prefix: String,
    vault: String,
}

/// A time with nanoseconds, like the records a manager writes.
fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000 + secs, 123_456_789)
}

/// A time on a whole microsecond (stores may keep probe stamps at that precision).
fn t_us(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000 + secs, 250_000)
}

fn wrapping(role: KeyRole, vault: &str, name: &str, version: &str) -> WrappedAccountKey {
    WrappedAccountKey::new(
        "ak-0001",
        role,
        vault,
        WrappedKey {
            key_name: name.to_owned(),
            key_version: version.to_owned(),
            algorithm: match role {
                KeyRole::Customer => WrapAlgorithm::RsaOaep256,
                _ => WrapAlgorithm::A256Kw,
            },
            ciphertext: vec![0xa5; 40],
        },
    )
}

impl Ctx<'_> {
    fn id(&self, tag: &str) -> Result<AccountId, String> {
        AccountId::new(format!("{}-{tag}", self.prefix)).map_err(|e| e.to_string())
    }

    /// An active account at revision 1 whose account key is wrapped by customer key
    /// `name`/`version` in the run's vault.
    fn record(&self, tag: &str, name: &str, version: &str) -> Result<AccountRecord, String> {
        self.record_in(&self.vault, tag, name, version)
    }

    /// [`record`](Self::record) with a customer key in `vault`.
    fn record_in(
        &self,
        vault: &str,
        tag: &str,
        name: &str,
        version: &str,
    ) -> Result<AccountRecord, String> {
        let id = self.id(tag)?;
        let key = KeyId::new(vault, name, None).map_err(|e| e.to_string())?;
        Ok(AccountRecord {
            format: RECORD_FORMAT,
            id,
            region: "region-1".to_owned(),
            tenant: "tenant-1".to_owned(),
            key_source: KeySource::customer(key, Identity::new("conformance-app")),
            account_key: Some(wrapping(KeyRole::Customer, vault, name, version)),
            platform_class_key: Some(wrapping(KeyRole::Platform, "platform", "platform-key", "1")),
            infrastructure_key: None,
            state: AccountState::Active,
            policy: Policy::builder("store-conformance").build(),
            double_encryption: false,
            chosen_classes: BTreeSet::new(),
            revision: 1,
            epoch: 1,
            created: t(0),
            updated: t(0),
            last_rotated: None,
            last_probed: Some(t(0)),
        })
    }

    async fn create(&self, r: &AccountRecord) -> CheckResult {
        ok(self.store.create(r).await, &format!("create {}", r.id))
    }

    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, String> {
        ok(self.store.get(id).await, &format!("get {id}"))
    }

    async fn expect_stored(&self, r: &AccountRecord, what: &str) -> CheckResult {
        match self.get(&r.id).await? {
            Some(got) if got == *r => Ok(()),
            Some(got) => Err(format!(
                "{what}: stored record differs\n  wrote {r:?}\n  read  {got:?}"
            )),
            None => Err(format!("{what}: {} is missing", r.id)),
        }
    }
}

/// The next revision of `r` (a changed tenant field, one second later).
fn next(r: &AccountRecord, tag: &str) -> AccountRecord {
    let mut n = r.clone();
    n.revision += 1;
    n.tenant = format!("tenant-{tag}");
    n.updated += Duration::from_secs(1);
    n
}

/// A tombstone of `r` deleted at `at`, as the manager writes it (wrappings destroyed).
fn tombstone(r: &AccountRecord, at: SystemTime) -> AccountRecord {
    let mut n = r.clone();
    n.revision += 1;
    n.epoch += 1;
    n.state = AccountState::Deleted { at };
    n.account_key = None;
    n.platform_class_key = None;
    n.infrastructure_key = None;
    n
}

fn ok<T>(r: Result<T, Error>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error {e}"))
}

fn check(cond: bool, what: &str) -> CheckResult {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

fn expect_conflict<T: core::fmt::Debug>(r: Result<T, Error>, what: &str) -> CheckResult {
    match r {
        Err(Error::Conflict(_)) => Ok(()),
        Err(e) => Err(format!("{what}: expected Conflict, got {e:?}")),
        Ok(v) => Err(format!("{what}: expected Conflict, got success {v:?}")),
    }
}

async fn create_get_round_trip(c: &Ctx<'_>) -> CheckResult {
    let mut r = c.record("round-trip", "k", "v1")?;
    r.last_rotated = Some(t(7));
    r.double_encryption = true;
    r.infrastructure_key = Some(wrapping(KeyRole::Infrastructure, "infra", "infra-key", "3"));
    r.chosen_classes = [crate::account::policy::DataClass::new("insights")]
        .into_iter()
        .collect();
    c.create(&r).await?;
    c.expect_stored(&r, "after create").await?;
    let mut r2 = c.record("round-trip-2", "k", "v1")?;
    r2.state = AccountState::KeyInaccessible {
        reason: "key disabled: version v1 is disabled".to_owned(),
        kind: Some(crate::error::ProviderErrorKind::KeyDisabled),
        since: t(9),
    };
    r2.last_probed = None;
    c.create(&r2).await?;
    c.expect_stored(&r2, "after create (inaccessible, never probed)")
        .await?;
    let missing = c.get(&c.id("never-created")?).await?;
    check(missing.is_none(), "get of a missing id returned a record")
}

async fn create_existing_conflicts(c: &Ctx<'_>) -> CheckResult {
    let r = c.record("dup", "k", "v1")?;
    c.create(&r).await?;
    let mut other = r.clone();
    other.tenant = "someone-else".to_owned();
    expect_conflict(c.store.create(&other).await, "second create")?;
    c.expect_stored(&r, "after the refused create").await
}

async fn update_compare_and_swap(c: &Ctx<'_>) -> CheckResult {
    let r = c.record("cas", "k", "v1")?;
    c.create(&r).await?;
    let u2 = next(&r, "2");
    ok(c.store.update(&u2).await, "update to revision 2")?;
    c.expect_stored(&u2, "after update 2").await?;
    let u3 = next(&u2, "3");
    ok(c.store.update(&u3).await, "update to revision 3")?;
    c.expect_stored(&u3, "after update 3").await?;
    // A writer still on revision 1 must not win.
    expect_conflict(c.store.update(&u2).await, "stale update (based on 1)")?;
    let mut skip = next(&u3, "5");
    skip.revision += 1;
    expect_conflict(c.store.update(&skip).await, "update skipping a revision")?;
    c.expect_stored(&u3, "after the refused updates").await
}

async fn concurrent_writers_one_wins(c: &Ctx<'_>) -> CheckResult {
    let r = c.record("race", "k", "v1")?;
    c.create(&r).await?;
    let candidates: Vec<AccountRecord> = (0..4).map(|i| next(&r, &format!("w{i}"))).collect();
    let results = crate::util::JoinAll::new(
        candidates
            .iter()
            .map(|u| Box::pin(c.store.update(u)) as Pin<Box<dyn Future<Output = _> + Send + '_>>)
            .collect(),
    )
    .await;
    let mut winner = None;
    for (u, res) in candidates.iter().zip(&results) {
        match res {
            Ok(()) if winner.is_none() => winner = Some(u),
            Ok(()) => return Err("two writers from the same base both succeeded".to_owned()),
            Err(Error::Conflict(_)) => {}
            Err(e) => return Err(format!("concurrent update: unexpected error {e:?}")),
        }
    }
    let winner = winner.ok_or("no writer won")?;
    c.expect_stored(winner, "after the race").await?;
    // The losers re-read and retry: nothing is lost.
    let retry = next(winner, "retry");
    ok(
        c.store.update(&retry).await,
        "retry on the winner's revision",
    )?;
    c.expect_stored(&retry, "after the retry").await
}

async fn update_missing_not_found(c: &Ctx<'_>) -> CheckResult {
    let r = next(&c.record("ghost", "k", "v1")?, "2");
    match c.store.update(&r).await {
        Err(Error::AccountNotFound(_)) => {}
        other => {
            return Err(format!(
                "update of a missing id: expected AccountNotFound, got {other:?}"
            ));
        }
    }
    check(
        c.get(&r.id).await?.is_none(),
        "update of a missing id created it",
    )
}

async fn list_and_pages(c: &Ctx<'_>) -> CheckResult {
    let mut ours = Vec::new();
    // Created out of order: the store sorts.
    for i in (0..25).rev() {
        let r = c.record(&format!("page-{i:02}"), "k", "v1")?;
        c.create(&r).await?;
        ours.push(r);
    }
    ours.sort_by(|a, b| a.id.cmp(&b.id));
    let all = ok(c.store.list().await, "list")?;
    check(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "list is not in strictly increasing id order",
    )?;
    let listed: Vec<&AccountRecord> = all
        .iter()
        .filter(|r| r.id.as_str().starts_with(&format!("{}-page-", c.prefix)))
        .collect();
    check(
        listed.len() == 25 && listed.iter().zip(&ours).all(|(a, b)| *a == b),
        &format!(
            "list holds {} of the 25 records, or changed them",
            listed.len()
        ),
    )?;
    // Page through everything, 7 at a time.
    let mut paged: Vec<AccountRecord> = Vec::new();
    let mut pages = 0;
    loop {
        let page = ok(
            c.store.list_page(paged.last().map(|r| &r.id), 7).await,
            "list_page",
        )?;
        pages += 1;
        check(page.len() <= 7, "list_page returned more than the limit")?;
        let done = page.len() < 7;
        paged.extend(page);
        if done || pages > all.len() + 2 {
            break;
        }
    }
    check(
        paged.len() == all.len() && paged.iter().zip(&all).all(|(a, b)| a == b),
        &format!(
            "pages of 7 gave {} records, list gave {} (duplicates, gaps or order differ)",
            paged.len(),
            all.len()
        ),
    )?;
    // A page starting inside our records.
    let after = &ours[9].id;
    let page = ok(c.store.list_page(Some(after), 7).await, "list_page after")?;
    let expected: Vec<&AccountRecord> = all.iter().filter(|r| r.id > *after).take(7).collect();
    check(
        page.len() == expected.len() && page.iter().zip(&expected).all(|(a, b)| a == *b),
        "list_page(after the 10th, 7) is not the next 7 records",
    )?;
    check(
        page.first().map(|r| &r.id) == Some(&ours[10].id),
        "list_page(after) does not start right after `after`",
    )?;
    let empty = ok(c.store.list_page(Some(after), 0).await, "list_page limit 0")?;
    check(empty.is_empty(), "list_page with limit 0 returned records")?;
    let last = ok(
        c.store.list_page(all.last().map(|r| &r.id), 7).await,
        "list_page after the last",
    )?;
    check(
        last.is_empty(),
        "list_page after the last id returned records",
    )
}

async fn accounts_using_exact_key(c: &Ctx<'_>) -> CheckResult {
    // A vault of its own: other scenarios' records use the run's vault.
    let vault = format!("using.{}", c.vault);
    let vault = vault.as_str();
    let a = c.record_in(vault, "use-a", "k", "v1")?;
    let b = c.record_in(vault, "use-b", "k", "v2")?;
    let d = c.record_in(vault, "use-d", "k2", "v1")?;
    let mut platform = c.record_in(vault, "use-platform", "k", "v1")?;
    platform.key_source = KeySource::Platform;
    platform.account_key = Some(wrapping(KeyRole::Platform, vault, "k", "v1"));
    let mut infra = c.record_in(vault, "use-infra", "k", "v1")?;
    infra.account_key = Some(wrapping(KeyRole::Infrastructure, vault, "k", "v1"));
    let mut elsewhere = c.record_in(vault, "use-elsewhere", "k", "v1")?;
    elsewhere.account_key = Some(wrapping(
        KeyRole::Customer,
        &format!("other-{vault}"),
        "k",
        "v1",
    ));
    let gone = c.record_in(vault, "use-gone", "k", "v1")?;
    for r in [&a, &b, &d, &platform, &infra, &elsewhere, &gone] {
        c.create(r).await?;
    }
    ok(
        c.store.update(&tombstone(&gone, t(50))).await,
        "deleting use-gone",
    )?;
    let using = |name: &'static str, version: &'static str| async move {
        ok(
            c.store.accounts_using(vault, name, version).await,
            "accounts_using",
        )
    };
    let found = using("k", "v1").await?;
    check(
        found == vec![a.id.clone()],
        &format!("accounts_using(k, v1) = {found:?}, expected only {}", a.id),
    )?;
    let found = using("k", "v2").await?;
    check(
        found == vec![b.id.clone()],
        &format!("accounts_using(k, v2) = {found:?}"),
    )?;
    let found = using("k", "v3").await?;
    check(
        found.is_empty(),
        &format!("accounts_using(k, v3) = {found:?}"),
    )?;
    // Re-wrapping moves an account between versions; deleting removes it.
    let mut b2 = next(&b, "rewrapped");
    b2.account_key = Some(wrapping(KeyRole::Customer, vault, "k", "v1"));
    b2.epoch += 1;
    ok(c.store.update(&b2).await, "re-wrapping use-b under v1")?;
    ok(
        c.store.update(&tombstone(&a, t(60))).await,
        "deleting use-a",
    )?;
    let found = using("k", "v1").await?;
    check(
        found == vec![b.id.clone()],
        &format!("after re-wrap and delete, accounts_using(k, v1) = {found:?}"),
    )?;
    let found = using("k", "v2").await?;
    check(
        found.is_empty(),
        &format!("after re-wrap, accounts_using(k, v2) = {found:?}"),
    )
}

/// `update_unless_probed_after`: refused (a conflict, nothing written) when the stored probe
/// time is later than the guard; written when it is not later; a stale revision is still a
/// conflict.
async fn update_guarded_by_probe_time(c: &Ctx<'_>) -> CheckResult {
    let r = c.record("guard", "k", "v1")?;
    c.create(&r).await?;
    ok(c.store.record_probe(&r.id, t_us(200)).await, "record_probe")?;
    let n = next(&r, "guarded");
    match c.store.update_unless_probed_after(&n, t_us(100)).await {
        Err(Error::Conflict(_)) => {}
        other => {
            return Err(format!(
                "update_unless_probed_after(probed at 200 µs, after 100 µs): expected Conflict, got {other:?}"
            ));
        }
    }
    let got = c.get(&r.id).await?.ok_or("guarded record is missing")?;
    check(
        got.revision == r.revision,
        "a refused guarded update wrote the record",
    )?;
    ok(
        c.store.update_unless_probed_after(&n, t_us(200)).await,
        "update_unless_probed_after(probed at 200 µs, after 200 µs)",
    )?;
    let got = c.get(&r.id).await?.ok_or("guarded record is missing")?;
    check(
        got.revision == n.revision && got.tenant == n.tenant,
        "the allowed guarded update was not written",
    )?;
    match c.store.update_unless_probed_after(&n, t_us(300)).await {
        Err(Error::Conflict(_)) => Ok(()),
        other => Err(format!(
            "guarded update from a stale revision: expected Conflict, got {other:?}"
        )),
    }
}

async fn probe_stamps_without_revision(c: &Ctx<'_>) -> CheckResult {
    let r = c.record("probe", "k", "v1")?;
    c.create(&r).await?;
    ok(c.store.record_probe(&r.id, t_us(100)).await, "record_probe")?;
    let got = c.get(&r.id).await?.ok_or("probed record is missing")?;
    check(
        got.last_probed == Some(t_us(100)),
        &format!(
            "last_probed is {:?}, expected {:?}",
            got.last_probed,
            t_us(100)
        ),
    )?;
    check(
        got.revision == r.revision,
        "record_probe changed the revision",
    )?;
    let mut expected = r.clone();
    expected.last_probed = Some(t_us(100));
    check(
        got == expected,
        "record_probe changed more than last_probed",
    )?;
    // Older stamps (a slow replica) never move it back.
    ok(
        c.store.record_probe(&r.id, t_us(50)).await,
        "older record_probe",
    )?;
    let got = c.get(&r.id).await?.ok_or("probed record is missing")?;
    check(
        got.last_probed == Some(t_us(100)),
        "an older record_probe moved last_probed backwards",
    )?;
    // A never-probed record gets a stamp.
    let mut fresh = c.record("probe-fresh", "k", "v1")?;
    fresh.last_probed = None;
    c.create(&fresh).await?;
    ok(
        c.store.record_probe(&fresh.id, t_us(10)).await,
        "first record_probe",
    )?;
    let got = c.get(&fresh.id).await?.ok_or("probed record is missing")?;
    check(
        got.last_probed == Some(t_us(10)),
        &format!("first probe: last_probed is {:?}", got.last_probed),
    )?;
    // An update based on the record read before the probe does not conflict, and does not
    // move the probe stamp back to the writer's older copy.
    ok(
        c.store.update(&next(&r, "after-probe")).await,
        "update after a probe",
    )?;
    let got = c.get(&r.id).await?.ok_or("probed record is missing")?;
    check(
        got.last_probed == Some(t_us(100)),
        &format!(
            "an update based on a pre-probe read moved last_probed to {:?}",
            got.last_probed
        ),
    )?;
    ok(
        c.store.record_probe(&c.id("probe-missing")?, t_us(1)).await,
        "record_probe of a missing account",
    )?;
    check(
        c.get(&c.id("probe-missing")?).await?.is_none(),
        "record_probe created a record",
    )
}

async fn purge_tombstones(c: &Ctx<'_>) -> CheckResult {
    let epoch = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let old = c.record("purge-old", "k", "v1")?;
    let new = c.record("purge-new", "k", "v1")?;
    let live = c.record("purge-live", "k", "v1")?;
    for r in [&old, &new, &live] {
        c.create(r).await?;
    }
    ok(
        c.store.update(&tombstone(&old, epoch(1000))).await,
        "delete old",
    )?;
    let new_t = tombstone(&new, epoch(3000));
    ok(c.store.update(&new_t).await, "delete new")?;
    let n = ok(c.store.purge_deleted(epoch(2000)).await, "purge_deleted")?;
    check(
        n == 1,
        &format!("purge_deleted removed {n} records, expected 1"),
    )?;
    check(
        c.get(&old.id).await?.is_none(),
        "the old tombstone survived the purge",
    )?;
    c.expect_stored(&new_t, "the newer tombstone").await?;
    c.expect_stored(&live, "the live account").await?;
    // A tombstone's id is taken until purged, then reusable.
    expect_conflict(c.store.create(&new).await, "create over a tombstone")?;
    c.create(&old).await?;
    c.expect_stored(&old, "the reused id").await?;
    let n = ok(c.store.purge_deleted(epoch(3001)).await, "second purge")?;
    check(
        n == 1,
        &format!("second purge_deleted removed {n}, expected 1"),
    )?;
    check(
        c.get(&new.id).await?.is_none(),
        "second purge left the tombstone",
    )?;
    c.expect_stored(&live, "the live account after purges")
        .await
}

#[derive(Default)]
struct Collector(Mutex<Vec<StoreChange>>);

impl ChangeListener for Collector {
    fn changed(&self, change: StoreChange) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
    }
}

impl Collector {
    fn saw(&self, id: &AccountId, revision: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| matches!(c, StoreChange::Account { id: i, revision: r } if i == id && *r == revision))
    }

    fn any_for(&self, id: &AccountId) -> Option<StoreChange> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|c| matches!(c, StoreChange::Account { id: i, .. } if i == id))
            .cloned()
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn wait_for(&self, id: &AccountId, revision: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.saw(id, revision) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long a committed update's hint may take.
const HINT_TIMEOUT: Duration = Duration::from_secs(5);

async fn change_hints(c: &Ctx<'_>, listener: &Arc<Collector>) -> CheckResult {
    let r = c.record("hints", "k", "v1")?;
    c.create(&r).await?;
    // The store's listening side may still be starting: retry updates until one is hinted.
    let mut current = r;
    let deadline = Instant::now() + HINT_TIMEOUT;
    loop {
        current = next(&current, "hinted");
        ok(c.store.update(&current).await, "update")?;
        if listener
            .wait_for(&current.id, current.revision, Duration::from_millis(500))
            .await
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no Account hint for {} within {HINT_TIMEOUT:?} of updates",
                current.id
            ));
        }
    }
    // Now listening: the next committed update is hinted within the timeout.
    current = next(&current, "hinted-again");
    ok(c.store.update(&current).await, "update")?;
    check(
        listener
            .wait_for(&current.id, current.revision, HINT_TIMEOUT)
            .await,
        &format!(
            "no hint Account {{ {}, {} }} within {HINT_TIMEOUT:?}",
            current.id, current.revision
        ),
    )?;
    // A create is hinted too.
    let created = c.record("hints-created", "k", "v1")?;
    c.create(&created).await?;
    check(
        listener.wait_for(&created.id, 1, HINT_TIMEOUT).await,
        "no hint for a create",
    )?;
    // Probes change no revision and are not hinted; a refused update is not hinted.
    listener.clear();
    ok(
        c.store.record_probe(&current.id, t_us(500)).await,
        "record_probe",
    )?;
    let mut stale = current.clone();
    stale.tenant = "stale".to_owned();
    expect_conflict(c.store.update(&stale).await, "stale update")?;
    sleep(Duration::from_millis(300)).await;
    if let Some(h) = listener.any_for(&current.id) {
        return Err(format!("a probe or refused update was hinted: {h:?}"));
    }
    Ok(())
}

/// Runs every scenario against `store`, printing one line per scenario, and returns the
/// report. The change-hint scenario is skipped when [`AccountStore::subscribe`] returns
/// `false`; it waits up to 5 s per expected hint.
pub async fn run(store: &dyn AccountStore) -> StoreConformanceReport {
    let mut tag = [0u8; 4];
    crate::crypto::fill_random(&mut tag);
    let hex = crate::util::hex(&tag);
    let c = Ctx {
        store,
        prefix: format!("sc{hex}"),
        vault: format!("sc{hex}.vault.example"),
    };
    let mut report = StoreConformanceReport::default();
    let mut out = String::new();
    macro_rules! scenario {
        ($name:ident) => {
            scenario!($name, $name(&c).await)
        };
        ($name:ident, $result:expr) => {{
            let started = Instant::now();
            let outcome = match $result {
                Ok(()) => Outcome::Passed,
                Err(e) => Outcome::Failed(e),
            };
            let _ = writeln!(
                out,
                "store conformance {:<34} {:?} ({} ms)",
                stringify!($name),
                outcome,
                started.elapsed().as_millis()
            );
            report.scenarios.push((stringify!($name), outcome));
        }};
    }
    scenario!(create_get_round_trip);
    scenario!(create_existing_conflicts);
    scenario!(update_compare_and_swap);
    scenario!(concurrent_writers_one_wins);
    scenario!(update_missing_not_found);
    scenario!(list_and_pages);
    scenario!(accounts_using_exact_key);
    scenario!(probe_stamps_without_revision);
    scenario!(update_guarded_by_probe_time);
    scenario!(purge_tombstones);
    let listener = Arc::new(Collector::default());
    let weak: Weak<dyn ChangeListener> = Arc::downgrade(&listener) as Weak<dyn ChangeListener>;
    if store.subscribe(weak) {
        scenario!(change_hints, change_hints(&c, &listener).await);
    } else {
        let outcome = Outcome::Skipped("subscribe returned false: the store sends no hints".into());
        let _ = writeln!(out, "store conformance {:<34} {outcome:?}", "change_hints");
        report.scenarios.push(("change_hints", outcome));
    }
    print!("{out}");
    report
}

/// A runtime-independent sleep: a helper thread wakes the task.
fn sleep(d: Duration) -> Sleep {
    Sleep {
        state: Arc::new(Mutex::new((false, None))),
        duration: d,
        started: false,
    }
}

struct Sleep {
    state: Arc<Mutex<(bool, Option<Waker>)>>,
    duration: Duration,
    started: bool,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 {
                return Poll::Ready(());
            }
            s.1 = Some(cx.waker().clone());
        }
        if !self.started {
            self.started = true;
            let state = Arc::clone(&self.state);
            let d = self.duration;
            std::thread::spawn(move || {
                std::thread::sleep(d);
                let waker = {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.0 = true;
                    s.1.take()
                };
                if let Some(w) = waker {
                    w.wake();
                }
            });
        }
        Poll::Pending
    }
}
