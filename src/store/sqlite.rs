//! [`SqliteAccountStore`]: account records in one SQLite file, for single-machine deployments.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{Columns, STATE_DELETED, record_from_row};
use crate::account::record::{AccountId, AccountRecord};
use crate::error::Error;
use crate::store::AccountStore;

/// The schema migrations, in order: `(version, SQL)`. Never edit a released one: add another.
/// Times are integer nanoseconds since the Unix epoch.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE byok_accounts (
    id          TEXT NOT NULL PRIMARY KEY,
    revision    INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    state       TEXT NOT NULL,
    deleted_at  INTEGER NULL,
    key_role    TEXT NULL,
    key_vault   TEXT NULL,
    key_name    TEXT NULL,
    key_version TEXT NULL,
    last_probed INTEGER NULL,
    record      TEXT NOT NULL
);
CREATE INDEX byok_accounts_customer_key ON byok_accounts (key_vault, key_name, key_version)
    WHERE key_role = 'customer';
CREATE INDEX byok_accounts_tombstones ON byok_accounts (deleted_at)
    WHERE state = 'deleted';
"#,
)];

/// An [`AccountStore`] in one SQLite file (feature `sqlite`, SQLite bundled): for a service
/// on a single machine that wants its account records to survive restarts without a
/// database server.
///
/// The file is opened in WAL mode with `synchronous = FULL` (a committed update survives a
/// power cut) and a 5 s busy timeout; the schema (`byok_accounts`, versions in
/// `byok_schema_migrations`, the same layout as [`crate::store::PostgresAccountStore`]'s) is created
/// and migrated on open inside an immediate transaction. Every call runs on tokio's blocking
/// thread pool (`spawn_blocking`): create the store and call it on a tokio runtime. Updates
/// are compare-and-swap on the revision, so several processes may share the file.
///
/// Change hints: none — [`subscribe`](AccountStore::subscribe) returns `false`, and managers
/// rely on their record age bound. (A store cannot see other processes' commits to the
/// file, and hints for its own only would break the trait's promise.)
///
/// Every SQLite failure (unopenable file, lock timeout, unreadable row) is [`Error::Store`]
/// with rusqlite's error as its source.
pub struct SqliteAccountStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteAccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteAccountStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Maps a SQLite error to [`Error::Store`], keeping it as the source.
fn lite(what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| Error::store(format!("{what}: {e}"), e)
}

fn nanos(t: SystemTime) -> Result<i64, Error> {
    let n: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    i64::try_from(n).map_err(|_| Error::InvalidInput(format!("time {t:?} is out of range")))
}

fn time_of(n: i64) -> SystemTime {
    let d = Duration::from_nanos(n.unsigned_abs());
    if n < 0 {
        UNIX_EPOCH - d
    } else {
        UNIX_EPOCH + d
    }
}

fn opt_nanos(t: Option<SystemTime>) -> Result<Option<i64>, Error> {
    t.map(nanos).transpose()
}

fn record_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, Option<i64>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn decode(rows: Vec<(String, String, Option<i64>)>) -> Result<Vec<AccountRecord>, Error> {
    rows.into_iter()
        .map(|(id, json, probed)| record_from_row(&id, &json, probed.map(time_of), |t| t))
        .collect()
}

const SELECT: &str = "SELECT id, record, last_probed FROM byok_accounts";

impl SqliteAccountStore {
    /// The newest schema version this crate writes.
    pub const SCHEMA_VERSION: i64 = 1;

    /// Opens (creating if needed) the database file at `path` and migrates its schema.
    ///
    /// # Errors
    /// [`Error::Store`] if the file cannot be opened or created, is not a SQLite database,
    /// holds a schema newer than this crate knows, or if no tokio runtime is running.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let p = path.clone();
        let conn = blocking(move || {
            let what = "opening the database";
            let mut conn = Connection::open(&p).map_err(lite(what))?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(lite(what))?;
            // Switching to WAL takes the database lock without waiting on the busy handler:
            // retry while another connection (another process opening the file) holds it.
            let deadline = Instant::now() + BUSY_TIMEOUT;
            loop {
                match conn.pragma_update(None, "journal_mode", "WAL") {
                    Err(e) if is_busy(&e) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    r => break r.map_err(lite(what))?,
                }
            }
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(lite(what))?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on the blocking thread pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let conn = Arc::clone(&self.conn);
        blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| Error::store("SqliteAccountStore needs a tokio runtime", e))?;
    handle
        .spawn_blocking(f)
        .await
        .map_err(|e| Error::store(format!("SQLite call did not finish: {e}"), e))?
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let what = "migrating the schema";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(lite(what))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS byok_schema_migrations (version INTEGER PRIMARY KEY)",
    )
    .map_err(lite(what))?;
    let applied: Vec<i64> = {
        let mut stmt = tx
            .prepare("SELECT version FROM byok_schema_migrations")
            .map_err(lite(what))?;
        stmt.query_map([], |r| r.get(0))
            .map_err(lite(what))?
            .collect::<Result<_, _>>()
            .map_err(lite(what))?
    };
    super::refuse_newer_schema(&applied, SqliteAccountStore::SCHEMA_VERSION)?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.execute_batch(sql).map_err(lite(what))?;
        tx.execute(
            "INSERT INTO byok_schema_migrations (version) VALUES (?1)",
            [version],
        )
        .map_err(lite(what))?;
    }
    tx.commit().map_err(lite(what))
}

/// The owned column values of one row.
struct OwnedColumns {
    id: String,
    revision: i64,
    epoch: i64,
    state: &'static str,
    deleted_at: Option<i64>,
    key_role: Option<&'static str>,
    key_vault: Option<String>,
    key_name: Option<String>,
    key_version: Option<String>,
    last_probed: Option<i64>,
    record: String,
}

impl OwnedColumns {
    fn of(r: &AccountRecord) -> Result<Self, Error> {
        let c = Columns::of(r)?;
        Ok(Self {
            id: c.id.to_owned(),
            revision: c.revision,
            epoch: c.epoch,
            state: c.state,
            deleted_at: opt_nanos(c.deleted_at)?,
            key_role: c.key_role,
            key_vault: c.key_vault.map(str::to_owned),
            key_name: c.key_name.map(str::to_owned),
            key_version: c.key_version.map(str::to_owned),
            last_probed: opt_nanos(c.last_probed)?,
            record: c.record,
        })
    }
}

#[async_trait]
impl AccountStore for SqliteAccountStore {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        let id = id.as_str().to_owned();
        let row = self
            .with(move |c| {
                c.prepare_cached(&format!("{SELECT} WHERE id = ?1"))
                    .and_then(|mut s| s.query_row([&id], record_of).optional())
                    .map_err(lite("get"))
            })
            .await?;
        Ok(decode(row.into_iter().collect())?.pop())
    }

    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        let rows = self
            .with(|c| {
                c.prepare_cached(&format!("{SELECT} ORDER BY id"))
                    .and_then(|mut s| s.query_map([], record_of)?.collect())
                    .map_err(lite("list"))
            })
            .await?;
        decode(rows)
    }

    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        let after = after.map(|a| a.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with(move |c| {
                match after {
                    Some(after) => c
                        .prepare_cached(&format!("{SELECT} WHERE id > ?1 ORDER BY id LIMIT ?2"))
                        .and_then(|mut s| s.query_map(params![after, limit], record_of)?.collect()),
                    None => c
                        .prepare_cached(&format!("{SELECT} ORDER BY id LIMIT ?1"))
                        .and_then(|mut s| s.query_map(params![limit], record_of)?.collect()),
                }
                .map_err(lite("list_page"))
            })
            .await?;
        decode(rows)
    }

    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        let c = OwnedColumns::of(record)?;
        self.with(move |conn| {
            let r = conn
                .prepare_cached(
                    "INSERT INTO byok_accounts (id, revision, epoch, state, deleted_at, \
                     key_role, key_vault, key_name, key_version, last_probed, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        c.id,
                        c.revision,
                        c.epoch,
                        c.state,
                        c.deleted_at,
                        c.key_role,
                        c.key_vault,
                        c.key_name,
                        c.key_version,
                        c.last_probed,
                        c.record
                    ])
                });
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::ConstraintViolation =>
                {
                    Err(Error::Conflict(format!("account {} already exists", c.id)))
                }
                Err(e) => Err(lite("create")(e)),
            }
        })
        .await
    }

    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.update_guarded(record, None).await
    }

    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.update_guarded(record, Some(nanos(after)?)).await
    }

    async fn accounts_using(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<AccountId>, Error> {
        let key = (vault.to_owned(), name.to_owned(), version.to_owned());
        let ids: Vec<String> = self
            .with(move |c| {
                c.prepare_cached(
                    "SELECT id FROM byok_accounts WHERE key_role = 'customer' \
                     AND key_vault = ?1 AND key_name = ?2 AND key_version = ?3 ORDER BY id",
                )
                .and_then(|mut s| {
                    s.query_map(params![key.0, key.1, key.2], |r| r.get(0))?
                        .collect()
                })
                .map_err(lite("accounts_using"))
            })
            .await?;
        ids.into_iter()
            .map(|id| {
                AccountId::new(id).map_err(|e| Error::store("a stored account id is invalid", e))
            })
            .collect()
    }

    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        let id = id.as_str().to_owned();
        let at = nanos(at)?;
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE byok_accounts SET last_probed = ?2 WHERE id = ?1 \
                 AND (last_probed IS NULL OR last_probed < ?2)",
            )
            .and_then(|mut s| s.execute(params![id, at]))
            .map(|_| ())
            .map_err(lite("record_probe"))
        })
        .await
    }

    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        let before = nanos(before)?;
        let n = self
            .with(move |c| {
                c.prepare_cached("DELETE FROM byok_accounts WHERE state = ?1 AND deleted_at < ?2")
                    .and_then(|mut s| s.execute(params![STATE_DELETED, before]))
                    .map_err(lite("purge_deleted"))
            })
            .await?;
        Ok(n as u64)
    }
}

impl SqliteAccountStore {
    /// The compare-and-swap of `update`; with `after` (ns), also refused when the stored
    /// probe time is later (one conditional statement).
    async fn update_guarded(
        &self,
        record: &AccountRecord,
        after: Option<i64>,
    ) -> Result<(), Error> {
        let c = OwnedColumns::of(record)?;
        self.with(move |conn| {
            let what = "update";
            let base = c.revision - 1;
            let n = conn
                .prepare_cached(
                    "UPDATE byok_accounts SET revision = ?2, epoch = ?3, state = ?4, \
                     deleted_at = ?5, key_role = ?6, key_vault = ?7, key_name = ?8, \
                     key_version = ?9, \
                     last_probed = CASE WHEN last_probed IS NULL OR ?10 > last_probed \
                         THEN ?10 ELSE last_probed END, \
                     record = ?11 WHERE id = ?1 AND revision = ?12 \
                     AND (?13 IS NULL OR last_probed IS NULL OR last_probed <= ?13)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        c.id,
                        c.revision,
                        c.epoch,
                        c.state,
                        c.deleted_at,
                        c.key_role,
                        c.key_vault,
                        c.key_name,
                        c.key_version,
                        c.last_probed,
                        c.record,
                        base,
                        after
                    ])
                })
                .map_err(lite(what))?;
            if n == 1 {
                return Ok(());
            }
            let stored: Option<i64> = conn
                .prepare_cached("SELECT revision FROM byok_accounts WHERE id = ?1")
                .and_then(|mut s| s.query_row([&c.id], |r| r.get(0)).optional())
                .map_err(lite(what))?;
            match stored {
                None => Err(Error::AccountNotFound(c.id)),
                Some(stored) if stored == base => Err(Error::Conflict(format!(
                    "account {} was probed successfully after the change was observed",
                    c.id
                ))),
                Some(stored) => Err(Error::Conflict(format!(
                    "account {} is at revision {stored}, the update was based on {base}",
                    c.id
                ))),
            }
        })
        .await
    }
}
