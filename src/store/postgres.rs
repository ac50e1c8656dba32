//! [`PostgresAccountStore`]: account records in PostgreSQL, with change hints between replicas
//! over `LISTEN`/`NOTIFY`.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{Columns, STATE_DELETED, record_from_row};
use crate::account::record::{AccountId, AccountRecord};
use crate::error::Error;
use crate::store::{AccountStore, ChangeListener, StoreChange};

/// Options of a [`PostgresAccountStore`]. `Default` gives the documented defaults; the
/// setters return the changed options.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresStoreOptions {
    /// Bound on connecting and on each store operation (pool wait, connect and statement
    /// together). Default 5 s.
    pub timeout: Duration,
    /// Connections in the pool built by [`PostgresAccountStore::connect_with`]. Default 16.
    pub max_connections: usize,
    /// Whether [`AccountStore::subscribe`] starts the listening connection (`true`, the
    /// default) or returns `false`.
    pub notifications: bool,
    /// Connection string of the listening connection, when it must differ from the pool's
    /// (behind PgBouncer in transaction mode, point it at the server itself). `None`: the
    /// pool's connection string ([`PostgresAccountStore::from_pool`] then has no listener).
    pub listen_url: Option<String>,
    /// First delay before the listening connection reconnects; doubled after every failed
    /// attempt. Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts. Default 2 s.
    pub reconnect_max: Duration,
    /// How often the idle listening connection is checked with a round trip (a silently
    /// broken network path is noticed and reconnected). Default 30 s.
    pub health_check: Duration,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_connections: 16,
            notifications: true,
            listen_url: None,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            health_check: Duration::from_secs(30),
        }
    }
}

impl PostgresStoreOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets [`notifications`](Self::notifications).
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = on;
        self
    }

    /// Sets [`listen_url`](Self::listen_url).
    pub fn listen_url(mut self, url: &str) -> Self {
        self.listen_url = Some(url.to_owned());
        self
    }

    /// Sets the reconnect backoff of the listening connection: `min` doubling up to `max`.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Sets [`health_check`](Self::health_check).
    pub fn health_check(mut self, every: Duration) -> Self {
        self.health_check = every;
        self
    }
}

/// An [`AccountStore`] in PostgreSQL (feature `postgres`), for several replicas sharing the
/// records.
///
/// * **Schema**: created and migrated by [`connect`](Self::connect) /
///   [`from_pool`](Self::from_pool) — table `byok_accounts` (one row per account, the record
///   as `jsonb` plus queried columns), versions in `byok_schema_migrations`, applied in one
///   transaction under an advisory lock so replicas starting together do not race. Names are
///   unqualified: they live in the connection's `search_path`.
/// * **Concurrency**: `update` is one `UPDATE … WHERE id = $1 AND revision = $2`
///   (compare-and-swap on the revision); `record_probe` touches only the `last_probed` column,
///   so probes never conflict with updates.
/// * **Change hints**: a trigger runs `NOTIFY byok_accounts, '<revision> <id>'` for every
///   insert and every update that changes the revision. [`subscribe`](AccountStore::subscribe)
///   starts one dedicated listening connection (application name
///   [`LISTENER_APPLICATION_NAME`](Self::LISTENER_APPLICATION_NAME)) on a task of the tokio
///   runtime the store was created on; it reconnects with backoff when the connection drops
///   and sends [`StoreChange::Unknown`] after every (re)connect. The task stops when the
///   store is dropped. `LISTEN` needs a session: behind PgBouncer in transaction mode, set
///   [`PostgresStoreOptions::listen_url`] to the server itself.
/// * **Time**: PostgreSQL keeps microseconds; the record's own times are kept exactly in the
///   JSON, and the `last_probed` column is merged in at microsecond precision.
/// * **TLS**: [`connect`](Self::connect) uses no TLS. For TLS, build a
///   [`deadpool_postgres::Pool`] with your connector (e.g. `tokio-postgres-rustls`) and use
///   [`from_pool`](Self::from_pool).
///
/// Every database failure (unreachable server, timeout, lost connection, unreadable row) is
/// [`Error::Store`] with the client's error as its source.
pub struct PostgresAccountStore {
    pool: Pool,
    timeout: Duration,
    listener: Option<Listener>,
}

impl fmt::Debug for PostgresAccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAccountStore")
            .field("timeout", &self.timeout)
            .field("notifications", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

const SCHEMA_LOCK: i64 = 0x6279_6f6b_5f6d_6967; // "byok_mig"

/// The schema migrations, in order: `(version, SQL)`. Never edit a released one: add another.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE byok_accounts (
    id          text COLLATE "C" PRIMARY KEY,
    revision    bigint NOT NULL,
    epoch       bigint NOT NULL,
    state       text NOT NULL,
    deleted_at  timestamptz NULL,
    key_role    text NULL,
    key_vault   text NULL,
    key_name    text NULL,
    key_version text NULL,
    last_probed timestamptz NULL,
    record      jsonb NOT NULL
);
CREATE INDEX byok_accounts_customer_key ON byok_accounts (key_vault, key_name, key_version)
    WHERE key_role = 'customer';
CREATE INDEX byok_accounts_tombstones ON byok_accounts (deleted_at)
    WHERE state = 'deleted';
CREATE FUNCTION byok_accounts_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.revision IS DISTINCT FROM OLD.revision THEN
        PERFORM pg_notify('byok_accounts', NEW.revision::text || ' ' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER byok_accounts_notify AFTER INSERT OR UPDATE ON byok_accounts
    FOR EACH ROW EXECUTE FUNCTION byok_accounts_notify();
"#,
)];

/// A `SELECT` of the columns [`record_of`] reads, followed by `$rest`.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, record::text, last_probed FROM byok_accounts",
            $rest
        )
    };
}

impl PostgresAccountStore {
    /// The `NOTIFY` channel.
    pub const CHANNEL: &'static str = "byok_accounts";
    /// The `application_name` of the listening connection (find it in `pg_stat_activity`).
    pub const LISTENER_APPLICATION_NAME: &'static str = "byok-account-listener";
    /// The `application_name` of the pool's connections built by
    /// [`connect`](Self::connect), unless the connection string sets one.
    pub const APPLICATION_NAME: &'static str = "byok-account-store";
    /// The newest schema version this crate writes.
    pub const SCHEMA_VERSION: i32 = 1;

    /// Connects to `url` (a libpq-style `host=… dbname=…` string or a `postgresql://` URL)
    /// without TLS, with the default [`PostgresStoreOptions`], and migrates the schema.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed connection string; [`Error::Store`] if the
    /// database cannot be reached within the timeout or the migration fails (including a
    /// schema newer than this crate knows).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresStoreOptions::default()).await
    }

    /// [`connect`](Self::connect) with `options`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: PostgresStoreOptions) -> Result<Self, Error> {
        let mut config = parse_config(url)?;
        if config.get_application_name().is_none() {
            config.application_name(Self::APPLICATION_NAME);
        }
        config.connect_timeout(options.timeout);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::store(format!("building the connection pool: {e}"), e))?;
        let listen_url = options.listen_url.clone().unwrap_or_else(|| url.to_owned());
        Self::build(pool, Some(listen_url), options).await
    }

    /// A store over an existing pool (bring your own TLS connector and pool settings);
    /// migrates the schema. The listening connection for change hints uses
    /// [`PostgresStoreOptions::listen_url`] without TLS; without it,
    /// [`subscribe`](AccountStore::subscribe) returns `false`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn from_pool(pool: Pool, options: PostgresStoreOptions) -> Result<Self, Error> {
        let listen_url = options.listen_url.clone();
        Self::build(pool, listen_url, options).await
    }

    async fn build(
        pool: Pool,
        listen_url: Option<String>,
        options: PostgresStoreOptions,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::store("PostgresAccountStore needs a tokio runtime".to_owned(), e)
        })?;
        let listener = match listen_url.filter(|_| options.notifications) {
            Some(url) => {
                let mut config = parse_config(&url)?;
                config.application_name(Self::LISTENER_APPLICATION_NAME);
                config.connect_timeout(options.timeout);
                Some(Listener {
                    shared: Arc::new(Shared {
                        config,
                        listeners: Mutex::new(Vec::new()),
                        options: options.clone(),
                    }),
                    control: Mutex::new(None),
                    runtime,
                })
            }
            None => None,
        };
        let store = Self {
            pool,
            timeout: options.timeout,
            listener,
        };
        store
            .bounded("migrating the schema", store.migrate())
            .await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut client = self.client().await?;
        let what = "migrating the schema";
        let tx = client.transaction().await.map_err(pg(what))?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
            .await
            .map_err(pg(what))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS byok_schema_migrations (version integer PRIMARY KEY)",
        )
        .await
        .map_err(pg(what))?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM byok_schema_migrations", &[])
            .await
            .map_err(pg(what))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg(what))?;
        super::refuse_newer_schema(&applied, Self::SCHEMA_VERSION)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(pg(what))?;
            tx.execute(
                "INSERT INTO byok_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(pg(what))?;
        }
        tx.commit().await.map_err(pg(what))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::store(format!("connecting: {e}"), e))
    }

    /// Runs `f` within the operation timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(e) => Err(Error::store(
                format!("{what}: no answer within {:?}", self.timeout),
                e,
            )),
        }
    }

    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.bounded(what, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg(what))?;
            client.query(&stmt, params).await.map_err(pg(what))
        })
        .await
    }

    /// Runs one statement (prepared once per connection) within the operation timeout.
    async fn execute(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Result<u64, tokio_postgres::Error>, Error> {
        self.bounded(what, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg(what))?;
            Ok(client.execute(&stmt, params).await)
        })
        .await
    }
}

impl Drop for PostgresAccountStore {
    fn drop(&mut self) {
        if let Some(l) = &self.listener
            && let Some(tx) = lock(&l.control).take()
        {
            let _ = tx.send(Msg::Shutdown);
        }
    }
}

fn parse_config(url: &str) -> Result<tokio_postgres::Config, Error> {
    tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::InvalidInput(format!("PostgreSQL connection string: {e}")))
}

/// Maps a client error to [`Error::Store`], keeping it as the source.
fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::store(format!("{what}: {e}"), e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// PostgreSQL's precision: whole microseconds.
fn micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros().try_into().unwrap_or(u64::MAX)),
        Err(_) => t,
    }
}

fn record_of(row: &Row) -> Result<AccountRecord, Error> {
    let what = "reading a row";
    let id: String = row.try_get(0).map_err(pg(what))?;
    let json: String = row.try_get(1).map_err(pg(what))?;
    let probed: Option<SystemTime> = row.try_get(2).map_err(pg(what))?;
    record_from_row(&id, &json, probed, micros)
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl AccountStore for PostgresAccountStore {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        let sql = select!(" WHERE id = $1");
        let rows = self.query("get", sql, &[&id.as_str()]).await?;
        rows.first().map(record_of).transpose()
    }

    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        let sql = select!(" ORDER BY id");
        let rows = self.query("list", sql, &[]).await?;
        rows.iter().map(record_of).collect()
    }

    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        let limit = limit_of(limit);
        let rows = match after {
            Some(after) => {
                let sql = select!(" WHERE id > $1 ORDER BY id LIMIT $2");
                self.query("list_page", sql, &[&after.as_str(), &limit])
                    .await?
            }
            None => {
                let sql = select!(" ORDER BY id LIMIT $1");
                self.query("list_page", sql, &[&limit]).await?
            }
        };
        rows.iter().map(record_of).collect()
    }

    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        let c = Columns::of(record)?;
        let what = "create";
        let r = self
            .execute(
                what,
                "INSERT INTO byok_accounts (id, revision, epoch, state, deleted_at, key_role, \
                 key_vault, key_name, key_version, last_probed, record) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CAST($11::text AS jsonb))",
                &[
                    &c.id,
                    &c.revision,
                    &c.epoch,
                    &c.state,
                    &c.deleted_at,
                    &c.key_role,
                    &c.key_vault,
                    &c.key_name,
                    &c.key_version,
                    &c.last_probed,
                    &c.record,
                ],
            )
            .await?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(Error::Conflict(
                format!("account {} already exists", record.id),
            )),
            Err(e) => Err(pg(what)(e)),
        }
    }

    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.update_guarded(record, None).await
    }

    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.update_guarded(record, Some(after)).await
    }

    async fn accounts_using(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<AccountId>, Error> {
        let what = "accounts_using";
        let rows = self
            .query(
                what,
                "SELECT id FROM byok_accounts WHERE key_role = 'customer' AND key_vault = $1 \
                 AND key_name = $2 AND key_version = $3 ORDER BY id",
                &[&vault, &name, &version],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(pg(what))?;
                AccountId::new(id).map_err(|e| Error::store("a stored account id is invalid", e))
            })
            .collect()
    }

    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        let what = "record_probe";
        self.execute(
            what,
            "UPDATE byok_accounts SET last_probed = GREATEST(last_probed, $2) WHERE id = $1 \
             AND last_probed IS DISTINCT FROM GREATEST(last_probed, $2)",
            &[&id.as_str(), &at],
        )
        .await?
        .map_err(pg(what))?;
        Ok(())
    }

    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        let what = "purge_deleted";
        self.execute(
            what,
            "DELETE FROM byok_accounts WHERE state = $1 AND deleted_at < $2",
            &[&STATE_DELETED, &before],
        )
        .await?
        .map_err(pg(what))
    }

    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        let Some(l) = &self.listener else {
            return false;
        };
        lock(&l.shared.listeners).push(listener);
        let mut control = lock(&l.control);
        if control.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            l.runtime
                .spawn(listen(Arc::downgrade(&l.shared), tx.clone(), rx));
            *control = Some(tx);
        }
        true
    }
}

/// The listening side of a store.
struct Listener {
    shared: Arc<Shared>,
    /// The running task's mailbox (`None` until the first `subscribe`).
    control: Mutex<Option<mpsc::UnboundedSender<Msg>>>,
    runtime: tokio::runtime::Handle,
}

struct Shared {
    config: tokio_postgres::Config,
    listeners: Mutex<Vec<Weak<dyn ChangeListener>>>,
    options: PostgresStoreOptions,
}

impl Shared {
    fn dispatch(&self, change: &StoreChange) {
        let live: Vec<_> = {
            let mut l = lock(&self.listeners);
            l.retain(|w| w.strong_count() > 0);
            l.iter().filter_map(Weak::upgrade).collect()
        };
        for l in live {
            l.changed(change.clone());
        }
    }
}

/// What the listening task hears: notifications and the end of connection `generation`
/// (from that connection's driver task), or the store's drop.
enum Msg {
    Notify(u64, String),
    Closed(u64),
    Shutdown,
}

/// Parses a `'<revision> <id>'` payload.
fn parse_payload(payload: &str) -> StoreChange {
    payload
        .split_once(' ')
        .and_then(|(rev, id)| Some((rev.parse::<u64>().ok()?, AccountId::new(id).ok()?)))
        .map_or(StoreChange::Unknown, |(revision, id)| {
            StoreChange::Account { id, revision }
        })
}

/// The listening task: connect, `LISTEN`, dispatch; reconnect with backoff; stop when the
/// store is gone.
async fn listen(
    shared: Weak<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let Some(options) = shared.upgrade().map(|s| s.options.clone()) else {
        return;
    };
    let mut delay = options.reconnect_min;
    let mut generation = 0u64;
    loop {
        generation += 1;
        let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
            return;
        };
        match tokio::time::timeout(options.timeout, config.connect(NoTls)).await {
            Ok(Ok((client, mut connection))) => {
                let driver_tx = tx.clone();
                let g = generation;
                tokio::spawn(async move {
                    loop {
                        let msg = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                        let sent = match msg {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                driver_tx.send(Msg::Notify(g, n.payload().to_owned()))
                            }
                            Some(Ok(_)) => Ok(()),
                            // Both are terminal: poll no more.
                            Some(Err(e)) => {
                                tracing::debug!("byok account listener connection: {e}");
                                let _ = driver_tx.send(Msg::Closed(g));
                                return;
                            }
                            None => {
                                let _ = driver_tx.send(Msg::Closed(g));
                                return;
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                });
                let listening = tokio::time::timeout(
                    options.timeout,
                    client.batch_execute(&format!("LISTEN {}", PostgresAccountStore::CHANNEL)),
                )
                .await;
                if matches!(listening, Ok(Ok(()))) {
                    delay = options.reconnect_min;
                    match shared.upgrade() {
                        Some(s) => s.dispatch(&StoreChange::Unknown),
                        None => return,
                    }
                    loop {
                        match tokio::time::timeout(options.health_check, rx.recv()).await {
                            Ok(None | Some(Msg::Shutdown)) => return,
                            Ok(Some(Msg::Notify(g, payload))) if g == generation => {
                                match shared.upgrade() {
                                    Some(s) => s.dispatch(&parse_payload(&payload)),
                                    None => return,
                                }
                            }
                            Ok(Some(Msg::Closed(g))) if g == generation => break,
                            Ok(Some(_)) => {}
                            Err(_) => {
                                let alive = tokio::time::timeout(
                                    options.timeout,
                                    client.batch_execute("SELECT 1"),
                                )
                                .await;
                                if !matches!(alive, Ok(Ok(()))) {
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!("byok account listener: connection lost, reconnecting");
                } else {
                    tracing::warn!("byok account listener: LISTEN failed, retrying");
                }
            }
            Ok(Err(e)) => tracing::warn!("byok account listener: connecting: {e}"),
            Err(_) => tracing::warn!("byok account listener: connecting timed out"),
        }
        // Back off, still answering the store's drop.
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let msg = tokio::time::timeout_at(deadline, rx.recv()).await;
            match msg {
                Ok(None | Some(Msg::Shutdown)) => return,
                Ok(Some(_)) => {}
                Err(_) => break,
            }
        }
        delay = (delay * 2).min(options.reconnect_max);
    }
}

impl PostgresAccountStore {
    /// The compare-and-swap of `update`; with `after`, also refused when the stored probe
    /// time is later (one conditional statement).
    async fn update_guarded(
        &self,
        record: &AccountRecord,
        after: Option<SystemTime>,
    ) -> Result<(), Error> {
        let c = Columns::of(record)?;
        let what = "update";
        let base = c.revision - 1;
        let n = self
            .execute(
                what,
                "UPDATE byok_accounts SET revision = $2, epoch = $3, state = $4, \
                 deleted_at = $5, key_role = $6, key_vault = $7, key_name = $8, \
                 key_version = $9, last_probed = GREATEST(last_probed, $10), \
                 record = CAST($11::text AS jsonb) WHERE id = $1 AND revision = $12 \
                 AND ($13::timestamptz IS NULL OR last_probed IS NULL OR last_probed <= $13)",
                &[
                    &c.id,
                    &c.revision,
                    &c.epoch,
                    &c.state,
                    &c.deleted_at,
                    &c.key_role,
                    &c.key_vault,
                    &c.key_name,
                    &c.key_version,
                    &c.last_probed,
                    &c.record,
                    &base,
                    &after,
                ],
            )
            .await?
            .map_err(pg(what))?;
        if n == 1 {
            return Ok(());
        }
        let rows = self
            .query(
                what,
                "SELECT revision FROM byok_accounts WHERE id = $1",
                &[&c.id],
            )
            .await?;
        match rows.first() {
            None => Err(Error::AccountNotFound(record.id.to_string())),
            Some(row) => {
                let stored: i64 = row.try_get(0).map_err(pg(what))?;
                if stored == base {
                    return Err(Error::Conflict(format!(
                        "account {} was probed successfully after the change was observed",
                        record.id
                    )));
                }
                Err(Error::Conflict(format!(
                    "account {} is at revision {stored}, the update was based on {base}",
                    record.id
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_or_become_unknown() {
        assert_eq!(
            parse_payload("12 acct-1"),
            StoreChange::Account {
                id: AccountId::new("acct-1").expect("id"),
                revision: 12
            }
        );
        for bad in ["", "12", "x acct-1", "-1 acct-1", "3 bad id", "3 ", " acct"] {
            assert_eq!(parse_payload(bad), StoreChange::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn micros_truncates_to_whole_microseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(
            micros(t),
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000)
        );
        assert_eq!(micros(micros(t)), micros(t));
    }

    #[test]
    fn options_setters() {
        let o = PostgresStoreOptions::new()
            .timeout(Duration::from_secs(1))
            .max_connections(0)
            .notifications(false)
            .listen_url("host=db")
            .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(10))
            .health_check(Duration::from_secs(3));
        assert_eq!(o.timeout, Duration::from_secs(1));
        assert_eq!(o.max_connections, 1);
        assert!(!o.notifications);
        assert_eq!(o.listen_url.as_deref(), Some("host=db"));
        assert_eq!(o.reconnect_max, Duration::from_millis(100));
        assert_eq!(o.health_check, Duration::from_secs(3));
    }
}
